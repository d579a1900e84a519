"""Does every activation fit in fp16? Per layer, the largest |activation| on real survey prompts.

Why this module exists: float16 tops out at 65,504. Checkpoints trained in bf16 (a range of
3.4e38) can carry activations past that: the fp16 engine then produces inf and NaN, or silently
saturated values, on exactly the prompts a user runs. Before an fp16 engine is trusted, the fp32
model is run on real survey prompts with a forward hook on every module, recording the largest
|input| and |output| per module (so the residual stream, at each decoder layer's output, and
the MLP product, at `down_proj`'s input, are seen too); each is reported against the fp16
range, and any at or past it (or within `HEADROOM` of it) is named. Overflow fails the fp16
verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

FP16_MAX = 65504.0
"""Largest finite float16."""
HEADROOM = 0.25
"""Warn when an activation reaches this share of `FP16_MAX` (a later prompt may cross it)."""


@dataclass(frozen=True)
class LayerRange:
    """The largest activation one module produced."""

    module: str
    """Module path (dotted, as in the checkpoint)."""
    max_abs: float
    """Largest |input| or |output| over every prompt and position (inf if the fp32 run had a
    NaN or inf)."""

    @property
    def share_of_fp16(self) -> float:
        """max_abs / 65,504."""
        return self.max_abs / FP16_MAX


@dataclass(frozen=True)
class RangeReport:
    """Every module's range, and which ones overflow or come near fp16's limit."""

    layers: tuple[LayerRange, ...]
    """Per module, in `named_modules` order."""
    prompts: int
    """Prompts run."""

    @property
    def overflowing(self) -> tuple[LayerRange, ...]:
        """Modules whose output reaches past float16's range (or is not finite)."""
        return tuple(r for r in self.layers if not r.max_abs < FP16_MAX)

    @property
    def near_limit(self) -> tuple[LayerRange, ...]:
        """Modules within range but past `HEADROOM` of it."""
        return tuple(r for r in self.layers if HEADROOM * FP16_MAX <= r.max_abs < FP16_MAX)

    @property
    def largest(self) -> LayerRange:
        """The module with the largest activation."""
        return max(self.layers, key=lambda r: r.max_abs if np.isfinite(r.max_abs) else np.inf)

    def table(self, limit: int = 8) -> str:
        """The `limit` largest activations against the fp16 range."""
        ranked = sorted(self.layers, key=lambda r: -r.max_abs if np.isfinite(r.max_abs) else -1e309)
        lines = [f"{'module':<60} {'max|x|':>12} {'of fp16':>8}"]
        for r in ranked[:limit]:
            flag = "  OVERFLOW" if r in self.overflowing else ""
            lines.append(f"{r.module:<60} {r.max_abs:>12.4g} {r.share_of_fp16:>8.2%}{flag}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Summary for the manifest: the limit, the largest, the overflowing and near ones."""
        return {
            "fp16_max": FP16_MAX,
            "prompts": self.prompts,
            "largest": asdict(self.largest),
            "overflowing": [asdict(r) for r in self.overflowing],
            "near_limit": [asdict(r) for r in self.near_limit],
            "layers": len(self.layers),
        }


def activation_ranges(model: nn.Module, prompts: Sequence[NDArray[np.int64]]) -> RangeReport:
    """Run `model` (fp32) on each prompt's token ids (text only) and record, per module, the
    largest |input| or |output| (every float tensor among its positional inputs and outputs)."""
    if not prompts:
        raise ValueError("activation_ranges needs at least one prompt")
    maxima: dict[str, float] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            outputs = output if isinstance(output, tuple) else (output,)
            for value in (*args, *outputs):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
                    seen = float(value.detach().abs().max())
                    if np.isnan(seen):
                        seen = float("inf")
                    maxima[name] = max(maxima.get(name, 0.0), seen)

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if n]
    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    try:
        with torch.no_grad():
            for ids in prompts:
                model(input_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)[None, :]))
    finally:
        for handle in handles:
            handle.remove()
    layers = tuple(LayerRange(n, maxima[n]) for n, _ in leaves if n in maxima)
    return RangeReport(layers=layers, prompts=len(prompts))
