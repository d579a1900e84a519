"""Human-only baselines equal hand computations on a three-country fixture."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import pytest

from cvs_evaluator.baselines import (
    country_pair_similarities,
    others_pooled_baseline,
    section_baselines,
    share_matrices,
    uniform_baseline,
)


def hand_similarity(human: list[float], model: list[float]) -> float:
    """1 − sqrt of the mean KL divergence of the two normalised vectors to their midpoint."""
    p = [x / sum(human) for x in human]
    q = [x / sum(model) for x in model]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(u: list[float]) -> float:
        return sum(a * math.log(a / b) for a, b in zip(u, m, strict=True) if a > 0)

    return 1 - math.sqrt((kl(p) + kl(q)) / 2)


# C did not ask Q2; only A asked Q3; Q9 is not in the question bank.
SHARES = {
    ("A", "Q1"): [0.5, 0.5],
    ("B", "Q1"): [0.9, 0.1],
    ("C", "Q1"): [0.2, 0.8],
    ("A", "Q2"): [0.2, 0.3, 0.5],
    ("B", "Q2"): [0.6, 0.2, 0.2],
    ("A", "Q3"): [1.0, 0.0],
    ("A", "Q9"): [0.3, 0.7],
    ("B", "Q9"): [0.6, 0.4],
}


def share_table(shares: dict[tuple[str, str], list[float]] = SHARES) -> pd.DataFrame:
    rows = [
        (country, question, option, share, 100, True)
        for (country, question), values in shares.items()
        for option, share in enumerate(values, start=1)
    ]
    table = pd.DataFrame(rows, columns=["country", "question", "option", "share", "n", "weighted"])
    return table.sort_values(["country", "question", "option"], ignore_index=True)


@dataclass(frozen=True)
class FakeQuestion:
    section: str


@dataclass(frozen=True)
class FakeBank:
    questions: dict[str, FakeQuestion]
    sections: list[str]


BANK = FakeBank(
    questions={"Q1": FakeQuestion("S1"), "Q2": FakeQuestion("S1"), "Q3": FakeQuestion("S2")},
    sections=["S2", "S0", "S1"],  # questionnaire order, not alphabetical; S0 has no questions
)


def value(table: pd.DataFrame, **keys: str) -> pd.Series:
    match = pd.Series(True, index=table.index)
    for column, wanted in keys.items():
        match &= table[column] == wanted
    assert match.sum() == 1, f"{keys}: {match.sum()} rows"
    return table.loc[match].iloc[0]


def test_uniform_baseline() -> None:
    result = uniform_baseline(share_table())
    assert len(result) == len(SHARES)
    assert value(result, country="A", question="Q1")["similarity"] == pytest.approx(1.0, abs=1e-12)
    assert value(result, country="A", question="Q2")["similarity"] == pytest.approx(
        hand_similarity([0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]), abs=1e-12
    )
    assert value(result, country="A", question="Q3")["similarity"] == pytest.approx(
        hand_similarity([1.0, 0.0], [0.5, 0.5]), abs=1e-12
    )


def test_others_pooled_baseline_leaves_the_target_out_and_weighs_countries_equally() -> None:
    result = others_pooled_baseline(share_table())
    a_q1 = value(result, country="A", question="Q1")
    assert a_q1["similarity"] == pytest.approx(hand_similarity([0.5, 0.5], [0.55, 0.45]), abs=1e-12)
    assert a_q1["n_others"] == 2
    c_q1 = value(result, country="C", question="Q1")
    assert c_q1["similarity"] == pytest.approx(hand_similarity([0.2, 0.8], [0.7, 0.3]), abs=1e-12)
    b_q2 = value(result, country="B", question="Q2")  # C did not ask Q2: A alone is the pool
    assert b_q2["similarity"] == pytest.approx(
        hand_similarity([0.6, 0.2, 0.2], [0.2, 0.3, 0.5]), abs=1e-12
    )
    assert b_q2["n_others"] == 1
    assert result.loc[result["question"] == "Q3"].empty  # nobody else asked Q3


def test_country_pairs_cover_every_ordered_pair_that_asked_a_question() -> None:
    result = country_pair_similarities(share_table())
    # Q1: 3 countries → 6 ordered pairs; Q2 and Q9: 2 each; Q3: none.
    assert len(result) == 6 + 2 + 2
    a_as_c = value(result, question="Q1", country="C", other="A")
    assert a_as_c["similarity"] == pytest.approx(hand_similarity([0.2, 0.8], [0.5, 0.5]), abs=1e-12)
    b_as_c = value(result, question="Q1", country="C", other="B")
    assert b_as_c["similarity"] == pytest.approx(hand_similarity([0.2, 0.8], [0.9, 0.1]), abs=1e-12)
    assert not (result["country"] == result["other"]).any()


def test_section_baselines_per_target_and_section() -> None:
    result = section_baselines(share_table(), BANK, ["C", "A"])
    a1, a2 = [0.5, 0.5], [0.2, 0.3, 0.5]
    b1, b2 = [0.9, 0.1], [0.6, 0.2, 0.2]
    c1 = [0.2, 0.8]
    b_for_a = (hand_similarity(a1, b1) + hand_similarity(a2, b2)) / 2  # over Q1 and Q2
    # C's answers score higher on Q1 than B's over Q1 and Q2, but C did not ask Q2: it can't
    # be A's best other country, and in mean_other it counts for Q1 only.
    assert hand_similarity(a1, c1) > b_for_a
    mean_for_a = (
        (hand_similarity(a1, b1) + hand_similarity(a1, c1)) / 2 + hand_similarity(a2, b2)
    ) / 2
    expected = [
        ("C", "S1", "uniform", hand_similarity(c1, [0.5, 0.5]), 1, ""),
        ("C", "S1", "others_pooled", hand_similarity(c1, [0.7, 0.3]), 1, ""),
        ("C", "S1", "best_other", hand_similarity(c1, a1), 1, "A"),
        ("C", "S1", "mean_other", (hand_similarity(c1, a1) + hand_similarity(c1, b1)) / 2, 1, ""),
        ("A", "S2", "uniform", hand_similarity([1.0, 0.0], [0.5, 0.5]), 1, ""),
        ("A", "S1", "uniform", (1.0 + hand_similarity(a2, [1 / 3] * 3)) / 2, 2, ""),
        (
            "A",
            "S1",
            "others_pooled",
            (hand_similarity(a1, [0.55, 0.45]) + hand_similarity(a2, b2)) / 2,
            2,
            "",
        ),
        ("A", "S1", "best_other", b_for_a, 2, "B"),
        ("A", "S1", "mean_other", mean_for_a, 2, ""),
    ]
    assert list(result.columns) == [
        "country",
        "section",
        "baseline",
        "similarity",
        "n_questions",
        "other",
    ]
    assert len(result) == len(expected)
    for row, (country, section, baseline, similarity, n_questions, other) in zip(
        result.itertuples(index=False), expected, strict=True
    ):
        assert (row.country, row.section, row.baseline) == (country, section, baseline)
        assert row.similarity == pytest.approx(similarity, abs=1e-12), (country, section, baseline)
        assert (row.n_questions, row.other) == (n_questions, other), (country, section, baseline)


def test_section_baselines_reject_a_country_without_answers() -> None:
    with pytest.raises(ValueError, match=r"no answers .* country\(ies\) \['FRA'\]"):
        section_baselines(share_table(), BANK, ["A", "FRA"])


def test_section_baselines_reject_a_country_with_only_questions_outside_the_bank() -> None:
    shares = {**SHARES, ("D", "Q9"): [0.5, 0.5]}
    with pytest.raises(ValueError, match=r"\['D'\]"):
        section_baselines(share_table(shares), BANK, ["D"])


def test_share_matrices_reject_countries_that_disagree_on_options() -> None:
    table = share_table()
    extra = pd.DataFrame(
        [("B", "Q1", 3, 0.0, 100, True)],
        columns=["country", "question", "option", "share", "n", "weighted"],
    )
    with pytest.raises(ValueError, match=r"question Q1 country A lacks option code\(s\) \[3\]"):
        share_matrices(pd.concat([table, extra], ignore_index=True))


def test_baselines_reject_shares_not_summing_to_one() -> None:
    table = share_table()
    table.loc[0, "share"] = 0.9
    with pytest.raises(ValueError, match="sum to"):
        uniform_baseline(table)
