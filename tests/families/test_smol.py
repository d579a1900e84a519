"""`smol`: SmolLM2-135M-Instruct inside LLaVA-NeXT, converted once, equal to the bare model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cvs_families.checkpoint import (
    LoadedModel,
    checkpoint_fingerprint,
    ensure_checkpoint,
    letter_token_ids,
    load_model,
)
from cvs_families.registry import get_family
from cvs_families.smol import IMAGE_TOKEN, build_smol_checkpoint, load_gguf_language_model

CONVERSATIONS = [
    [{"role": "user", "content": "How important is family in your life?"}],
    [
        {"role": "system", "content": "You live in Brazil."},
        {"role": "user", "content": "Is work important?\n(A) Very\n(B) Not at all"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Which option?"},
    ],
]


@pytest.fixture(scope="module")
def smol() -> LoadedModel:
    spec = get_family("smol")
    return load_model(spec, ensure_checkpoint(spec))


@pytest.fixture(scope="module")
def bare() -> tuple[Any, Any]:
    """SmolLM2 straight from the GGUF file, as transformers loads it."""
    return load_gguf_language_model()


def _as_parts(conversation: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [
        {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
        for m in conversation
    ]


@pytest.mark.slow
def test_two_conversions_give_the_same_fingerprint(smol: LoadedModel, tmp_path: Path) -> None:
    # Environment must not leak into the files (HF_HUB_OFFLINE once did, via the tokenizer).
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    try:
        build_smol_checkpoint(get_family("smol"), tmp_path)
    finally:
        monkeypatch.undo()
    assert checkpoint_fingerprint(tmp_path) == smol.fingerprint
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "local_files_only" not in saved


def test_text_logits_equal_bare_smollm2(smol: LoadedModel, bare: tuple[Any, Any]) -> None:
    bare_model, bare_tokenizer = bare
    for conversation in CONVERSATIONS:
        text = bare_tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        text += "If I had to choose, my answer would be ("
        ids = bare_tokenizer(text, return_tensors="pt").input_ids  # (1, tokens)
        assert torch.equal(ids, smol.tokenizer(text, return_tensors="pt").input_ids)
        with torch.no_grad():
            expected = bare_model(input_ids=ids).logits[0]  # (tokens, vocab)
            found = smol.model(input_ids=ids).logits[0]
        difference = (found - expected).abs().max().item()
        assert difference <= 1e-5, f"max |smol - SmolLM2| = {difference:.2e}"


def test_the_template_renders_text_like_smollm2s_own(
    smol: LoadedModel, bare: tuple[Any, Any]
) -> None:
    _, bare_tokenizer = bare
    template = get_family("smol").chat_template
    assert smol.tokenizer.chat_template == template
    for conversation in CONVERSATIONS:
        for generation in (False, True):
            theirs = bare_tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=generation
            )
            as_strings = smol.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=generation
            )
            as_parts = smol.tokenizer.apply_chat_template(
                _as_parts(conversation), tokenize=False, add_generation_prompt=generation
            )
            assert as_strings == as_parts == theirs


def test_an_image_part_renders_the_reused_special_token_first(smol: LoadedModel) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Where is this?"}, {"type": "image"}],
        }
    ]
    text = smol.tokenizer.apply_chat_template(messages, tokenize=False)
    assert f"<|im_start|>user\n{IMAGE_TOKEN}\nWhere is this?<|im_end|>" in text
    ids = smol.tokenizer(text).input_ids
    assert ids.count(get_family("smol").image_token_id) == 1


def test_letters_a_to_p_are_single_tokens_49_to_64(smol: LoadedModel) -> None:
    assert letter_token_ids(smol.tokenizer, 16) == list(range(49, 65))


def test_the_vocabulary_is_not_resized_and_the_head_stays_tied(smol: LoadedModel) -> None:
    spec = get_family("smol")
    embedding = smol.model.get_input_embeddings().weight
    assert embedding.shape == (49152, 576)
    assert smol.model.lm_head.weight.data_ptr() == embedding.data_ptr()
    assert smol.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == spec.image_token_id == 16
    assert len(smol.tokenizer) == 49152


def test_smol_config_is_the_ggufs_text_config(bare: tuple[Any, Any]) -> None:
    bare_model, _ = bare
    found = bare_model.config.to_dict()
    for key, value in get_family("smol").text_config.items():
        if key not in ("architectures", "_name_or_path"):
            assert found[key] == value, key


def test_smol_image_geometry_is_the_real_models(smol: LoadedModel) -> None:
    spec = get_family("smol")
    real = get_family("yi34b")
    assert (spec.tile_size, spec.patch_size, spec.grid_pinpoints) == (
        real.tile_size,
        real.patch_size,
        real.grid_pinpoints,
    )
    assert spec.image_informative is False and real.image_informative is True


def test_an_image_prompt_runs_end_to_end(smol: LoadedModel) -> None:
    spec = get_family("smol")
    image = np.random.default_rng(0).integers(0, 256, size=(120, 200, 3)).astype(np.uint8)
    prepared = spec.prepare_image(image)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = smol.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = smol.tokenizer(text).input_ids
    at = ids.index(spec.image_token_id)
    count = spec.num_image_tokens(*prepared.image_size)
    expanded = ids[:at] + [spec.image_token_id] * count + ids[at + 1 :]
    with torch.no_grad():
        logits = smol.model(
            input_ids=torch.tensor([expanded]),
            pixel_values=torch.from_numpy(prepared.pixel_values)[None],
            image_sizes=torch.tensor([prepared.image_size]),
        ).logits[0, -1]
    assert logits.shape == (49152,) and torch.isfinite(logits).all()
