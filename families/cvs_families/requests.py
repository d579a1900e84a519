"""What a scorer is asked, and what an item becomes once its option mass is judged.

A `ScoringRequest` is everything an engine needs for one item and nothing about surveys: token
ids with one image placeholder where the image goes, the image already prepared by the family's
numpy preprocessing, the option letters' token ids, and the group key that tells a prefix cache
which items share their beginning. The PyTorch reference scorer and every runtime engine take the
same requests, so parity checks compare like with like. Numpy only. It lives with the families,
the lowest layer, so the reference scorer here and the runtime above both import it.

`ScoredItem` applies the study's rule that an item whose raw option mass is negligible is kept
(with its mass and a reason) but not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from cvs_families.scores import OptionScores

if TYPE_CHECKING:
    from cvs_families.spec import PreparedImage

MASS_THRESHOLD = 1e-6
"""Default minimum raw option mass: below it an item is kept with a reason but not scored."""


@dataclass(frozen=True, eq=False)
class ScoringRequest:
    """One item to score: a prompt that ends right before the option letter."""

    input_ids: NDArray[np.int64]
    """(tokens,) the prompt, with ONE image placeholder token where the image goes (or none)."""
    image: PreparedImage | None
    """The image, preprocessed by the family's numpy code; None for a text-only prompt."""
    option_token_ids: NDArray[np.int64]
    """(options,) the token id of each option letter at the answer position, in option order."""
    group_key: str
    """Items with the same key share image, condition, country and instructions (a prefix)."""
    prefix_len: int = 0
    """Tokens of `input_ids` the whole group shares, checked to tokenize like the joined prompt;
    0 when unknown. A prefix cache may reuse exactly these tokens."""
    item_id: str = ""
    """The item's key in a result store (question, country, condition, image, template)."""

    def __post_init__(self) -> None:
        ids = np.asarray(self.input_ids)
        options = np.asarray(self.option_token_ids)
        if ids.ndim != 1 or ids.shape[0] == 0 or ids.dtype != np.int64:
            raise ValueError(
                f"input_ids must be a non-empty int64 vector, got {ids.dtype} {ids.shape}"
            )
        if options.ndim != 1 or options.shape[0] == 0 or options.dtype != np.int64:
            raise ValueError(
                f"option_token_ids must be a non-empty int64 vector, got {options.dtype} "
                f"{options.shape}"
            )
        if len(set(options.tolist())) != options.shape[0]:
            raise ValueError(f"option_token_ids repeat a token: {options.tolist()}")
        if not 0 <= self.prefix_len <= ids.shape[0]:
            raise ValueError(f"prefix_len {self.prefix_len} outside 0..{ids.shape[0]}")

    def check_placeholder(self, image_token_id: int) -> None:
        """Raise ValueError unless the prompt holds one placeholder with an image, none without."""
        count = int((self.input_ids == image_token_id).sum())
        expected = 0 if self.image is None else 1
        if count != expected:
            raise ValueError(
                f"request {self.item_id or self.group_key!r}: {count} image placeholder(s) "
                f"(token {image_token_id}) but {expected} expected "
                f"({'no image' if self.image is None else 'one image'})"
            )


@dataclass(frozen=True)
class ScoredItem:
    """One item's scores with the verdict of the raw-mass rule; the mass is always reported."""

    scores: OptionScores
    """The scorer's output for the item."""
    raw_mass: float
    """Probability mass on the option letters together, before renormalising."""
    status: Literal["scored", "low_mass"]
    """`scored`, or `low_mass` when the raw mass is below the threshold (kept, not scored)."""
    reason: str
    """Why the item is not scored; empty when scored."""
    distribution: NDArray[np.float64] | None
    """(options,) renormalised over the letters; None when not scored."""
    topk_distribution: NDArray[np.float64] | None
    """(options,) the top-k variant (letters outside the top k get 0); None when not scored or
    when no letter is among the top k."""


def judge_option_mass(
    scores: OptionScores,
    option_token_ids: NDArray[np.int64],
    threshold: float = MASS_THRESHOLD,
) -> ScoredItem:
    """Apply the raw-mass rule to one item's scores."""
    mass = scores.raw_mass
    if not mass >= threshold:  # also catches NaN
        return ScoredItem(
            scores=scores,
            raw_mass=mass,
            status="low_mass",
            reason=f"raw option mass {mass:.3g} below the threshold {threshold:.3g}",
            distribution=None,
            topk_distribution=None,
        )
    topk = scores.topk_distribution(option_token_ids)
    return ScoredItem(
        scores=scores,
        raw_mass=mass,
        status="scored",
        reason="",
        distribution=scores.distribution,
        topk_distribution=topk if topk.sum() > 0 else None,
    )
