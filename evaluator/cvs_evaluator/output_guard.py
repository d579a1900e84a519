"""The degenerate-output guard: an engine whose first batch says nothing is stopped before any
row is stored.

Why this module exists: a damaged engine still runs. With one byte flipped in its weights the
logits came out constant, so every option log-prob was −log(vocab) (−7.62 for a 2048-token
vocabulary), every row was marked `scored`, and the report said 0.752 where the real engine
gives 0.415. Such rows look like any others once stored, so `evaluate.run_evaluation` checks the
first batch a scorer yields before it writes anything: every option log-prob uniform over the
vocabulary, or any NaN/inf, stops the run with one line. Later batches are checked for NaN/inf
only (cheap: a non-finite row is never written).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

UNIFORM_TOLERANCE = 1e-2
"""Nats: an option log-prob within this of −log(vocab) counts as uniform. Constant logits give
−log(vocab) to ~1e-12 (the log-softmax is taken in float64, `cvs_families.scores`), and a
half-precision engine rounds equal logits equally, so damage is well inside 0.01. A working
model is far outside it: the tiny random-weight families are initialised peaked (mean top option
≥ 0.6) and a trained model puts orders of magnitude more than 1/vocab on the answer letters; for
every option of every item of a batch to sit within 1% of 1/vocab (e^0.01) the letters would
have to be no likelier than any other token, everywhere. Measured: the first batch of every
tiny family and of smol lies more than 0.5 nats from uniform at some option
(tests/evaluator/test_output_guard.py), and so does smol's int8-wo onnxruntime engine (8.3)."""


class DegenerateOutputError(ValueError):
    """The scorer's output carries no information (uniform over the vocabulary, NaN or inf):
    the weights are likely damaged. The message is one line naming the engine and the values."""


@dataclass(frozen=True)
class OutputCheck:
    """The check of a run's first scored batch, as recorded in the run's timings."""

    batch_items: int
    """Items in the checked batch."""
    passed: bool
    """Always True when recorded: a failed check stops the run."""
    uniform_logprob: float
    """−log(vocab): every option log-prob of a degenerate engine."""
    max_deviation: float
    """The largest distance (nats) of an option log-prob of the batch from `uniform_logprob`:
    the batch is refused when this is within `tolerance`."""
    tolerance: float = UNIFORM_TOLERANCE
    """`UNIFORM_TOLERANCE` when checked."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for timings.json."""
        return {
            "batch_items": self.batch_items,
            "passed": self.passed,
            "uniform_logprob": self.uniform_logprob,
            "max_deviation": self.max_deviation,
            "tolerance": self.tolerance,
        }


def check_first_batch(
    option_logprobs: Sequence[ArrayLike],
    vocab_size: int,
    *,
    who: str,
    remedy: str,
    item_ids: Sequence[str] = (),
) -> OutputCheck:
    """Check one batch (each item's option log-probs) before it is stored; `DegenerateOutputError`
    when any value is NaN/inf or every value is within `UNIFORM_TOLERANCE` of −log(vocab_size).
    `who` names the engine (`tiny-yi on ort/fp32`), `remedy` says what to run."""
    if vocab_size < 2:
        raise ValueError(f"{who}: vocabulary size {vocab_size} cannot be checked for uniformity")
    values = check_finite(option_logprobs, who=who, remedy=remedy, item_ids=item_ids, first=True)
    uniform = -math.log(vocab_size)
    distance = np.abs(values - uniform)
    if values.size and bool((distance <= UNIFORM_TOLERANCE).all()):
        raise DegenerateOutputError(
            f"{who}: engine output is degenerate: every option log-prob of the first batch "
            f"({len(option_logprobs)} items, {values.size} options) is {float(values.mean()):.3f} "
            f"= log(1/{vocab_size}) (within {UNIFORM_TOLERANCE:g}), uniform over the vocabulary; "
            f"the weights are likely damaged: {remedy}"
        )
    return OutputCheck(
        batch_items=len(option_logprobs),
        passed=True,
        uniform_logprob=uniform,
        max_deviation=float(distance.max()) if values.size else 0.0,
    )


def check_finite(
    option_logprobs: Sequence[ArrayLike],
    *,
    who: str,
    remedy: str,
    item_ids: Sequence[str] = (),
    first: bool = False,
) -> np.ndarray:
    """All option log-probs of a batch, flattened; `DegenerateOutputError` naming the first item
    with a NaN or infinite value."""
    rows = [np.asarray(values, dtype=np.float64).ravel() for values in option_logprobs]
    values = np.concatenate(rows) if rows else np.zeros(0)
    bad = ~np.isfinite(values)
    if bad.any():
        index = next(i for i, row in enumerate(rows) if not np.isfinite(row).all())
        item = f" (item {item_ids[index]})" if index < len(item_ids) else ""
        kinds = sorted({"NaN" if math.isnan(v) else "inf" for v in values[bad]})
        batch = "the first batch" if first else "a batch"
        raise DegenerateOutputError(
            f"{who}: engine output is degenerate: {int(bad.sum())} of {values.size} option "
            f"log-probs of {batch} are {'/'.join(kinds)}{item}; the weights are likely damaged: "
            f"{remedy}"
        )
    return values
