"""Test helper: a decoder's two TensorRT profiles, prefill and continuation, from axis ranges.

The builder takes any number of profiles per part (`TrtBuildOptions.profiles`) and the runtime
picks the first that holds a call's shapes; these two exercise that choice: a prefill (empty
cache, up to `max_context` new tokens) and a continuation (a cache of 1 to `max_context` − 1
tokens, up to `max_suffix` new ones).
"""

from __future__ import annotations

from typing import Any

from cvs_export.trt_build import AxisRange, axis_ranges


def two_phase_ranges(
    spec: Any,
    *,
    max_batch: int,
    max_context: int,
    max_suffix: int,
    max_k: int = 1,
    prefill_batch: int = 1,
) -> list[dict[str, AxisRange]]:
    """[prefill ranges, continuation ranges] of a decoder spec with a cache axis."""
    prefill = axis_ranges(
        spec,
        {"batch": prefill_batch, "seq": max_context, "past": 0, "k": max_k},
        {"batch": prefill_batch, "seq": max(1, max_context // 2), "past": 0, "k": 1},
    )
    continuation = {
        **axis_ranges(spec, {"batch": max_batch, "seq": max_suffix, "past": 0, "k": max_k}),
        "past": AxisRange(1, max(1, (max_context - 1) // 2), max_context - 1),
    }
    return [prefill, continuation]
