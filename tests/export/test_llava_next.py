"""The PyTorch part wrappers compute what the Hugging Face model computes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cvs_export.llava_next import dims_of, part_module

TINY = ("tiny-vicuna", "tiny-yi", "tiny-qwen")


@pytest.fixture(scope="module")
def loaded_models() -> dict[str, Any]:
    from cvs_families.checkpoint import ensure_checkpoint, load_model
    from cvs_families.registry import get_family

    return {n: load_model(get_family(n), ensure_checkpoint(get_family(n))) for n in TINY}


def _image(spec: Any, height: int, width: int) -> Any:
    rng = np.random.default_rng(height * 1000 + width)
    return spec.prepare_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", TINY)
def test_vision_part_equals_the_towers_selected_layer_through_the_projector(
    name: str, loaded_models: dict[str, Any]
) -> None:
    loaded = loaded_models[name]
    model = loaded.model
    pixels = torch.from_numpy(_image(loaded.spec, 70, 120).pixel_values)
    with torch.no_grad():
        features, newline = part_module(model, "vision")(pixels)
        states = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        expected = model.model.multi_modal_projector(
            states[model.config.vision_feature_layer][:, 1:]
        )
    assert features.shape == (pixels.shape[0], dims_of(model.config).patches, expected.shape[-1])
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    assert torch.equal(newline, model.model.image_newline)


@pytest.mark.parametrize("name", TINY)
def test_vision_part_then_numpy_packing_equals_hf_image_features(
    name: str, loaded_models: dict[str, Any]
) -> None:
    loaded = loaded_models[name]
    model, spec = loaded.model, loaded.spec
    for height, width in ((70, 120), (130, 50)):
        image = _image(spec, height, width)
        pixels = torch.from_numpy(image.pixel_values)
        with torch.no_grad():
            features, newline = part_module(model, "vision")(pixels)
            hf = model.model.get_image_features(
                pixels[None], torch.tensor([image.image_size]), return_dict=True
            ).pooler_output[0]
        packed = spec.pack_image_features(features.numpy(), image.image_size, newline.numpy())
        assert packed.shape == (spec.num_image_tokens(height, width), hf.shape[-1])
        np.testing.assert_allclose(packed, hf.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_embedding_part_gathers_the_transposed_table_exactly(
    name: str, loaded_models: dict[str, Any]
) -> None:
    model = loaded_models[name].model
    ids = torch.tensor([[1, 5, 9, 2], [7, 7, 0, 3]])
    with torch.no_grad():
        got = part_module(model, "embedding")(ids)
        want = model.model.language_model.embed_tokens(ids)
    assert torch.equal(got, want)


def _prompt(loaded: Any, length: int, seed: int) -> torch.Tensor:
    vocab = dims_of(loaded.model.config).vocab
    ids = torch.randint(10, vocab - 10, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return loaded.model.model.language_model.embed_tokens(ids)


def _empty_past(model: Any, batch: int) -> list[torch.Tensor]:
    dims = dims_of(model.config)
    return [torch.zeros(batch, dims.kv_heads, 0, dims.head_dim) for _ in range(2 * dims.layers)]


@pytest.mark.parametrize("name", TINY)
def test_decoder_part_logits_equal_the_hf_forward_at_the_indexed_positions(
    name: str, loaded_models: dict[str, Any]
) -> None:
    loaded = loaded_models[name]
    model = loaded.model
    embeds = _prompt(loaded, 9, seed=1)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # row 0 left-padded
    positions = torch.where(mask == 1, mask.cumsum(-1) - 1, torch.ones_like(mask))
    index = torch.tensor([[8, 5], [8, 4]])
    with torch.no_grad():
        got = part_module(model, "decoder")(embeds, positions, mask, index, _empty_past(model, 2))[
            0
        ]
        full = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    want = torch.gather(full, 1, index[:, :, None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_decoder_part_prefill_then_continuation_equals_one_pass(
    name: str, loaded_models: dict[str, Any]
) -> None:
    loaded = loaded_models[name]
    decoder = part_module(loaded.model, "decoder")
    embeds = _prompt(loaded, 12, seed=2)
    positions = torch.arange(12).expand(2, -1)
    mask = torch.ones(2, 12, dtype=torch.long)
    last = torch.tensor([[11], [11]])
    empty = _empty_past(loaded.model, 2)
    with torch.no_grad():
        whole = decoder(embeds, positions, mask, last, empty)
        first = decoder(embeds[:, :7], positions[:, :7], mask[:, :7], last - 5, empty)
        second = decoder(embeds[:, 7:], positions[:, 7:], mask, last - 7, list(first[1:]))
    torch.testing.assert_close(second[0], whole[0], rtol=0, atol=1e-5)
    for cached, direct in zip(second[1:], whole[1:], strict=True):
        torch.testing.assert_close(cached, direct, rtol=0, atol=1e-5)
