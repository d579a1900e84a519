"""Family configs are the published facts; tiny ones differ from them only in sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvs_families.registry import get_family
from cvs_families.spec import (
    TINY_ALLOWED_DIFFERENCES,
    TinySizes,
    config_to_dict,
    derive_tiny_config,
    flatten_config,
)

REPO = Path(__file__).resolve().parents[2]
SHARED_MODELS = REPO.parent / "shared" / "models"
PAIRS = [("vicuna13b", "tiny-vicuna"), ("yi34b", "tiny-yi"), ("qwen72b", "tiny-qwen")]


@pytest.mark.parametrize("name", ["vicuna13b", "yi34b", "qwen72b"])
def test_packaged_configs_are_the_shared_facts_byte_for_byte(name: str) -> None:
    packaged = REPO / "families" / "cvs_families" / "configs"
    for suffix in ("config.json", "processor.json"):
        shared = SHARED_MODELS / f"{name}.{suffix}"
        assert shared.is_file(), f"{shared} missing: the shared model facts are gone"
        assert (packaged / f"{name}.{suffix}").read_bytes() == shared.read_bytes()


@pytest.mark.parametrize(("full_name", "tiny_name"), PAIRS)
def test_tiny_config_differs_from_the_full_one_only_in_size_keys(
    full_name: str, tiny_name: str
) -> None:
    full = flatten_config(get_family(full_name).config)
    tiny = flatten_config(get_family(tiny_name).config)
    assert set(full) == set(tiny), "a tiny config must not add or drop keys"
    changed = {key for key in full if full[key] != tiny[key]}
    assert changed <= TINY_ALLOWED_DIFFERENCES, changed - TINY_ALLOWED_DIFFERENCES
    # And the sizes really did shrink.
    assert {"text_config.hidden_size", "text_config.num_hidden_layers"} <= changed
    assert "vision_config.image_size" in changed


def test_the_allowed_differences_are_only_sizes_token_ids_and_pinpoints() -> None:
    for key in TINY_ALLOWED_DIFFERENCES:
        leaf = key.rsplit(".", 1)[-1]
        assert (
            leaf.endswith(("_size", "_heads", "_layers"))
            or leaf.endswith("token_id")
            or key in ("image_token_index", "image_grid_pinpoints")
        ), key


@pytest.mark.parametrize(("full_name", "tiny_name"), PAIRS)
def test_tiny_keeps_everything_that_defines_the_family(full_name: str, tiny_name: str) -> None:
    full, tiny = get_family(full_name), get_family(tiny_name)
    assert tiny.chat_template == full.chat_template
    assert tiny.tokenizer_kind == full.tokenizer_kind
    assert tiny.image_token == full.image_token
    assert tiny.patch_size == full.patch_size
    for key in (
        "model_type",
        "architectures",
        "rope_theta",
        "tie_word_embeddings",
        "rms_norm_eps",
        "max_position_embeddings",
    ):
        assert tiny.text_config.get(key) == full.text_config.get(key), key
    for key in ("vision_feature_layer", "vision_feature_select_strategy", "projector_hidden_act"):
        assert tiny.config[key] == full.config[key], key
    assert tiny.config.get("tie_word_embeddings") == full.config.get("tie_word_embeddings")
    # Grouped-query ratio: Vicuna 40:40, Yi 56:8 = 7:1, Qwen 64:64.
    assert (
        tiny.text_num_heads * full.text_num_kv_heads == full.text_num_heads * tiny.text_num_kv_heads
    )


def test_grouped_query_ratios_are_the_real_ones() -> None:
    ratios = {
        name: get_family(name).text_num_heads // get_family(name).text_num_kv_heads
        for name in ("tiny-vicuna", "tiny-yi", "tiny-qwen")
    }
    assert ratios == {"tiny-vicuna": 1, "tiny-yi": 7, "tiny-qwen": 1}


@pytest.mark.parametrize(("full_name", "tiny_name"), PAIRS)
def test_tiny_pinpoints_keep_the_aspect_ratios(full_name: str, tiny_name: str) -> None:
    full, tiny = get_family(full_name), get_family(tiny_name)
    assert len(full.grid_pinpoints) == len(tiny.grid_pinpoints)
    for (fh, fw), (th, tw) in zip(full.grid_pinpoints, tiny.grid_pinpoints, strict=True):
        assert fh * tw == fw * th
        assert (fh // full.tile_size, fw // full.tile_size) == (
            th // tiny.tile_size,
            tw // tiny.tile_size,
        )


@pytest.mark.parametrize("name", ["tiny-vicuna", "tiny-yi", "tiny-qwen"])
def test_tiny_families_are_small(name: str) -> None:
    spec = get_family(name)
    assert 4 <= spec.tokens_per_tile <= 9
    assert spec.text_hidden_size <= 128 and spec.text_num_layers == 2
    assert spec.vocab_size <= 4096
    assert 3 <= spec.max_tiles <= 6


def test_qwen_has_qkv_bias_and_llama_families_do_not() -> None:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    biases = {}
    for name in ("tiny-vicuna", "tiny-yi", "tiny-qwen"):
        with torch.device("meta"):
            model = LlavaNextForConditionalGeneration(
                LlavaNextConfig(**config_to_dict(get_family(name).config))
            )
        attention = model.model.language_model.layers[0].self_attn
        biases[name] = attention.q_proj.bias is not None
    assert biases == {"tiny-vicuna": False, "tiny-yi": False, "tiny-qwen": True}


@pytest.mark.parametrize(
    ("name", "billions"), [("vicuna13b", 13.351), ("yi34b", 34.752), ("qwen72b", 72.667)]
)
def test_full_configs_instantiate_on_the_meta_device(name: str, billions: float) -> None:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(
            LlavaNextConfig(**config_to_dict(get_family(name).config))
        )
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e9, 3) == billions


def test_derive_refuses_a_broken_grouped_query_ratio() -> None:
    sizes = TinySizes(64, 128, 4, 2, 2, 32, 128, 2, 2, 42)  # 2:1, Yi is 7:1
    with pytest.raises(ValueError, match="ratio"):
        derive_tiny_config(get_family("yi34b").config, sizes, 2048, {"image_token_index": 2000})


def test_derive_refuses_a_tile_that_is_not_a_patch_multiple() -> None:
    sizes = TinySizes(64, 128, 4, 4, 2, 32, 128, 2, 2, 40)
    with pytest.raises(ValueError, match="multiple"):
        derive_tiny_config(get_family("vicuna13b").config, sizes, 2048, {"image_token_index": 0})


def test_spec_configs_are_read_only() -> None:
    spec = get_family("yi34b")
    with pytest.raises(TypeError):
        spec.config["image_token_index"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.text_config["hidden_size"] = 1  # type: ignore[index]
