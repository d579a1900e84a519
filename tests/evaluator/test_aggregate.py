"""Aggregates equal hand computations on a small question table the tests build."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.aggregate import (
    ALL_SECTIONS,
    bootstrap_section_means,
    marginal_similarities,
    permutation_tests,
    question_similarities,
    section_means,
)

SECTION_OF = {"Q1": "S1", "Q2": "S1", "Q3": "S2"}
INCOME_OF: dict[str, str | None] = {"A": "High", "B": "Low", "C": None, "D": "High"}
# (condition, country) → {question: similarity}. B has no image score for Q3, C never asked Q3.
SCORES = {
    ("text", "A"): {"Q1": 0.60, "Q2": 0.70, "Q3": 0.80},
    ("text", "B"): {"Q1": 0.50, "Q2": 0.90, "Q3": 0.40},
    ("text", "C"): {"Q1": 0.30, "Q2": 0.20},
    ("text", "D"): {"Q1": 0.80, "Q2": 0.60, "Q3": 0.50},
    ("image", "A"): {"Q1": 0.66, "Q2": 0.63, "Q3": 0.88},
    ("image", "B"): {"Q1": 0.45, "Q2": 0.99},
    ("image", "C"): {"Q1": 0.33, "Q2": 0.30},
    ("image", "D"): {"Q1": 0.70, "Q2": 0.70, "Q3": 0.60},
}


def question_table(scores: dict[tuple[str, str], dict[str, float]] = SCORES) -> pd.DataFrame:
    rows = [
        ("m", condition, country, question, value)
        for (condition, country), by_question in scores.items()
        for question, value in by_question.items()
    ]
    return pd.DataFrame(rows, columns=["model", "condition", "country", "question", "similarity"])


def lookup(table: pd.DataFrame, **keys: str) -> pd.Series:
    match = np.ones(len(table), dtype=bool)
    for column, value in keys.items():
        match &= (table[column] == value).to_numpy()
    assert match.sum() == 1, f"{keys}: {match.sum()} rows"
    return table.loc[match].iloc[0]


# --- per-question tables ---------------------------------------------------------------------


def test_question_similarities_average_over_images() -> None:
    items = pd.DataFrame(
        [
            ("m", "image", "A", "Q1", "i1", 0.5),
            ("m", "image", "A", "Q1", "i2", 0.7),
            ("m", "image", "A", "Q1", "i3", 0.9),
            ("m", "text", "A", "Q1", "", 0.4),
        ],
        columns=["model", "condition", "country", "question", "image", "similarity"],
    )
    result = question_similarities(items)
    assert len(result) == 2
    image = lookup(result, condition="image")
    assert image["similarity"] == pytest.approx((0.5 + 0.7 + 0.9) / 3, abs=1e-15)
    assert image["n_images"] == 3
    assert lookup(result, condition="text")["similarity"] == 0.4


def marginal_fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    human = pd.DataFrame(
        [("A", "Q1", 1, 0.5), ("A", "Q1", 2, 0.5)],
        columns=["country", "question", "option", "share"],
    )
    model = pd.DataFrame(
        [
            ("m", "image", "A", "Q1", "i1", 1, 0.2),
            ("m", "image", "A", "Q1", "i1", 2, 0.8),
            ("m", "image", "A", "Q1", "i2", 2, 0.4),
            ("m", "image", "A", "Q1", "i2", 1, 0.6),
            ("m", "image", "A", "Q1", "i3", 1, 1.0),  # unnormalised: counts as (0.5, 0.5)
            ("m", "image", "A", "Q1", "i3", 2, 1.0),
            ("m", "text", "A", "Q1", "", 1, 0.9),
            ("m", "text", "A", "Q1", "", 2, 0.1),
        ],
        columns=["model", "condition", "country", "question", "image", "option", "prob"],
    )
    return model, human


def test_marginal_similarity_scores_the_image_averaged_distribution() -> None:
    model, human = marginal_fixture()
    result = marginal_similarities(model, human)
    averaged = [(0.2 + 0.6 + 0.5) / 3, (0.8 + 0.4 + 0.5) / 3]
    image = lookup(result, condition="image")
    assert image["similarity"] == pytest.approx(1 - jensenshannon([0.5, 0.5], averaged), abs=1e-12)
    assert image["n_images"] == 3
    text = lookup(result, condition="text")
    assert text["similarity"] == pytest.approx(1 - jensenshannon([0.5, 0.5], [0.9, 0.1]), abs=1e-12)


def test_marginal_similarity_rejects_an_image_missing_an_option() -> None:
    model, human = marginal_fixture()
    model = model.drop(index=2)  # image i2 loses option 2
    with pytest.raises(ValueError, match=r"image 'i2'.*lacks option code\(s\) \[2\]"):
        marginal_similarities(model, human)


# --- section means ---------------------------------------------------------------------------


def test_section_means_per_country() -> None:
    result = section_means(question_table(), SECTION_OF, overall=True)
    expected = {
        ("text", "A", "S1"): (0.65, 2),
        ("text", "A", "S2"): (0.80, 1),
        ("text", "A", ALL_SECTIONS): ((0.6 + 0.7 + 0.8) / 3, 3),
        ("text", "C", "S1"): (0.25, 2),
        ("image", "B", "S1"): ((0.45 + 0.99) / 2, 2),
        ("image", "B", ALL_SECTIONS): ((0.45 + 0.99) / 2, 2),
        ("image", "D", "S2"): (0.60, 1),
    }
    for (condition, country, section), (mean, n) in expected.items():
        row = lookup(result, condition=condition, country=country, section=section)
        assert row["similarity"] == pytest.approx(mean, abs=1e-12), (condition, country, section)
        assert row["n_questions"] == n
        assert row["n_pairs"] == n
    # 4 countries × 2 conditions in S1, A and D (both) and B (text) in S2, and "all" for each.
    assert len(result) == 8 + 5 + 8
    assert "n_left_out" not in result.columns


def test_section_means_by_income_group_pool_pairs_and_leave_out_unclassified() -> None:
    result = section_means(question_table(), SECTION_OF, income_of=INCOME_OF)
    high_s1 = lookup(result, condition="text", income_group="High", section="S1")
    assert high_s1["similarity"] == pytest.approx((0.6 + 0.7 + 0.8 + 0.6) / 4, abs=1e-12)
    assert (high_s1["n_questions"], high_s1["n_pairs"], high_s1["n_countries"]) == (2, 4, 2)
    low_s2 = lookup(result, condition="text", income_group="Low", section="S2")
    assert low_s2["similarity"] == pytest.approx(0.4, abs=1e-12)
    assert set(result["income_group"]) == {"High", "Low"}
    assert set(result["n_left_out"]) == {1}
    assert result.attrs["left_out"] == ["C"]


def test_income_split_weighs_countries_by_their_pairs() -> None:
    scores = {("text", "A"): {"Q1": 0.6, "Q2": 0.7}, ("text", "D"): {"Q1": 0.9}}
    result = section_means(question_table(scores), SECTION_OF, income_of=INCOME_OF)
    row = lookup(result, income_group="High", section="S1")
    # the mean over pairs (0.6, 0.7, 0.9), not the mean of country means (0.65, 0.9)
    assert row["similarity"] == pytest.approx((0.6 + 0.7 + 0.9) / 3, abs=1e-12)
    assert row["n_left_out"] == 0


def test_aggregates_reject_a_country_missing_from_the_income_table() -> None:
    with pytest.raises(ValueError, match=r"no income group entry for country\(ies\) \['D'\]"):
        section_means(question_table(), SECTION_OF, income_of={"A": "High", "B": "Low", "C": None})


def test_aggregates_reject_a_table_without_classified_countries() -> None:
    unclassified: dict[str, str | None] = dict.fromkeys("ABCD")
    with pytest.raises(ValueError, match="every country lacks an income group"):
        section_means(question_table(), SECTION_OF, income_of=unclassified)


def test_aggregates_reject_a_question_without_section() -> None:
    with pytest.raises(ValueError, match=r"no section known for question\(s\) \['Q3'\]"):
        section_means(question_table(), {"Q1": "S1", "Q2": "S1"})


def test_aggregates_reject_several_rows_per_question() -> None:
    table = question_table()
    table = pd.concat([table, table.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="more than one row for model m, condition text"):
        section_means(table, SECTION_OF)


def test_aggregates_reject_a_table_without_similarity() -> None:
    with pytest.raises(ValueError, match=r"lack column\(s\) \['similarity'\]"):
        section_means(question_table().drop(columns="similarity"), SECTION_OF)


# --- percent change --------------------------------------------------------------------------


def test_paired_change_per_country_and_overall() -> None:
    # The report's change table (reports.paired): the change of the means over paired questions.
    from cvs_evaluator.reports.paired import paired_changes

    result = paired_changes(question_table(), SECTION_OF, "text", "image")
    a_s1 = lookup(result, country="A", section="S1")
    assert a_s1["mean_a"] == pytest.approx(0.65, abs=1e-12)
    assert a_s1["mean_b"] == pytest.approx(0.645, abs=1e-12)
    assert a_s1["percent_change"] == pytest.approx((0.645 - 0.65) / 0.65 * 100, abs=1e-9)
    assert (a_s1["condition_a"], a_s1["condition_b"]) == ("text", "image")
    # B's Q3 has no image score: B's "all" compares Q1 and Q2 only, and counts Q3 as unpaired.
    b_all = lookup(result, country="B", section=ALL_SECTIONS)
    assert b_all["mean_a"] == pytest.approx(0.7, abs=1e-12)
    assert b_all["mean_b"] == pytest.approx(0.72, abs=1e-12)
    assert b_all["percent_change"] == pytest.approx((0.72 - 0.7) / 0.7 * 100, abs=1e-9)
    assert (b_all["n_pairs"], b_all["n_unpaired"]) == (2, 1)
    assert lookup(result, country="A", section=ALL_SECTIONS)["n_unpaired"] == 0
    assert result.loc[(result["country"] == "B") & (result["section"] == "S2")].empty


def test_paired_change_by_income_group() -> None:
    from cvs_evaluator.reports.paired import paired_changes

    result = paired_changes(
        question_table(), SECTION_OF, "text", "image", group_of=INCOME_OF, group="income_group"
    )
    high = lookup(result, income_group="High", section="S2")
    a, b = (0.8 + 0.5) / 2, (0.88 + 0.6) / 2
    assert high["percent_change"] == pytest.approx((b - a) / a * 100, abs=1e-9)
    assert (high["n_pairs"], high["n_countries"]) == (2, 2)
    assert "C" not in set(result["income_group"])  # unclassified: left out


# --- permutation test ------------------------------------------------------------------------


def exact_sign_flip_p_value(diffs: list[float]) -> float:
    """Two-sided p of the mean over all 2^n sign patterns, as scipy defines it for exact tests."""
    observed = sum(diffs) / len(diffs)
    null = [
        sum(s * d for s, d in zip(signs, diffs, strict=True)) / len(diffs)
        for signs in itertools.product([1, -1], repeat=len(diffs))
    ]
    tolerance = 1e-12
    greater = sum(v >= observed - tolerance for v in null) / len(null)
    less = sum(v <= observed + tolerance for v in null) / len(null)
    return min(1.0, 2 * min(greater, less))


def test_permutation_test_equals_exact_enumeration_on_few_pairs() -> None:
    result = permutation_tests(question_table(), SECTION_OF, "text", "image", seed=1)
    s1_diffs = [
        SCORES[("image", c)][q] - SCORES[("text", c)][q] for c in "ABCD" for q in ("Q1", "Q2")
    ]
    s1 = lookup(result, section="S1")
    assert s1["n_pairs"] == 8
    assert s1["mean_diff"] == pytest.approx(sum(s1_diffs) / 8, abs=1e-12)
    assert s1["p_value"] == pytest.approx(exact_sign_flip_p_value(s1_diffs), abs=1e-12)
    s2 = lookup(result, section="S2")  # A +0.08, D +0.10; B unpaired, C never asked Q3
    assert (s2["n_pairs"], s2["n_unpaired"]) == (2, 1)
    assert s2["mean_a"] == pytest.approx(0.65, abs=1e-12)
    assert s2["mean_b"] == pytest.approx(0.74, abs=1e-12)
    assert s2["p_value"] == pytest.approx(0.5, abs=1e-12)  # one pattern in four is as extreme
    assert lookup(result, section=ALL_SECTIONS)["n_pairs"] == 10


def test_a_single_pair_has_its_means_and_no_p_value() -> None:
    table = question_table()
    one = table[(table["question"] != "Q3") | (table["country"] == "A")]  # S2 (Q3): A's pair only
    s2 = lookup(permutation_tests(one, SECTION_OF, "text", "image"), section="S2")
    assert s2["n_pairs"] == 1
    assert s2["mean_diff"] == pytest.approx(0.08, abs=1e-12)
    assert np.isnan(s2["p_value"])


def test_permutation_test_by_income_group() -> None:
    result = permutation_tests(question_table(), SECTION_OF, "text", "image", income_of=INCOME_OF)
    high_s1 = lookup(result, income_group="High", section="S1")
    diffs = [SCORES[("image", c)][q] - SCORES[("text", c)][q] for c in "AD" for q in ("Q1", "Q2")]
    assert high_s1["p_value"] == pytest.approx(exact_sign_flip_p_value(diffs), abs=1e-12)
    assert (high_s1["n_pairs"], high_s1["n_countries"], high_s1["n_left_out"]) == (4, 2, 1)
    assert "C" not in set(result.get("country", []))


def sixteen_pair_table(shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    text = rng.uniform(0.4, 0.8, size=16)
    image = text + rng.normal(shift, 0.05, size=16)
    scores = {
        ("text", "A"): {f"Q{i}": float(v) for i, v in enumerate(text)},
        ("image", "A"): {f"Q{i}": float(v) for i, v in enumerate(image)},
    }
    return question_table(scores)


def test_permutation_test_with_sampled_flips_is_close_to_exact_and_seeded() -> None:
    table = sixteen_pair_table(shift=0.04)  # 2^16 patterns: scipy samples 10,000 of them
    sections = {f"Q{i}": "S" for i in range(16)}
    first = permutation_tests(table, sections, "text", "image", seed=3)
    again = permutation_tests(table, sections, "text", "image", seed=3)
    other_seed = permutation_tests(table, sections, "text", "image", seed=4)
    diffs = (
        table.loc[table["condition"] == "image", "similarity"].to_numpy()
        - table.loc[table["condition"] == "text", "similarity"].to_numpy()
    ).tolist()
    exact = exact_sign_flip_p_value(diffs)
    p = float(lookup(first, section="S")["p_value"])
    assert 0.02 < exact < 0.5, "fixture should give a p-value Monte Carlo error can move"
    standard_error = (exact * (1 - exact) / 10_000) ** 0.5
    assert abs(p - exact) < 4 * standard_error + 2 / 10_001
    assert p == float(lookup(again, section="S")["p_value"])
    assert p != float(lookup(other_seed, section="S")["p_value"])


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_interval_of_two_questions_spans_them() -> None:
    # Resampling two questions gives means a, (a+b)/2, b with chance 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% percentiles of 2,000 resamples are a and b.
    result = bootstrap_section_means(question_table(), SECTION_OF, seed=0)
    b_s1 = lookup(result, condition="image", country="B", section="S1")
    assert b_s1["similarity"] == pytest.approx(0.72, abs=1e-12)
    assert b_s1["ci_low"] == pytest.approx(0.45, abs=1e-12)
    assert b_s1["ci_high"] == pytest.approx(0.99, abs=1e-12)
    a_s2 = lookup(result, condition="text", country="A", section="S2")  # one question
    assert np.isnan(a_s2["ci_low"]) and np.isnan(a_s2["ci_high"])
    assert a_s2["similarity"] == pytest.approx(0.8, abs=1e-12)


def test_bootstrap_by_income_group_resamples_questions_with_all_their_pairs() -> None:
    scores = {("text", "A"): {"Q1": 0.6, "Q2": 0.7}, ("text", "D"): {"Q1": 0.9}}
    result = bootstrap_section_means(question_table(scores), SECTION_OF, income_of=INCOME_OF)
    row = lookup(result, income_group="High", section="S1")
    # Q1 brings (0.6, 0.9), Q2 brings (0.7): resample means 0.75 (Q1 Q1), 2.2/3, 0.7 (Q2 Q2).
    assert row["similarity"] == pytest.approx(2.2 / 3, abs=1e-12)
    assert row["ci_low"] == pytest.approx(0.7, abs=1e-12)
    assert row["ci_high"] == pytest.approx(0.75, abs=1e-12)
    counts = (row["n_questions"], row["n_pairs"], row["n_countries"], row["n_left_out"])
    assert counts == (2, 3, 2, 0)
    # Half the resamples draw Q1 and Q2 once each: their mean is over the 3 pairs (2.2 / 3), not
    # the mean of the two question means (0.725); the 30% and 70% percentiles both fall there.
    narrow = bootstrap_section_means(
        question_table(scores), SECTION_OF, income_of=INCOME_OF, confidence=0.4
    )
    middle = lookup(narrow, income_group="High", section="S1")
    assert middle["ci_low"] == pytest.approx(2.2 / 3, abs=1e-12)
    assert middle["ci_high"] == pytest.approx(2.2 / 3, abs=1e-12)


def test_bootstrap_interval_matches_the_normal_approximation_on_many_questions() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(0.6, 0.05, size=60)
    table = question_table({("text", "A"): {f"Q{i}": float(v) for i, v in enumerate(values)}})
    sections = {f"Q{i}": "S" for i in range(60)}
    row = lookup(bootstrap_section_means(table, sections, seed=5), section="S")
    half_width = 1.959964 * values.std() / np.sqrt(values.size)
    assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(half_width, rel=0.15)
    assert (row["ci_high"] + row["ci_low"]) / 2 == pytest.approx(
        values.mean(), abs=0.2 * half_width
    )
    again = lookup(bootstrap_section_means(table, sections, seed=5), section="S")
    other = lookup(bootstrap_section_means(table, sections, seed=6), section="S")
    assert (row["ci_low"], row["ci_high"]) == (again["ci_low"], again["ci_high"])
    assert (row["ci_low"], row["ci_high"]) != (other["ci_low"], other["ci_high"])
