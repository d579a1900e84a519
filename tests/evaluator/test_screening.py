"""Country screening: ranking by summed name log-likelihood, top-k keep rule, accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cvs_evaluator.images import ImageRecord, flag_images, load_images
from cvs_evaluator.prompts import encode_prompt
from cvs_evaluator.screening import (
    SCREENING_ANSWER_PREFIX,
    SCREENING_TEMPLATE_VERSION,
    Candidate,
    candidate_continuations,
    candidates_from_records,
    rank_candidates,
    screen_images,
    screening_prompt,
)
from cvs_families.registry import get_family
from cvs_families.requests import ScoringRequest
from cvs_families.spec import PreparedImage

CANDIDATES = [
    Candidate("BRA", "Brazil"),
    Candidate("MEX", "Mexico"),
    Candidate("NGA", "Nigeria"),
    Candidate("VNM", "Viet Nam"),
]


def _record(image_id: str, country: str) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        path=Path("/unused"),
        country=country,
        country_name=country,
        category="flag",
    )


class _FixedScorer:
    """Returns a given (images, candidates) matrix and records what it was asked."""

    def __init__(self, loglik: NDArray[np.float64]) -> None:
        self.loglik = loglik
        self.requests: list[ScoringRequest] = []
        self.continuations: list[list[int]] = []

    def score_continuations(
        self, requests: Sequence[ScoringRequest], continuations: Sequence[Sequence[int]]
    ) -> NDArray[np.float64]:
        self.requests = list(requests)
        self.continuations = [list(c) for c in continuations]
        return self.loglik


@pytest.fixture(scope="module")
def tiny() -> Any:
    from cvs_families.checkpoint import ensure_checkpoint, load_model

    spec = get_family("tiny-yi")
    return load_model(spec, ensure_checkpoint(spec))


def _prepared(spec: Any, seed: int) -> PreparedImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (30 + 20 * seed, 50, 3), dtype=np.uint8)
    return spec.prepare_image(pixels)


def test_ranking_is_by_log_likelihood_then_code() -> None:
    ranking = rank_candidates(np.array([-3.0, -1.0, -3.0, -0.5]), CANDIDATES)
    assert ranking == [("VNM", -0.5), ("MEX", -1.0), ("BRA", -3.0), ("NGA", -3.0)]


def test_top_k_keep_rule_and_accuracy_by_hand(tiny: Any) -> None:
    spec = tiny.spec
    loglik = np.array(
        [
            [-1.0, -2.0, -3.0, -4.0],  # true BRA: rank 1 → kept
            [-1.0, -2.0, -3.0, -4.0],  # true NGA: rank 3 → kept at k=3, not at k=2
            [-5.0, -2.0, -3.0, -1.0],  # true BRA: rank 4 → dropped
            [-1.0, -1.0, -1.0, -1.0],  # true FRA: not a candidate → not ranked
        ]
    )
    images = [
        (_record("a", "BRA"), _prepared(spec, 0)),
        (_record("b", "NGA"), _prepared(spec, 1)),
        (_record("c", "BRA"), _prepared(spec, 0)),
        (_record("d", "FRA"), _prepared(spec, 2)),
    ]
    scorer = _FixedScorer(loglik)
    result = screen_images(scorer, images, CANDIDATES, tiny.tokenizer, spec, k=3)
    assert [image.rank for image in result.images] == [1, 3, 4, None]
    assert [image.kept for image in result.images] == [True, True, False, False]
    assert result.kept_ids == ["a", "b"]
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.chance == pytest.approx(3 / 4)
    assert result.template_version == SCREENING_TEMPLATE_VERSION
    assert result.images[2].ranking == ("VNM", "MEX", "NGA", "BRA")
    assert result.images[2].loglik == (-1.0, -2.0, -3.0, -5.0)
    strict = screen_images(_FixedScorer(loglik), images, CANDIDATES, tiny.tokenizer, spec, k=2)
    assert strict.accuracy == pytest.approx(1 / 3)
    # One request per image, each holding its image, continuations one per candidate.
    assert all(r.image is image for r, (_, image) in zip(scorer.requests, images, strict=True))
    assert len(scorer.continuations) == 4


def test_bad_screening_arguments_are_errors(tiny: Any) -> None:
    scorer = _FixedScorer(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="k must be"):
        screen_images(scorer, [], CANDIDATES, tiny.tokenizer, tiny.spec, k=0)
    with pytest.raises(ValueError, match="distinct"):
        screen_images(scorer, [], [*CANDIDATES, CANDIDATES[0]], tiny.tokenizer, tiny.spec)


def test_prompt_shows_the_image_first_and_names_no_country(tiny: Any) -> None:
    prompt = screening_prompt(tiny.tokenizer, tiny.spec)
    assert prompt.count(tiny.spec.image_token) == 1
    assert prompt.index(tiny.spec.image_token) < prompt.index("Which country")
    assert prompt.endswith(SCREENING_ANSWER_PREFIX)
    assert not any(c.name in prompt for c in CANDIDATES)


@pytest.mark.parametrize("family", ["tiny-qwen", "smol", "tiny-vicuna"])
def test_candidate_names_continue_the_prompt_tokens(family: str) -> None:
    from transformers import AutoTokenizer

    from cvs_families.checkpoint import ensure_checkpoint

    spec = get_family(family)
    tokenizer = AutoTokenizer.from_pretrained(ensure_checkpoint(spec))
    prompt = screening_prompt(tokenizer, spec)
    names = [*CANDIDATES, Candidate("KOR", "South Korea")]
    continuations = candidate_continuations(tokenizer, prompt, names)
    base = encode_prompt(tokenizer, prompt)
    for candidate, tokens in zip(names, continuations, strict=True):
        assert encode_prompt(tokenizer, f"{prompt} {candidate.name}") == base + tokens
        assert tokenizer.decode(tokens).strip() == candidate.name
    assert len(continuations[-1]) >= 2  # a multi-token name: its log-likelihoods are summed


def test_screening_mechanics_on_a_tiny_family(tiny: Any) -> None:
    """Real flags through the real scorer: every candidate ranked, the matrix mapped right."""
    from cvs_families.reference import ReferenceScorer

    flags = flag_images()
    wanted = {"BRA", "MEX", "NGA", "VNM", "PAK"}
    records = [r for r in flags.records if r.country in wanted]
    source = type(flags)(root=flags.root, records=records, skipped=[])
    loaded, skipped = load_images(source)
    assert skipped == [] and len(loaded) == 5
    images = [(image.record, tiny.spec.prepare_image(image.pixels)) for image in loaded]
    candidates = candidates_from_records(records)
    assert [c.code for c in candidates] == ["BRA", "MEX", "NGA", "PAK", "VNM"]

    class _Recording(ReferenceScorer):
        matrix: NDArray[np.float64]

        def score_continuations(
            self, requests: Sequence[ScoringRequest], continuations: Sequence[Sequence[int]]
        ) -> NDArray[np.float64]:
            self.matrix = super().score_continuations(requests, continuations)
            return self.matrix

    scorer = _Recording(tiny, batch_size=3)
    result = screen_images(scorer, images, candidates, tiny.tokenizer, tiny.spec, k=3)
    assert scorer.matrix.shape == (5, 5) and np.all(scorer.matrix < 0)
    for row, image in enumerate(result.images):
        assert sorted(image.ranking) == [c.code for c in candidates]
        assert list(image.loglik) == sorted(image.loglik, reverse=True)
        by_code = dict(zip(image.ranking, image.loglik, strict=True))
        for column, candidate in enumerate(candidates):
            assert by_code[candidate.code] == scorer.matrix[row, column]
        assert image.kept == (image.rank is not None and image.rank <= 3)
    assert result.accuracy == pytest.approx(np.mean([image.kept for image in result.images]))
    assert result.chance == pytest.approx(3 / 5)
