"""What `make bench` scores: two workloads, built identically in every variant's process.

- **text**: the study countries present in the survey data × 48 value questions (4 per section
  with questions, spread as `cvs-eval` spreads them), items the country's survey did not ask
  left out (≈ 380 items);
- **image**: one 672×672 picture made here (5 anyres tiles: 2,928 image tokens, the real models'
  largest count) with all 239 value questions, under the image condition (one group).

The study loop and the unbatched variants run a fixed sample (96 text items, 12 image items):
their cost per item does not depend on grouping. FLOPs are counted, not measured:
2 × non-embedding parameters × tokens + 4 × layers × heads × head dim × Σ attended context +
2 × hidden × vocab per position whose logits are computed (padding never counted), for the
language model; the vision tower is left out (on `smol` it is 0.1% of a tile's cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cvs_evaluator.prompts import PromptItem
    from cvs_families.spec import FamilySpec, PreparedImage

Condition = Literal["text", "image"]
CONDITIONS: tuple[Condition, ...] = ("text", "image")
QUESTIONS_PER_SECTION = 4
"""Text workload: questions per section (12 sections with value questions: 48)."""
IMAGE_SIDE = 672
"""Side of the benchmark's picture: anyres picks the 2×2 grid, 5 tiles."""
SAMPLE_SIZES: dict[Condition, int] = {"text": 96, "image": 12}
"""Items the study loop (and the variants compared with it item by item) run."""
IMAGE_ID = "bench/672x672.png"
"""The id the benchmark's picture carries in prompts and results."""


@dataclass(frozen=True)
class Workload:
    """One condition's items, the picture they show, and the fixed sample."""

    condition: Condition
    """`text` or `image`."""
    items: tuple[PromptItem, ...]
    """Every item, in a fixed order."""
    image: PreparedImage | None
    """The prepared picture (image condition), else None."""
    sample: tuple[int, ...]
    """Indices into `items` of the fixed sample, in order."""

    def limited(self, count: int) -> Workload:
        """The first `count` items (the sample cut to them): for smoke tests."""
        return Workload(
            condition=self.condition,
            items=self.items[:count],
            image=self.image,
            sample=tuple(i for i in self.sample if i < count) or (0,),
        )

    def chosen(self, subset: Literal["all", "sample"]) -> list[PromptItem]:
        """All items, or the sample."""
        return list(self.items) if subset == "all" else [self.items[i] for i in self.sample]


def bench_picture(side: int = IMAGE_SIDE, seed: int = 0) -> NDArray[np.uint8]:
    """(side, side, 3) deterministic RGB: gradients, rings and seeded noise (no data files)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    rings = 127 + 127 * np.sin(np.hypot(x - side * 0.4, y - side * 0.6) / 9)
    picture = np.stack([255 * x / (side - 1), 255 * y / (side - 1), rings], axis=-1)
    picture += np.random.default_rng(seed).normal(0, 12, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def spread_sample(count: int, size: int) -> tuple[int, ...]:
    """`size` indices spread evenly over range(count) (all when size ≥ count)."""
    if size >= count:
        return tuple(range(count))
    return tuple(sorted(set(np.linspace(0, count - 1, size).round().astype(int).tolist())))


def build_workload(condition: Condition, spec: FamilySpec, tokenizer: Any) -> Workload:
    """The `condition` workload for `spec` (the same items in every process)."""
    from cvs_evaluator import evaluate
    from cvs_evaluator.countries import STUDY_COUNTRIES
    from cvs_evaluator.images import ImageRecord
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.wvs import load_study_shares

    bank = load_question_bank()
    shares = load_study_shares()
    asked = set(zip(shares["country"], shares["question"], strict=True))
    if condition == "text":
        present = set(shares["country"])
        settings = evaluate.EvalSettings(
            model=spec.name,
            engine="bench",
            precision="fp32",
            conditions=("text",),
            countries=tuple(c for c in STUDY_COUNTRIES if c in present),
        )
        questions = evaluate.select_questions(bank, per_section=QUESTIONS_PER_SECTION)
        items, _ = evaluate.build_items(settings, questions, tokenizer, spec, asked=asked)
        image = None
    else:
        record = ImageRecord(
            id=IMAGE_ID,
            path=Path(IMAGE_ID),
            country="JPN",
            country_name="Japan",
            category="objects",
        )
        settings = evaluate.EvalSettings(
            model=spec.name,
            engine="bench",
            precision="fp32",
            conditions=("image",),
            countries=("JPN",),
            images=(record,),
        )
        questions = evaluate.select_questions(bank, per_section=None)
        items, _ = evaluate.build_items(settings, questions, tokenizer, spec)
        image = spec.prepare_image(bench_picture())
    return Workload(
        condition=condition,
        items=tuple(items),
        image=image,
        sample=spread_sample(len(items), SAMPLE_SIZES[condition]),
    )


@dataclass(frozen=True)
class LanguageModelSize:
    """The sizes a FLOP count needs."""

    non_embedding_params: int
    """Parameters of the decoder layers and final norm (no embedding, no head)."""
    layers: int
    """Decoder layers."""
    heads: int
    """Query heads."""
    head_dim: int
    """Width of one head."""
    hidden: int
    """Model width."""
    vocab: int
    """Output head rows."""

    def flops(self, tokens: int, attended: int, head_positions: int) -> float:
        """FLOPs of computing `tokens` positions that attend to `attended` keys in all, with
        logits at `head_positions` positions."""
        linear = 2.0 * self.non_embedding_params * tokens
        attention = 4.0 * self.layers * self.heads * self.head_dim * attended
        head = 2.0 * self.hidden * self.vocab * head_positions
        return linear + attention + head


def language_model_size(spec: FamilySpec) -> LanguageModelSize:
    """The language model's sizes, from the family's config (no weights needed)."""
    text = spec.text_config
    hidden, heads, kv = spec.text_hidden_size, spec.text_num_heads, spec.text_num_kv_heads
    dim, layers = spec.text_head_dim, spec.text_num_layers
    intermediate = int(text["intermediate_size"])
    bias = bool(text.get("attention_bias", False)) or text.get("model_type") == "qwen2"
    attention = hidden * heads * dim * 2 + hidden * kv * dim * 2
    if bias:
        attention += heads * dim + 2 * kv * dim
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden
    return LanguageModelSize(
        non_embedding_params=layers * per_layer + hidden,
        layers=layers,
        heads=heads,
        head_dim=dim,
        hidden=hidden,
        vocab=spec.vocab_size,
    )


def full_prompt_tokens(item_tokens: int) -> tuple[int, int]:
    """(tokens, attended) of one prompt run whole and causally (no cache)."""
    return item_tokens, item_tokens * (item_tokens + 1) // 2
