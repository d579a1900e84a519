"""The degenerate-output guard: an engine whose first batch is uniform over the vocabulary, NaN
or inf is stopped with one line before anything is stored; working engines pass, and the run
records the check."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cvs_evaluator import evaluate
from cvs_evaluator.cli_eval import main
from cvs_evaluator.output_guard import (
    UNIFORM_TOLERANCE,
    DegenerateOutputError,
    check_first_batch,
)
from cvs_evaluator.questions import QuestionBank, load_question_bank
from cvs_evaluator.results import ResultStore
from cvs_families.registry import get_family
from cvs_families.requests import ScoredItem, ScoringRequest, judge_option_mass
from cvs_families.scores import option_scores_from_logits
from cvs_families.spec import FamilySpec

VOCAB = 2048
UNIFORM = -math.log(VOCAB)  # −7.62: what a damaged engine gave for every option


@pytest.fixture(scope="module")
def bank() -> QuestionBank:
    return load_question_bank()


@pytest.fixture(scope="module")
def tiny_yi() -> tuple[FamilySpec, Any]:
    from transformers import AutoTokenizer

    from cvs_families.checkpoint import ensure_checkpoint

    spec = get_family("tiny-yi")
    return spec, AutoTokenizer.from_pretrained(ensure_checkpoint(spec))


# --------------------------------------------------------------------------- the check itself


def test_uniform_log_probs_are_refused_naming_engine_value_and_vocabulary() -> None:
    batch = [np.full(4, UNIFORM), np.full(3, UNIFORM + UNIFORM_TOLERANCE / 2)]
    with pytest.raises(DegenerateOutputError) as raised:
        check_first_batch(batch, VOCAB, who="tiny-yi on ort/fp32", remedy="run `verify X`")
    message = str(raised.value)
    assert "tiny-yi on ort/fp32" in message and "-7.62" in message and "2048" in message
    assert "uniform" in message and "verify X" in message and "\n" not in message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_log_prob_is_refused_naming_the_item(bad: float) -> None:
    batch = [np.array([-1.0, -2.0]), np.array([-0.5, bad, -3.0])]
    with pytest.raises(DegenerateOutputError) as raised:
        check_first_batch(batch, VOCAB, who="m on e/p", remedy="r", item_ids=["one", "two"])
    message = str(raised.value)
    assert "1 of 5" in message and "(item two)" in message
    assert ("NaN" if math.isnan(bad) else "inf") in message


def test_one_informative_option_is_enough_to_pass() -> None:
    batch = [np.full(4, UNIFORM), np.array([UNIFORM, UNIFORM + 3 * UNIFORM_TOLERANCE])]
    check = check_first_batch(batch, VOCAB, who="m", remedy="r")
    assert check.passed and check.batch_items == 2
    assert check.uniform_logprob == pytest.approx(UNIFORM)
    assert check.max_deviation == pytest.approx(3 * UNIFORM_TOLERANCE)


# --------------------------------------------------------------------------- in the evaluation


class LogitScorer:
    """A fake engine: `logits(call, row)` gives each request's answer-position logits."""

    def __init__(self, logits: Callable[[int, int], np.ndarray]) -> None:
        self.logits = logits
        self.calls = 0

    def __call__(self, requests: Sequence[ScoringRequest]) -> list[ScoredItem]:
        out = []
        for row, request in enumerate(requests):
            scores = option_scores_from_logits(
                self.logits(self.calls, row), request.option_token_ids
            )
            out.append(judge_option_mass(scores, request.option_token_ids, threshold=0.0))
        self.calls += 1
        return out


def _evaluate(
    tmp: Path, scorer: LogitScorer, tiny: tuple[FamilySpec, Any], bank: QuestionBank
) -> tuple[ResultStore, evaluate.ScoringLog]:
    spec, tokenizer = tiny
    settings = evaluate.EvalSettings(
        model="tiny-yi",
        engine="ort",
        precision="fp32",
        conditions=("text",),
        countries=("DEU", "JPN"),
        batch_size=4,
    )
    items, _ = evaluate.build_items(
        settings, evaluate.select_questions(bank, per_section=1), tokenizer, spec
    )
    store = ResultStore(tmp / "store.jsonl")
    log = evaluate.ScoringLog()
    evaluate.run_evaluation(
        settings,
        items,
        store,
        scorer=evaluate.in_batches(scorer, settings.batch_size),
        tokenizer=tokenizer,
        spec=spec,
        prepare_image=lambda image_id: pytest.fail("no images in the text condition"),
        progress=False,
        row_identity=evaluate.row_identity("checkpoint", "manifest"),
        log=log,
        engine_folder=tmp / "engines" / "tiny-yi" / "fp32",
    )
    return store, log


def _random(call: int, row: int) -> np.ndarray:
    return np.random.default_rng(1000 * call + row).normal(0, 3, VOCAB)


def test_an_engine_with_constant_logits_is_stopped_before_anything_is_stored(
    tmp_path: Path, tiny_yi: tuple[FamilySpec, Any], bank: QuestionBank
) -> None:
    assert tiny_yi[0].vocab_size == VOCAB  # the uniform value follows from the spec's vocabulary
    with pytest.raises(DegenerateOutputError) as raised:
        _evaluate(tmp_path, LogitScorer(lambda call, row: np.zeros(VOCAB)), tiny_yi, bank)
    message = str(raised.value)
    assert "tiny-yi on ort/fp32" in message and "log(1/2048)" in message
    assert f"cvs-export verify {tmp_path / 'engines' / 'tiny-yi' / 'fp32'}" in message
    assert not list(ResultStore(tmp_path / "store.jsonl").rows())


def test_an_engine_giving_nan_is_stopped_before_anything_is_stored(
    tmp_path: Path, tiny_yi: tuple[FamilySpec, Any], bank: QuestionBank
) -> None:
    scorer = LogitScorer(lambda call, row: np.full(VOCAB, np.nan))
    with pytest.raises(DegenerateOutputError, match="NaN"):
        _evaluate(tmp_path, scorer, tiny_yi, bank)
    assert not list(ResultStore(tmp_path / "store.jsonl").rows())


def test_nan_in_a_later_batch_is_never_stored(
    tmp_path: Path, tiny_yi: tuple[FamilySpec, Any], bank: QuestionBank
) -> None:
    def logits(call: int, row: int) -> np.ndarray:
        return np.full(VOCAB, np.nan) if call == 2 else _random(call, row)

    with pytest.raises(DegenerateOutputError, match="NaN"):
        _evaluate(tmp_path, LogitScorer(logits), tiny_yi, bank)
    rows = list(ResultStore(tmp_path / "store.jsonl").rows())
    assert len(rows) == 2 * 4  # the two batches before it, four items each
    assert all(np.isfinite(r["option_logprobs"]).all() for r in rows)


def test_a_working_engine_passes_and_the_check_is_logged(
    tmp_path: Path, tiny_yi: tuple[FamilySpec, Any], bank: QuestionBank
) -> None:
    store, log = _evaluate(tmp_path, LogitScorer(_random), tiny_yi, bank)
    assert len(list(store.rows())) == 2 * 12  # 12 sections with questions × 2 countries
    assert log.output_check is not None
    assert log.output_check.passed and log.output_check.batch_items == 4
    assert log.output_check.to_json()["tolerance"] == UNIFORM_TOLERANCE


# --------------------------------------------------------------------------- real models


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-yi", "tiny-vicuna", "tiny-qwen", "smol"])
def test_real_models_are_far_from_the_guard(
    family: str, tmp_path: Path, bank: QuestionBank
) -> None:
    """The random-weight stand-ins and smol (the real SmolLM2) on the PyTorch reference: every
    first batch passes, with an option log-prob many tolerances away from uniform."""
    from cvs_evaluator.scorers import torch_scorer

    spec = get_family(family)
    scorer = torch_scorer(spec, None, batch_size=4)
    settings = evaluate.EvalSettings(
        model=family,
        engine="torch",
        precision="fp32",
        conditions=("text",),
        countries=("DEU", "JPN"),
        batch_size=4,
    )
    questions = evaluate.select_questions(bank, per_section=None, only=["Q57", "Q58"])
    items, _ = evaluate.build_items(settings, questions, scorer.tokenizer, spec)
    log = evaluate.ScoringLog()
    evaluate.run_evaluation(
        settings,
        items,
        ResultStore(tmp_path / "store.jsonl"),
        scorer=scorer.stream,
        tokenizer=scorer.tokenizer,
        spec=spec,
        prepare_image=lambda image_id: pytest.fail("no images in the text condition"),
        progress=False,
        row_identity=evaluate.row_identity("checkpoint", ""),
        log=log,
    )
    assert log.output_check is not None and log.output_check.passed
    assert log.output_check.uniform_logprob == pytest.approx(-math.log(spec.vocab_size))
    assert log.output_check.max_deviation > 50 * UNIFORM_TOLERANCE


@pytest.mark.slow
def test_the_cli_refuses_a_degenerate_engine_in_one_line_and_records_a_passing_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PyTorch reference of tiny-yi, its batches replaced by constant logits: one `Error:`
    line and an empty store. The real reference: the check in timings.json and the report."""
    from cvs_evaluator import run_scoring
    from cvs_evaluator.scorers import RunScorer

    args = [
        "--model", "tiny-yi", "--engine", "torch", "--country", "DEU", "--question", "Q57",
        "--question", "Q58", "--no-progress", "--compare-to", "none",
    ]  # fmt: skip
    real = run_scoring.open_scorer

    def broken(*given: Any) -> RunScorer:
        scorer = real(*given)
        stream = scorer.stream
        assert stream is not None  # a scorer opened in this process

        def uniform(requests: Sequence[ScoringRequest]) -> Any:
            for indices, _ in stream(requests):
                yield (
                    indices,
                    LogitScorer(lambda c, r: np.zeros(VOCAB))([requests[i] for i in indices]),
                )

        scorer.stream = uniform
        return scorer

    monkeypatch.setattr(run_scoring, "open_scorer", broken)
    out = tmp_path / "broken"
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "degenerate" in errors[0] and "log(1/2048)" in errors[0]
    assert "Traceback" not in result.output
    assert not list(ResultStore(out / "store.jsonl").rows())

    monkeypatch.setattr(run_scoring, "open_scorer", real)
    out = tmp_path / "working"
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    check = json.loads((out / "timings.json").read_text())["run"]["output_check"]
    assert check["passed"] is True and 1 <= check["batch_items"] <= 2  # two items in the run
    assert check["max_deviation"] > UNIFORM_TOLERANCE
    assert json.loads((out / "latency.json").read_text())["run"]["output_check"] == check
    assert f"passed on {check['batch_items']} item(s)" in (out / "alignment.html").read_text()
