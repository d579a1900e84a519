"""Yi-34B LLaVA-NeXT (llava-hf/llava-v1.6-34b-hf) and its tiny stand-in.

Nous-Hermes-2-Yi-34B: a Llama text model with grouped-query attention (56 query heads, 8
key/value heads: 7 per group), rope theta 5e6, ChatML prompts and a SentencePiece tokenizer
that adds no `<|startoftext|>` of its own.
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

_CONFIG = load_packaged_json("yi34b.config.json")
_PROCESSOR = load_packaged_json("yi34b.processor.json")

YI34B = FamilySpec(
    name="yi34b",
    kind="real",
    hf_id="llava-hf/llava-v1.6-34b-hf",
    config=_CONFIG,
    chat_template=_PROCESSOR["chat_template"],
    image_token=_PROCESSOR["image_token"],
    image_token_id=_PROCESSOR["image_token_index"],
    tokenizer_kind="sentencepiece",
    image_informative=True,
    notes=(
        "chat template from revision ccd5c91 (the fix); an earlier revision carried a Mistral "
        "[INST] template (configs/SOURCES.md)"
    ),
)

TINY_TOKENIZER = TokenizerRecipe(
    kind="sentencepiece",
    leading_specials=(
        "<unk>",
        "<|startoftext|>",
        "<|endoftext|>",
        # ids 3–5: the Yi tokenizer's own strings for them were not found; placeholders keep
        # <|im_start|> at 6 and <|im_end|> at 7 as in the real vocabulary.
        "<|reserved_3|>",
        "<|reserved_4|>",
        "<|reserved_5|>",
        "<|im_start|>",
        "<|im_end|>",
    ),
    trailing_specials=("<image>",),
    base_vocab_size=2000,
    bos="<|startoftext|>",
    eos="<|im_end|>",
    pad="<unk>",
    unk="<unk>",
    add_bos=False,
)
"""Yi layout: <unk> 0, <|startoftext|> 1, <|endoftext|> 2, <|im_start|> 6, <|im_end|> 7 (eos)."""

TINY_SIZES = TinySizes(
    text_hidden=112,
    text_intermediate=320,
    text_heads=7,
    text_kv_heads=1,
    text_layers=2,
    vision_hidden=32,
    vision_intermediate=128,
    vision_heads=2,
    vision_layers=2,
    tile_size=42,
)
"""7 query heads on 1 key/value head: the full model's 56:8 = 7:1 ratio, head width 16."""

TINY_YI = FamilySpec(
    name="tiny-yi",
    kind="tiny",
    hf_id=None,
    config=derive_tiny_config(
        _CONFIG,
        TINY_SIZES,
        vocab_size=padded_vocab_size(TINY_TOKENIZER.total_size, 64),
        token_ids={"image_token_index": TINY_TOKENIZER.token_id("<image>")},
    ),
    chat_template=YI34B.chat_template,
    image_token="<image>",
    image_token_id=TINY_TOKENIZER.token_id("<image>"),
    tokenizer_kind="sentencepiece",
    image_informative=False,
    build=BuildRecipe(
        builder="cvs_families.checkpoint_build:build_tiny_checkpoint",
        seed=34,
        tokenizer=TINY_TOKENIZER,
        init={
            "letter_spread": 5.0,
            "letter_offset": 12.0,
            "letter_directions": 8,
            "calibration_prompts": 128,
            "query_gain": 3.0,
        },
    ),
    notes="random weights: shapes and code paths of yi34b, no knowledge",
)
