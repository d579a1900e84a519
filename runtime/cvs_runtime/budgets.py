"""Memory budgets of a scoring run, and the sizes the scheduler derives from them.

Three budgets bound what a run holds beyond the engine itself: the image-feature cache, the
prefix key/value cache, and the activations of one suffix batch (from which the batch size
follows: rows = activation budget // bytes one suffix row needs at this prefix length, capped
by `max_batch`). Defaults come from the machine's memory; sizes are written like `512MiB`.
Standard library only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class BudgetError(ValueError):
    """A budget that is not a size, or too small for the work asked of it."""


def parse_size(text: str) -> int:
    """Bytes in `text`: a number with an optional unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB;
    case-insensitive). `512MiB` → 536870912; `0` → 0."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BudgetError(
            f"{text!r} is not a size: write a number with an optional unit, like 512MiB, "
            "2GiB or 1500MB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(nbytes: float) -> str:
    """`nbytes` in the largest binary unit that keeps the number ≥ 1 (e.g. `140.2 MiB`)."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def machine_memory_bytes() -> int:
    """Physical memory of this machine (POSIX sysconf)."""
    return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True)
class Budgets:
    """What one run may hold beyond the engine's weights."""

    image_cache_bytes: int
    """Image features kept across the run (0: recomputed whenever needed)."""
    prefix_cache_bytes: int
    """Prefix key/value caches kept across the run (0: recomputed for every suffix batch)."""
    activation_bytes: int
    """Activations of one suffix batch: the batch size follows from it."""
    max_batch: int = 64
    """Cap on suffix rows per batch (`--batch-size`); results do not depend on it."""

    def __post_init__(self) -> None:
        for name in ("image_cache_bytes", "prefix_cache_bytes", "activation_bytes"):
            if getattr(self, name) < 0:
                raise BudgetError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.activation_bytes == 0:
            raise BudgetError("the activation budget must be more than 0 bytes")
        if self.max_batch < 1:
            raise BudgetError(f"the batch size cap must be ≥ 1, got {self.max_batch}")

    @property
    def caches_on(self) -> bool:
        """Whether either cache keeps anything."""
        return self.image_cache_bytes > 0 or self.prefix_cache_bytes > 0


def default_budgets(memory_bytes: int | None = None, max_batch: int = 64) -> Budgets:
    """Budgets from the machine's memory: image cache 5% (≤ 4 GiB), prefix cache 10%
    (≤ 16 GiB), activations 20% (≤ 16 GiB; a 5-tile image prefix on smol needs 2.8 GB)."""
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    return Budgets(
        image_cache_bytes=min(memory // 20, 4 * 2**30),
        prefix_cache_bytes=min(memory // 10, 16 * 2**30),
        activation_bytes=min(memory // 5, 16 * 2**30),
        max_batch=max_batch,
    )


def prefix_cache_bytes(spec: FamilySpec, tokens: int, itemsize: int = 4) -> int:
    """Bytes of a batch-1 key/value cache of `tokens` tokens (keys and values, every layer)."""
    per_token = 2 * spec.text_num_layers * spec.text_num_kv_heads * spec.text_head_dim
    return per_token * tokens * itemsize


def image_feature_bytes(spec: FamilySpec, tokens: int, itemsize: int = 4) -> int:
    """Bytes of one image's packed features (`tokens` image tokens × hidden)."""
    return tokens * spec.text_hidden_size * itemsize


ATTENTION_BUFFERS = 3
"""Live (rows, heads, seq, prefix + seq) float buffers while one suffix attention layer runs: the
scores, their exponentials, and one temporary of the merge (onnxruntime frees the rest).
Measured on smol, 16 rows × 112 tokens over a 3,050-token prefix: 516 MiB (estimate 647)."""
PREFIX_ATTENTION_BUFFERS = 8
"""The same for the prefix pass, whose graph (transformers' attention with an additive mask)
keeps more (heads, tokens, tokens) buffers alive: 2.9 GiB measured in the shared arena for
3,050 smol tokens (8 × 335 MB + states ≈ 2.8 GB estimated). It grows with the square of the
prefix: a full-size model's image prefix wants chunking (not done yet)."""


def suffix_row_bytes(spec: FamilySpec, prefix: int, width: int, itemsize: int = 4) -> int:
    """Activation bytes one suffix row of `width` tokens needs over a `prefix`-token cache:
    attention buffers of one layer, the layer's hidden states and MLP intermediates, and the
    answer position's logits (the graph's output and its float64 reduction)."""
    heads = spec.text_num_heads
    attention = ATTENTION_BUFFERS * heads * width * (prefix + width) * itemsize
    return attention + _state_bytes(spec, width, itemsize) + spec.vocab_size * (itemsize + 8)


def _state_bytes(spec: FamilySpec, tokens: int, itemsize: int) -> int:
    """One layer's hidden states, projections and MLP intermediates for `tokens` positions
    (measured 9.1 MiB per 128-token smol row where this and the rest estimate 9.2)."""
    hidden = spec.text_hidden_size
    intermediate = int(spec.text_config.get("intermediate_size", 4 * hidden))
    return tokens * (8 * hidden + 4 * intermediate) * itemsize


def prefix_pass_bytes(spec: FamilySpec, tokens: int, itemsize: int = 4) -> int:
    """Activation bytes of the one prefix pass over `tokens` tokens (batch 1, causal)."""
    attention = PREFIX_ATTENTION_BUFFERS * spec.text_num_heads * tokens * tokens * itemsize
    return attention + _state_bytes(spec, tokens, itemsize)


def rows_for_budget(budgets: Budgets, row_bytes: int) -> int:
    """Suffix rows per batch: as many as the activation budget holds, at most `max_batch`;
    0 when not even one fits."""
    return min(budgets.max_batch, budgets.activation_bytes // max(row_bytes, 1))
