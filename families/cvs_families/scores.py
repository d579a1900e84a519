"""What scoring returns: option log-probs at the answer position, the same for every engine.

The PyTorch reference scorer and every runtime engine return `OptionScores`, so parity checks and
the result store compare like with like. Everything here is numpy; it lives with the families,
the lowest layer, so the reference scorer and the runtime share it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

TOP_K = 20
"""The top-k variant keeps only option letters among the k most likely next tokens."""


@dataclass(frozen=True)
class OptionScores:
    """Scores of one item: a prompt ending right before the option letter."""

    option_logprobs: NDArray[np.float64]
    """(options,) log-softmax over the whole vocabulary at the answer position, per letter."""
    topk_token_ids: NDArray[np.int64]
    """(TOP_K,) the most likely next tokens, most likely first."""

    @property
    def raw_mass(self) -> float:
        """Probability mass the model puts on the option letters together (before renormalising)."""
        return float(np.exp(self.option_logprobs).sum())

    @property
    def distribution(self) -> NDArray[np.float64]:
        """(options,) the option probabilities renormalised over the letters."""
        shifted = np.exp(self.option_logprobs - self.option_logprobs.max())
        return np.asarray(shifted / shifted.sum(), dtype=np.float64)

    def topk_distribution(self, option_token_ids: NDArray[np.int64]) -> NDArray[np.float64]:
        """(options,) renormalised over the letters that are among the top-k tokens; others 0.

        All zeros when no letter is in the top k (the item then has no top-k score).
        """
        present = np.isin(option_token_ids, self.topk_token_ids)
        probs = np.where(present, np.exp(self.option_logprobs), 0.0)
        total = probs.sum()
        return np.asarray(probs / total if total > 0 else probs, dtype=np.float64)


def option_scores_from_logits(
    logits: NDArray[np.floating], option_token_ids: NDArray[np.int64]
) -> OptionScores:
    """Reduce one answer position's logits (vocab,) to `OptionScores`, in float64."""
    row = np.asarray(logits, dtype=np.float64)
    top = row.max()
    logsumexp = top + np.log(np.exp(row - top).sum())
    logprobs = row - logsumexp
    k = min(TOP_K, row.shape[0])
    topk = np.argpartition(-row, k - 1)[:k]
    topk = topk[np.argsort(-row[topk], kind="stable")]
    return OptionScores(
        option_logprobs=logprobs[np.asarray(option_token_ids)],
        topk_token_ids=topk.astype(np.int64),
    )
