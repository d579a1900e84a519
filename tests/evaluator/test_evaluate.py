"""The evaluation loop: question subsets, resumable scoring, alignment beside baselines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cvs_evaluator import evaluate
from cvs_evaluator.metrics import similarity
from cvs_evaluator.questions import QuestionBank, load_question_bank
from cvs_evaluator.results import ResultStore
from cvs_families.registry import get_family
from cvs_families.requests import ScoredItem, ScoringRequest, judge_option_mass
from cvs_families.scores import option_scores_from_logits
from cvs_families.spec import FamilySpec


@pytest.fixture(scope="module")
def bank() -> QuestionBank:
    return load_question_bank()


@pytest.fixture(scope="module")
def tiny_yi() -> tuple[FamilySpec, Any]:
    from transformers import AutoTokenizer

    from cvs_families.checkpoint import ensure_checkpoint

    spec = get_family("tiny-yi")
    return spec, AutoTokenizer.from_pretrained(ensure_checkpoint(spec))


class HashScorer:
    """A fake engine: logits that depend only on the request's tokens, never on the batch."""

    def __init__(self, vocab: int, fail_after_calls: int | None = None) -> None:
        self.vocab = vocab
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def __call__(self, requests: Sequence[ScoringRequest]) -> list[ScoredItem]:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("engine died")
        self.calls += 1
        out = []
        for request in requests:
            seed = int(np.asarray(request.input_ids).sum()) % 2**32
            logits = np.random.default_rng(seed).normal(0, 3, self.vocab)
            scores = option_scores_from_logits(logits, request.option_token_ids)
            out.append(judge_option_mass(scores, request.option_token_ids, threshold=0.0))
        return out


def test_default_subset_spreads_over_every_section_with_questions(bank: QuestionBank) -> None:
    chosen = evaluate.select_questions(bank, per_section=2, only=())
    sections = [q.section for q in chosen]
    with_questions = [name for name, qs in bank.by_section().items() if qs]
    assert sorted(set(sections)) == sorted(with_questions)
    for name in with_questions:
        in_section = bank.by_section()[name]
        picked = [q for q in chosen if q.section == name]
        assert len(picked) == min(2, len(in_section))
        if len(in_section) >= 2:  # first and last of the section: spread, not the first two
            assert picked[0] == in_section[0] and picked[-1] == in_section[-1]


def test_all_questions_and_explicit_ids(bank: QuestionBank) -> None:
    assert len(evaluate.select_questions(bank, per_section=None)) == 239
    assert [q.id for q in evaluate.select_questions(bank, per_section=2, only=["Q58", "Q57"])] == [
        "Q58",
        "Q57",
    ]
    with pytest.raises(ValueError, match="Q999"):
        evaluate.select_questions(bank, per_section=2, only=["Q57", "Q999"])


def _settings(batch_size: int) -> evaluate.EvalSettings:
    return evaluate.EvalSettings(
        model="tiny-yi",
        engine="torch",
        precision="fp32",
        conditions=("text",),
        countries=("DEU", "JPN"),
        batch_size=batch_size,
    )


def _run(
    tmp: Path, batch_size: int, scorer: HashScorer, tiny: tuple[FamilySpec, Any], bank: QuestionBank
) -> ResultStore:
    spec, tokenizer = tiny
    settings = _settings(batch_size)
    questions = evaluate.select_questions(bank, per_section=1)
    items, _ = evaluate.build_items(settings, questions, tokenizer, spec)
    store = ResultStore(tmp / "store.jsonl")
    evaluate.run_evaluation(
        settings,
        items,
        store,
        scorer=evaluate.in_batches(scorer, batch_size),
        tokenizer=tokenizer,
        spec=spec,
        prepare_image=lambda image_id: pytest.fail("no images in the text condition"),
        progress=False,
        row_identity=evaluate.row_identity("checkpoint", "manifest"),
    )
    return store


def _by_item(store: ResultStore) -> pd.DataFrame:
    return store.frame().set_index("item_id").sort_index()


def test_an_interrupted_run_resumes_to_the_same_results(
    tmp_path: Path, tiny_yi: tuple[FamilySpec, Any], bank: QuestionBank
) -> None:
    vocab = tiny_yi[0].vocab_size
    whole = _by_item(_run(tmp_path / "whole", 5, HashScorer(vocab), tiny_yi, bank))
    with pytest.raises(RuntimeError, match="engine died"):
        _run(tmp_path / "cut", 3, HashScorer(vocab, fail_after_calls=2), tiny_yi, bank)
    partial = ResultStore(tmp_path / "cut" / "store.jsonl")
    assert len(list(partial.rows())) == 6  # the two batches that finished were kept
    resumed = _by_item(_run(tmp_path / "cut", 4, HashScorer(vocab), tiny_yi, bank))
    assert len(resumed) == len(whole) == 2 * 12  # 12 sections with questions × 2 countries
    pd.testing.assert_frame_equal(resumed, whole)


def test_alignment_uses_the_asked_questions_for_model_and_baselines(
    tmp_path: Path, tiny_yi: tuple[FamilySpec, Any], bank: QuestionBank
) -> None:
    from cvs_evaluator.wvs import load_study_shares

    store = _run(tmp_path, 8, HashScorer(tiny_yi[0].vocab_size), tiny_yi, bank)
    rows = store.frame()
    shares = load_study_shares()
    tables = evaluate.alignment_tables(rows, shares, bank)
    # By hand: one item's similarity, and one section mean of the uniform baseline.
    row = rows.iloc[0]
    human = shares[(shares["country"] == row["country"]) & (shares["question"] == row["question"])]
    human = human.set_index("option").loc[row["option_codes"], "share"].to_numpy()
    item = tables.items.set_index(["country", "question"]).loc[(row["country"], row["question"])]
    assert item["similarity"] == pytest.approx(similarity(human, np.array(row["distribution"])))
    section = tables.sections.set_index(["country", "section"]).loc[
        (row["country"], row["section"])
    ]
    uniform = np.full(len(human), 1 / len(human))
    assert section["uniform"] == pytest.approx(similarity(human, uniform))
    assert section["n_questions"] == 1


def test_items_a_country_was_not_asked_are_left_out_and_counted(
    tiny_yi: tuple[FamilySpec, Any], bank: QuestionBank
) -> None:
    spec, tokenizer = tiny_yi
    questions = [bank.questions["Q57"], bank.questions["Q58"]]
    asked = {("DEU", "Q57"), ("DEU", "Q58"), ("JPN", "Q58")}
    items, notes = evaluate.build_items(_settings(8), questions, tokenizer, spec, asked=asked)
    assert sorted((i.country, i.question_id) for i in items) == sorted(asked)
    assert notes == [
        "1 item(s) left out: their country's survey did not ask the question (JPN Q57)"
    ]


def test_condition_effects_by_hand(bank: QuestionBank) -> None:
    q1, q2 = "Q57", "Q58"  # the same section
    rows = []
    for country, text, image in (("DEU", (0.5, 0.7), (0.6, 0.9)), ("JPN", (0.4, 0.8), (0.2, 0.5))):
        for question, a, b in zip((q1, q2), text, image, strict=True):
            base = {"model": "m", "country": country, "question": question, "n_options": 2}
            rows.append({**base, "condition": "text", "image": "", "similarity": a})
            rows.append({**base, "condition": "image", "image": "x.png", "similarity": b})
    rows.append({**rows[-1], "country": "BRA"})  # scored under image only: left unpaired
    effects = evaluate.condition_effects(pd.DataFrame(rows), bank, "text", "image")
    section = effects.set_index("section").loc[bank.questions[q1].section]
    text_mean, image_mean = (0.5 + 0.7 + 0.4 + 0.8) / 4, (0.6 + 0.9 + 0.2 + 0.5) / 4
    assert section["n_pairs"] == 4
    assert section["percent_change"] == pytest.approx((image_mean - text_mean) / text_mean * 100)
    # Differences +1, +2, −2, −3 (tenths), sum −2. The 16 sign patterns give the sums
    # ±8, ±6, ±4, ±4, ±2, ±2, ±2, 0, 0: |sum| ≥ 2 in 14 of 16 (an exact test).
    assert section["p_value"] == pytest.approx(14 / 16)
