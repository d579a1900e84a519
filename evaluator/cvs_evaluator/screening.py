"""Country screening: keep an image only if the model can tell which country it comes from.

The study drops images whose true country is not among the model's top-3 guesses (NOTES.md §1).
Here the model is asked "Which country is this image from?" and the answer is begun for it
("This image is from"); every candidate country's name is then scored as a continuation, its
tokens' log-likelihoods summed (multi-token names are summed, not averaged), and the candidates
ranked. An image is kept when its true country ranks in the top k. Accuracy is the fraction of
images kept among those whose true country is a candidate; chance is k / candidates.

The scorer is anything with `score_continuations` (the PyTorch reference has it), so this module
imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from cvs_evaluator.prompts import PromptError, encode_prompt
from cvs_families.requests import ScoringRequest

if TYPE_CHECKING:
    from cvs_evaluator.images import ImageRecord
    from cvs_families.spec import FamilySpec, PreparedImage

SCREENING_TEMPLATE_VERSION = "cvs-screen-v1"
"""Changes whenever the screening wording changes; reported with every screening result."""
SCREENING_QUESTION = "Which country is this image from? Answer with the name of the country."
SCREENING_ANSWER_PREFIX = "This image is from"
"""Begins the answer; each candidate's name follows after a space."""
DEFAULT_TOP_K = 3


class ContinuationScorer(Protocol):
    """What screening needs of a scorer."""

    def score_continuations(
        self, requests: Sequence[ScoringRequest], continuations: Sequence[Sequence[int]]
    ) -> NDArray[np.float64]: ...


@dataclass(frozen=True)
class Candidate:
    """A country the model may name."""

    code: str
    """The code images carry in `ImageRecord.country` (ISO3 where known)."""
    name: str
    """The English name scored as the continuation."""


@dataclass(frozen=True)
class ScreenedImage:
    """One image's ranking of the candidates."""

    image_id: str
    """The image's id."""
    country: str
    """Its true country."""
    ranking: tuple[str, ...]
    """Candidate codes, most likely first (ties broken by code)."""
    loglik: tuple[float, ...]
    """Summed log-likelihood of each candidate's name, in `ranking` order."""
    rank: int | None
    """1-based rank of the true country; None when it is not a candidate."""
    kept: bool
    """True when the true country ranks within the top k."""


@dataclass(frozen=True)
class ScreeningResult:
    """Every image's ranking, which images are kept, and the accuracy."""

    images: list[ScreenedImage]
    """In input order."""
    k: int
    """An image is kept when its true country is among the k most likely candidates."""
    candidates: list[Candidate]
    """The countries ranked."""
    template_version: str
    """`SCREENING_TEMPLATE_VERSION`."""

    @property
    def ranked(self) -> list[ScreenedImage]:
        """Images whose true country is a candidate (the accuracy's denominator)."""
        return [image for image in self.images if image.rank is not None]

    @property
    def kept_ids(self) -> list[str]:
        """Ids of the images kept."""
        return [image.image_id for image in self.images if image.kept]

    @property
    def accuracy(self) -> float:
        """Top-k accuracy over ranked images (NaN when none is)."""
        ranked = self.ranked
        return float(np.mean([image.kept for image in ranked])) if ranked else float("nan")

    @property
    def chance(self) -> float:
        """Top-k accuracy of a uniformly random ranking."""
        return min(1.0, self.k / len(self.candidates))


def candidates_from_records(records: Sequence[ImageRecord]) -> list[Candidate]:
    """The distinct true countries of some images, by code."""
    seen = {record.country: record.country_name for record in records}
    return [Candidate(code, name) for code, name in sorted(seen.items())]


def screening_prompt(tokenizer: Any, spec: FamilySpec) -> str:
    """The screening prompt (image first), through the family's chat template."""
    content = [{"type": "image"}, {"type": "text", "text": SCREENING_QUESTION}]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=spec.chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
    if not isinstance(rendered, str):
        raise PromptError(f"{spec.name}: the chat template did not render to a string")
    separator = "" if rendered[-1:].isspace() else " "
    return rendered + separator + SCREENING_ANSWER_PREFIX


def candidate_continuations(
    tokenizer: Any, prompt: str, candidates: Sequence[Candidate]
) -> list[list[int]]:
    """Token ids of " <name>" after the prompt, per candidate, checked to extend the prompt's own
    tokens (the prompt must tokenize the same with and without the name)."""
    base = encode_prompt(tokenizer, prompt)
    continuations = []
    for candidate in candidates:
        joined = encode_prompt(tokenizer, f"{prompt} {candidate.name}")
        if joined[: len(base)] != base or len(joined) == len(base):
            raise PromptError(
                f"the screening prompt does not tokenize the same before {candidate.name!r}"
            )
        continuations.append(joined[len(base) :])
    return continuations


def screening_request(
    image_id: str,
    prepared: PreparedImage,
    candidate_ids: Sequence[Sequence[int]],
    tokenizer: Any,
    spec: FamilySpec,
) -> ScoringRequest:
    """The screening prompt for one image; its option tokens are the candidates' first tokens."""
    ids = encode_prompt(tokenizer, screening_prompt(tokenizer, spec))
    firsts = sorted({tokens[0] for tokens in candidate_ids})
    request = ScoringRequest(
        input_ids=np.asarray(ids, dtype=np.int64),
        image=prepared,
        option_token_ids=np.asarray(firsts, dtype=np.int64),
        group_key=f"screen:{image_id}",
        item_id=f"{SCREENING_TEMPLATE_VERSION}|{spec.name}|{image_id}",
    )
    request.check_placeholder(spec.image_token_id)
    return request


def rank_candidates(
    loglik: NDArray[np.float64], candidates: Sequence[Candidate]
) -> list[tuple[str, float]]:
    """(code, log-likelihood) most likely first; ties broken by code."""
    order = sorted(range(len(candidates)), key=lambda i: (-float(loglik[i]), candidates[i].code))
    return [(candidates[i].code, float(loglik[i])) for i in order]


def screen_images(
    scorer: ContinuationScorer,
    images: Sequence[tuple[ImageRecord, PreparedImage]],
    candidates: Sequence[Candidate],
    tokenizer: Any,
    spec: FamilySpec,
    k: int = DEFAULT_TOP_K,
) -> ScreeningResult:
    """Rank the candidates for every image and keep those whose true country is in the top k."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len({c.code for c in candidates}) != len(candidates) or not candidates:
        raise ValueError("candidates must be non-empty with distinct codes")
    continuations = candidate_continuations(
        tokenizer, screening_prompt(tokenizer, spec), candidates
    )
    requests = [
        screening_request(record.id, prepared, continuations, tokenizer, spec)
        for record, prepared in images
    ]
    loglik = scorer.score_continuations(requests, continuations) if requests else np.zeros((0, 0))
    screened = []
    for (record, _), row in zip(images, loglik, strict=True):
        ranking = rank_candidates(row, candidates)
        codes = [code for code, _ in ranking]
        rank = codes.index(record.country) + 1 if record.country in codes else None
        screened.append(
            ScreenedImage(
                image_id=record.id,
                country=record.country,
                ranking=tuple(codes),
                loglik=tuple(value for _, value in ranking),
                rank=rank,
                kept=rank is not None and rank <= k,
            )
        )
    return ScreeningResult(
        images=screened,
        k=k,
        candidates=list(candidates),
        template_version=SCREENING_TEMPLATE_VERSION,
    )
