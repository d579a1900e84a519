"""Qwen1.5-72B LLaVA-NeXT (llava-hf/llava-next-72b-hf) and its tiny stand-in.

A Qwen2 text model (query/key/value projections with biases, one key/value head per query
head, rope theta 1e6), ChatML prompts and a byte-level BPE tokenizer whose special tokens
follow the learnt vocabulary.
"""

from __future__ import annotations

from cvs_families.spec import (
    BuildRecipe,
    FamilySpec,
    TinySizes,
    derive_tiny_config,
    load_packaged_json,
    padded_vocab_size,
)
from cvs_families.tokenizers_offline import TokenizerRecipe

_CONFIG = load_packaged_json("qwen72b.config.json")
_PROCESSOR = load_packaged_json("qwen72b.processor.json")

QWEN72B = FamilySpec(
    name="qwen72b",
    kind="real",
    hf_id="llava-hf/llava-next-72b-hf",
    config=_CONFIG,
    chat_template=_PROCESSOR["chat_template"],
    image_token=_PROCESSOR["image_token"],
    image_token_id=_PROCESSOR["image_token_index"],
    tokenizer_kind="byte_bpe",
    image_informative=True,
)

TINY_TOKENIZER = TokenizerRecipe(
    kind="byte_bpe",
    leading_specials=(),
    trailing_specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"),
    base_vocab_size=2000,
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    unk=None,
    add_bos=False,
)
"""Qwen layout: pieces, then <|endoftext|>, <|im_start|>, <|im_end|>, <image> (151643…151646)."""

TINY_SIZES = TinySizes(
    text_hidden=64,
    text_intermediate=192,
    text_heads=4,
    text_kv_heads=4,
    text_layers=2,
    vision_hidden=32,
    vision_intermediate=128,
    vision_heads=2,
    vision_layers=2,
    tile_size=42,
)

TINY_QWEN = FamilySpec(
    name="tiny-qwen",
    kind="tiny",
    hf_id=None,
    config=derive_tiny_config(
        _CONFIG,
        TINY_SIZES,
        # Qwen's vocabulary leaves unused rows after its special tokens; so does the tiny one.
        vocab_size=padded_vocab_size(TINY_TOKENIZER.total_size, 128),
        token_ids={
            "image_token_index": TINY_TOKENIZER.token_id("<image>"),
            "bos_token_id": TINY_TOKENIZER.token_id("<|endoftext|>"),
            "eos_token_id": TINY_TOKENIZER.token_id("<|im_end|>"),
        },
    ),
    chat_template=QWEN72B.chat_template,
    image_token="<image>",
    image_token_id=TINY_TOKENIZER.token_id("<image>"),
    tokenizer_kind="byte_bpe",
    image_informative=False,
    build=BuildRecipe(
        builder="cvs_families.checkpoint_build:build_tiny_checkpoint",
        seed=72,
        tokenizer=TINY_TOKENIZER,
        init={
            "letter_spread": 5.0,
            "letter_offset": 12.0,
            "letter_directions": 8,
            "calibration_prompts": 128,
            "query_gain": 3.0,
        },
    ),
    notes="random weights: shapes and code paths of qwen72b, no knowledge",
)
