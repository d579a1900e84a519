"""How far apart two option distributions are: one definition for every comparison.

The study's metric, the export stage's parity checks and precision verdicts, the evaluator's
engine-against-engine parity report and the benchmark all ask the same questions of two option
distributions: their Jensen–Shannon distance (scipy's `jensenshannon`: natural log, both vectors
normalised, square root of the divergence), whether their most likely option agrees, and how far
apart the option log-probs are. They are answered here once, so a guard added for one is there
for all:

- scipy returns NaN for two (nearly) equal distributions when rounding makes the divergence a
  tiny negative number; that is a distance of 0, which is what the definition gives;
- a distribution with a NaN or infinite entry has no distance: NaN, never a silent 0.

Numpy only at import; scipy is imported on first use (an edge run's cold start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from cvs_families.scores import OptionScores


def js_distance_rows(p: ArrayLike, q: ArrayLike) -> NDArray[np.float64]:
    """Row-wise Jensen–Shannon distance of two (rows, options) arrays → (rows,).

    0 where rounding makes the divergence negative; NaN for a row with a non-finite entry.
    Rows are normalised as scipy does; no other validation (callers that need it, such as
    `cvs_evaluator.metrics.similarity`, check their vectors first).
    """
    from scipy.spatial.distance import jensenshannon  # here, not at import: cold start

    left = np.asarray(p, dtype=np.float64)
    right = np.asarray(q, dtype=np.float64)
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(
            f"need two (rows, options) arrays of one shape, got {left.shape} and {right.shape}"
        )
    finite = np.isfinite(left).all(axis=1) & np.isfinite(right).all(axis=1)  # (rows,)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.asarray(jensenshannon(left, right, axis=1), dtype=np.float64)  # (rows,)
    # NaN from finite rows only comes from √ of a divergence rounded below 0: equal distributions.
    return np.where(finite, np.nan_to_num(distance, nan=0.0), np.nan)


def js_distance(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen–Shannon distance of two distributions over the same options (1-D, same length)."""
    left = np.asarray(p, dtype=np.float64)
    right = np.asarray(q, dtype=np.float64)
    if left.ndim != 1 or left.shape != right.shape:
        raise ValueError(f"need two vectors of one length, got {left.shape} and {right.shape}")
    return float(js_distance_rows(left[None, :], right[None, :])[0])


def top1_agrees(p: ArrayLike, q: ArrayLike) -> bool:
    """Whether the two distributions (or log-prob vectors) have the same most likely option."""
    return int(np.argmax(np.asarray(p))) == int(np.argmax(np.asarray(q)))


@dataclass(frozen=True)
class ScoreAgreement:
    """How one scorer's option scores agree with another's over the same requests."""

    requests: int
    """Requests compared."""
    mean_js: float
    """Mean Jensen–Shannon distance between renormalised option distributions (NaN when any
    score is non-finite)."""
    max_js: float
    """Largest such distance (NaN when any score is non-finite)."""
    top1: float
    """Share of requests whose most likely option agrees."""
    max_logprob_diff: float
    """Largest |Δ option log-prob| (inf when any is non-finite)."""
    mean_logprob_diff: float
    """Mean |Δ option log-prob| (inf when any is non-finite)."""
    finite: bool
    """Every log-prob difference and distance is finite."""


def compare_scores(
    scores: Sequence[OptionScores], reference: Sequence[OptionScores]
) -> ScoreAgreement:
    """Distances, top-1 agreement and log-prob differences of two equally long score lists."""
    if not scores or len(scores) != len(reference):
        raise ValueError(f"need equal, non-empty score lists ({len(scores)} vs {len(reference)})")
    pairs = list(zip(scores, reference, strict=True))
    js = np.array([js_distance(s.distribution, r.distribution) for s, r in pairs])  # (requests,)
    diffs = np.concatenate([np.abs(s.option_logprobs - r.option_logprobs) for s, r in pairs])
    diffs = np.where(np.isfinite(diffs), diffs, np.inf)  # NaN counts as the worst difference
    finite = bool(np.all(np.isfinite(diffs)) and np.all(np.isfinite(js)))
    return ScoreAgreement(
        requests=len(pairs),
        mean_js=float(np.mean(js)) if finite else float("nan"),
        max_js=float(np.max(js)) if finite else float("nan"),
        top1=float(np.mean([top1_agrees(s.option_logprobs, r.option_logprobs) for s, r in pairs])),
        max_logprob_diff=float(diffs.max()),
        mean_logprob_diff=float(diffs.mean()),
        finite=finite,
    )
