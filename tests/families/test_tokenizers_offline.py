"""The offline-trained tokenizers have their real family's kind and special-token layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from cvs_families.checkpoint import ensure_checkpoint, letter_token_ids
from cvs_families.registry import get_family
from cvs_families.tokenizers_offline import BYTE_TOKENS, build_tokenizer, training_corpus

TINY = ["tiny-vicuna", "tiny-yi", "tiny-qwen"]
SPECIAL_IDS = {
    "tiny-vicuna": {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 2000},
    "tiny-yi": {
        "<unk>": 0,
        "<|startoftext|>": 1,
        "<|endoftext|>": 2,
        "<|im_start|>": 6,
        "<|im_end|>": 7,
        "<image>": 2000,
    },
    "tiny-qwen": {"<|endoftext|>": 2000, "<|im_start|>": 2001, "<|im_end|>": 2002, "<image>": 2003},
}
"""Written out by hand from the real layouts (Llama, Yi, Qwen2), shifted to the tiny sizes."""
TEXTS = [
    "How important is family in your life?",
    "Ünïcödé: naïve café, Việt Nam, Türkiye, 日本, emoji 😀 and tabs\tand  double spaces",
]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    return {
        name: AutoTokenizer.from_pretrained(ensure_checkpoint(get_family(name))) for name in TINY
    }


@pytest.mark.parametrize("name", TINY)
def test_special_tokens_sit_at_the_real_layouts_ids(name: str, tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers[name]
    for token, expected in SPECIAL_IDS[name].items():
        assert tokenizer.convert_tokens_to_ids(token) == expected, token
        assert tokenizer(token, add_special_tokens=False).input_ids == [expected], token


@pytest.mark.parametrize("name", TINY)
def test_config_token_ids_name_the_tokenizers_tokens(name: str, tokenizers: dict[str, Any]) -> None:
    spec, tokenizer = get_family(name), tokenizers[name]
    assert tokenizer.convert_ids_to_tokens(spec.image_token_id) == "<image>"
    text = spec.text_config
    if "eos_token_id" in text:
        assert tokenizer.convert_ids_to_tokens(text["eos_token_id"]) == tokenizer.eos_token
    if text.get("pad_token_id") is not None:
        assert tokenizer.convert_ids_to_tokens(text["pad_token_id"]) == tokenizer.pad_token
    assert len(tokenizer) <= spec.vocab_size


@pytest.mark.parametrize("name", TINY)
def test_text_round_trips_exactly(name: str, tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers[name]
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_sentencepiece_kind_uses_metaspace_and_byte_fallback(tokenizers: dict[str, Any]) -> None:
    first_byte_id = {"tiny-vicuna": 3, "tiny-yi": 8}  # right after the leading special tokens
    for name in ("tiny-vicuna", "tiny-yi"):
        assert get_family(name).tokenizer_kind == "sentencepiece"
        tokenizer = tokenizers[name]
        pieces = tokenizer.tokenize("hello world 😀", add_special_tokens=False)
        assert pieces[0].startswith("▁") and any(p.startswith("▁w") for p in pieces)
        assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
        assert tokenizer.convert_tokens_to_ids(BYTE_TOKENS[0]) == first_byte_id[name]


def test_byte_bpe_kind_uses_byte_level_pieces(tokenizers: dict[str, Any]) -> None:
    assert get_family("tiny-qwen").tokenizer_kind == "byte_bpe"
    pieces = tokenizers["tiny-qwen"].tokenize("hello world 😀")
    assert any(p.startswith("Ġ") for p in pieces)
    assert not any(p.startswith("<0x") for p in pieces)


def test_only_vicuna_puts_bos_in_front(tokenizers: dict[str, Any]) -> None:
    first = {name: tokenizers[name]("Hello").input_ids[0] for name in TINY}
    assert first["tiny-vicuna"] == 1
    assert first["tiny-yi"] != 1
    assert first["tiny-qwen"] not in SPECIAL_IDS["tiny-qwen"].values()


@pytest.mark.parametrize("name", TINY)
def test_letters_a_to_p_are_single_tokens_after_a_paren(
    name: str, tokenizers: dict[str, Any]
) -> None:
    ids = letter_token_ids(tokenizers[name], 16)
    assert len(set(ids)) == 16
    assert tokenizers[name].convert_ids_to_tokens(ids) == list("ABCDEFGHIJKLMNOP")


@pytest.mark.parametrize("name", TINY)
def test_no_merge_glues_a_paren_to_a_capital(name: str) -> None:
    folder = ensure_checkpoint(get_family(name))
    merges = json.loads((Path(folder) / "tokenizer.json").read_text())["model"]["merges"]
    for left, right in merges:
        assert not (left.endswith("(") and right[:1].isupper()), (left, right)


@pytest.mark.parametrize("name", TINY)
def test_the_saved_chat_template_is_the_familys(name: str, tokenizers: dict[str, Any]) -> None:
    assert tokenizers[name].chat_template == get_family(name).chat_template


def test_training_is_deterministic() -> None:
    recipe = get_family("tiny-yi").build.tokenizer  # type: ignore[union-attr]
    assert recipe is not None
    corpus = training_corpus()
    assert build_tokenizer(recipe, corpus).to_str() == build_tokenizer(recipe, corpus).to_str()


def test_the_corpus_reads_the_real_questionnaire() -> None:
    corpus = training_corpus()
    assert "Important in life: Family" in corpus
    assert "Very important" in corpus
    assert len(corpus) > 5000
