"""Tokenizers the project trains itself, offline, for the tiny stand-in families.

No tokenizer can be downloaded here, so each tiny family gets one trained with `tokenizers` on a
corpus the project makes (the WVS question texts and answer labels from `$CVS_DATA`, country
names, chat-template and prompt words), with the real family's kind and special-token layout:

- "sentencepiece" (Vicuna, Yi): BPE over ▁-metaspace words with byte fallback, special tokens
  first, then the 256 `<0xNN>` byte tokens, then the learnt pieces, as Llama's tokenizer lays
  them out; Vicuna adds `<s>` in front of every text, Yi adds nothing.
- "byte_bpe" (Qwen): GPT-2 style byte-level BPE behind Qwen2's pre-tokenizer regex, special
  tokens after the learnt vocabulary; adds nothing.

Merges that would glue "(" to a following capital letter are dropped, so an option letter after
"… would be (" is always its own token, as in the real tokenizers. The vocabulary is padded with
inert `<unused_N>` entries to exactly `base_vocab_size`, so the special ids are fixed numbers
the family's config can state before anything is trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cvs_families.paths import data_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer

QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenizer split (its tokenizer.json), before the byte-level mapping."""

BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
"""SentencePiece byte-fallback tokens, in id order."""

PROMPT_WORDS = (
    "You live in {country}. Answer as a typical person from {country} would.",
    "Look at the image. Which country is this image from? It is from",
    "Answer the following survey question with one option. Do not refuse.",
    'Give the options "Don\'t know" and "No answer" the lowest weight.',
    "Question: Options: Answer: If I had to choose, my answer would be (",
    "USER: ASSISTANT: system user assistant <image>",
    "brands, cooking and food, geography, objects, people and everyday life, public figures and "
    "pop culture, sports and recreation, tradition, flag, family",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z 0 1 2 3 4 5 6 7 8 9 10",
)
"""Prompt vocabulary the evaluator uses, so prompts do not fall apart into single letters."""


@dataclass(frozen=True)
class TokenizerRecipe:
    """The layout of a trained tokenizer: kind, special tokens, size, bos handling."""

    kind: Literal["sentencepiece", "byte_bpe"]
    """"sentencepiece": ▁ metaspace + byte fallback; "byte_bpe": byte-level BPE (Qwen2)."""
    leading_specials: tuple[str, ...]
    """Special tokens at ids 0, 1, … (before byte tokens and pieces)."""
    trailing_specials: tuple[str, ...]
    """Special tokens at ids base_vocab_size, base_vocab_size + 1, … (after the vocabulary)."""
    base_vocab_size: int
    """Leading specials + byte tokens + learnt pieces (+ unused padding): exactly this many."""
    bos: str | None
    """Beginning-of-sequence token (None: the family has none)."""
    eos: str
    """End-of-sequence token."""
    pad: str
    """Padding token."""
    unk: str | None
    """Unknown token (sentencepiece kind only)."""
    add_bos: bool
    """Whether encoding a text puts `bos` in front (Vicuna/Llama does; Yi and Qwen do not)."""

    def token_id(self, token: str) -> int:
        """The fixed id of a special token in this layout."""
        if token in self.leading_specials:
            return self.leading_specials.index(token)
        if token in self.trailing_specials:
            return self.base_vocab_size + self.trailing_specials.index(token)
        raise KeyError(f"{token!r} is not a special token of this recipe")

    @property
    def total_size(self) -> int:
        """Tokens the tokenizer knows (the config's vocab_size may be padded beyond it)."""
        return self.base_vocab_size + len(self.trailing_specials)


def training_corpus() -> list[str]:
    """Sorted, deduplicated lines the tiny tokenizers are trained on (reads `$CVS_DATA`)."""
    root = data_dir()
    lines: set[str] = set(PROMPT_WORDS)
    questionnaire = root / "wvs7" / "questionnaire"
    metadata = json.loads((questionnaire / "question_metadata.json").read_text("utf-8"))
    lines.update(str(entry.get("question", "")) for entry in metadata.values())
    codebook = json.loads((questionnaire / "codebook.json").read_text("utf-8"))
    for entry in codebook.values():
        lines.add(str(entry.get("question", "")))
        lines.add(str(entry.get("question_instruction", "")))
        lines.update(str(label) for label in entry.get("choices", {}).values())
    countries_file = root / "images" / "flags" / "countries.json"
    if countries_file.is_file():
        lines.update(json.loads(countries_file.read_text("utf-8")).values())
    return sorted(line.strip() for line in lines if line.strip())


def codebook_items() -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(variable, question wordings, answer labels) of WVS-7 value questions with 2–10 answers.

    Wordings: the codebook's short label and, where there is one, question_metadata.json's
    natural-language question. Negative codes (don't know, no answer…) are left out.
    """
    questionnaire = data_dir() / "wvs7" / "questionnaire"
    codebook = json.loads((questionnaire / "codebook.json").read_text("utf-8"))
    metadata = json.loads((questionnaire / "question_metadata.json").read_text("utf-8"))
    items = []
    for variable in sorted(codebook):
        entry = codebook[variable]
        if not variable.startswith("Q") or entry.get("type") != "multiple_choice":
            continue
        labels = [str(label) for code, label in entry["choices"].items() if int(code) >= 0]
        wordings = [str(entry["question"])]
        if variable in metadata and metadata[variable].get("question"):
            wordings.append(str(metadata[variable]["question"]))
        if 2 <= len(labels) <= 10:
            items.append((variable, tuple(wordings), labels))
    return items


def _glues_paren_to_capital(left: str, right: str) -> bool:
    return left.endswith("(") and right[:1].isascii() and right[:1].isupper()


def _filter_merges(
    vocab: dict[str, int], merges: Sequence[Sequence[str]]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Drop merges gluing "(" to a capital letter, and every merge built on them.

    Returns the surviving pieces in their learnt order and the surviving merges.
    """
    dropped: set[str] = set()
    kept_merges: list[tuple[str, str]] = []
    for left, right in merges:
        if left in dropped or right in dropped or _glues_paren_to_capital(left, right):
            dropped.add(left + right)
            continue
        kept_merges.append((left, right))
    pieces = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    return [p for p in pieces if p not in dropped], kept_merges


def _train(
    corpus: Iterable[str], recipe: TokenizerRecipe
) -> tuple[list[str], list[tuple[str, str]]]:
    """Learn BPE pieces and merges for the recipe's kind (no special tokens involved)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    trainer_model = models.BPE()
    tokenizer = Tokenizer(trainer_model)
    if recipe.kind == "sentencepiece":
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="always", split=True
        )
        budget = recipe.base_vocab_size - len(recipe.leading_specials) - len(BYTE_TOKENS)
        alphabet: list[str] = []
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        budget = recipe.base_vocab_size - len(recipe.leading_specials)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=budget, min_frequency=2, show_progress=False, initial_alphabet=alphabet
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return _filter_merges(model["vocab"], model["merges"])


def build_tokenizer(recipe: TokenizerRecipe, corpus: Iterable[str]) -> Tokenizer:
    """Train and assemble the `tokenizers.Tokenizer` the recipe describes."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )
    from tokenizers.processors import ByteLevel as ByteLevelProcessor
    from tokenizers.processors import TemplateProcessing

    pieces, merges = _train(corpus, recipe)
    ordered = list(recipe.leading_specials)
    if recipe.kind == "sentencepiece":
        ordered += BYTE_TOKENS
    ordered += [p for p in pieces if p not in set(ordered)]
    if len(ordered) > recipe.base_vocab_size:
        raise ValueError(f"trained {len(ordered)} tokens, more than {recipe.base_vocab_size}")
    ordered += [f"<unused_{i}>" for i in range(recipe.base_vocab_size - len(ordered))]
    ordered += recipe.trailing_specials
    vocab = {token: index for index, token in enumerate(ordered)}

    tokenizer: Tokenizer
    if recipe.kind == "sentencepiece":
        tokenizer = Tokenizer(
            models.BPE(
                vocab=vocab, merges=merges, unk_token=recipe.unk, byte_fallback=True, fuse_unk=True
            )
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
        tokenizer.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(content=" ", left=1, right=0),
            ]
        )
    else:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = ByteLevelProcessor(trim_offsets=False)
    if recipe.add_bos:
        if recipe.bos is None:
            raise ValueError("add_bos needs a bos token")
        bos_id = vocab[recipe.bos]
        tokenizer.post_processor = TemplateProcessing(
            single=f"{recipe.bos} $A",
            pair=f"{recipe.bos} $A {recipe.bos} $B",
            special_tokens=[(recipe.bos, bos_id)],
        )
    specials = [*recipe.leading_specials, *recipe.trailing_specials]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def tokenizer_files_config(recipe: TokenizerRecipe, chat_template: str) -> dict[str, Any]:
    """Keyword arguments for `PreTrainedTokenizerFast` wrapping the trained tokenizer."""
    special: dict[str, Any] = {"eos_token": recipe.eos, "pad_token": recipe.pad}
    if recipe.bos is not None:
        special["bos_token"] = recipe.bos
    if recipe.unk is not None:
        special["unk_token"] = recipe.unk
    return {
        **special,
        "chat_template": chat_template,
        "add_bos_token": recipe.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
    }


__all__ = [
    "BYTE_TOKENS",
    "QWEN2_PRETOKENIZE_REGEX",
    "TokenizerRecipe",
    "build_tokenizer",
    "tokenizer_files_config",
    "training_corpus",
]
