"""Vicuna-13B LLaVA-NeXT (llava-hf/llava-v1.6-vicuna-13b-hf) and its tiny stand-in.

Llama text model with one key/value head per query head, the Vicuna v1 "USER: … ASSISTANT:"
chat format and a SentencePiece tokenizer that puts `<s>` in front of every text.
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

_CONFIG = load_packaged_json("vicuna13b.config.json")
_PROCESSOR = load_packaged_json("vicuna13b.processor.json")

VICUNA13B = FamilySpec(
    name="vicuna13b",
    kind="real",
    hf_id="llava-hf/llava-v1.6-vicuna-13b-hf",
    config=_CONFIG,
    chat_template=_PROCESSOR["chat_template_sibling"],
    image_token=_PROCESSOR["image_token"],
    image_token_id=_PROCESSOR["image_token_index"],
    tokenizer_kind="sentencepiece",
    image_informative=True,
    notes=(
        "chat template from the 7B sibling llava-hf/llava-v1.6-vicuna-7b-hf (same size and "
        "commit title); the 13B file's own content was not seen (configs/SOURCES.md)"
    ),
)

TINY_TOKENIZER = TokenizerRecipe(
    kind="sentencepiece",
    leading_specials=("<unk>", "<s>", "</s>"),
    trailing_specials=("<image>",),
    base_vocab_size=2000,
    bos="<s>",
    eos="</s>",
    pad="<unk>",
    unk="<unk>",
    add_bos=True,
)
"""Llama layout: <unk> 0, <s> 1, </s> 2, bytes, pieces, then <image> (as 32000 in the full)."""

TINY_SIZES = TinySizes(
    text_hidden=64,
    text_intermediate=172,
    text_heads=4,
    text_kv_heads=4,
    text_layers=2,
    vision_hidden=32,
    vision_intermediate=128,
    vision_heads=2,
    vision_layers=2,
    tile_size=42,
)

TINY_VICUNA = FamilySpec(
    name="tiny-vicuna",
    kind="tiny",
    hf_id=None,
    config=derive_tiny_config(
        _CONFIG,
        TINY_SIZES,
        vocab_size=padded_vocab_size(TINY_TOKENIZER.total_size, 64),
        token_ids={"image_token_index": TINY_TOKENIZER.token_id("<image>")},
    ),
    chat_template=VICUNA13B.chat_template,
    image_token="<image>",
    image_token_id=TINY_TOKENIZER.token_id("<image>"),
    tokenizer_kind="sentencepiece",
    image_informative=False,
    build=BuildRecipe(
        builder="cvs_families.checkpoint_build:build_tiny_checkpoint",
        seed=13,
        tokenizer=TINY_TOKENIZER,
        init={
            "letter_spread": 5.0,
            "letter_offset": 12.0,
            "letter_directions": 8,
            "calibration_prompts": 128,
            "query_gain": 3.0,
        },
    ),
    notes="random weights: shapes and code paths of vicuna13b, no knowledge",
)
