"""The similarity metric equals its definition, and items line up with the human answers by code."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from cvs_evaluator import metrics
from cvs_evaluator.metrics import item_similarities, similarity
from cvs_runtime.comparison import js_distance_rows


def hand_similarity(human: list[float], model: list[float]) -> float:
    """1 − sqrt of the mean KL divergence of the two normalised vectors to their midpoint."""
    p = [x / sum(human) for x in human]
    q = [x / sum(model) for x in model]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(u: list[float]) -> float:
        return sum(a * math.log(a / b) for a, b in zip(u, m, strict=True) if a > 0)

    return 1 - math.sqrt((kl(p) + kl(q)) / 2)


# --- similarity ------------------------------------------------------------------------------


def test_similarity_equals_one_minus_scipy_jensenshannon_on_random_vectors() -> None:
    rng = np.random.default_rng(20251)
    checked = 0
    for _ in range(2_000):
        n = int(rng.integers(2, 12))
        human = rng.dirichlet(np.full(n, rng.uniform(0.2, 3.0)))
        model = rng.dirichlet(np.full(n, rng.uniform(0.2, 3.0))) * rng.uniform(0.1, 5.0)
        human[rng.random(n) < 0.15] = 0.0  # options nobody chose
        if human.sum() == 0:
            continue
        expected = 1.0 - float(jensenshannon(human, model))
        assert similarity(human, model) == pytest.approx(expected, abs=1e-12)
        checked += 1
    assert checked > 1_900


def test_similarity_equals_hand_formula() -> None:
    human, model = [0.5, 0.5, 0.0], [0.1, 0.4, 0.5]
    # midpoint (0.3, 0.45, 0.25)
    kl_human = 0.5 * math.log(0.5 / 0.3) + 0.5 * math.log(0.5 / 0.45)
    kl_model = 0.1 * math.log(0.1 / 0.3) + 0.4 * math.log(0.4 / 0.45) + 0.5 * math.log(0.5 / 0.25)
    expected = 1 - math.sqrt((kl_human + kl_model) / 2)
    assert similarity(human, model) == pytest.approx(expected, abs=1e-14)
    assert hand_similarity(human, model) == pytest.approx(expected, abs=1e-14)


def test_similarity_normalises_both_vectors() -> None:
    assert similarity([2, 2, 0], [1, 4, 5]) == pytest.approx(
        hand_similarity([0.5, 0.5, 0.0], [0.1, 0.4, 0.5]), abs=1e-14
    )


def test_similarity_extremes() -> None:
    assert similarity([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 1.0
    assert similarity([1, 0], [0, 1]) == pytest.approx(1 - math.sqrt(math.log(2)), abs=1e-14)


def test_similarity_of_nearly_equal_vectors_is_one_where_scipy_gives_nan() -> None:
    rng = np.random.default_rng(7)
    nan_cases = 0
    for _ in range(200):
        human = rng.dirichlet(np.ones(5))
        model = human * (1 + rng.normal(0, 1e-15, 5))
        with np.errstate(invalid="ignore"):
            scipy_distance = float(jensenshannon(human, model))
        nan_cases += math.isnan(scipy_distance)
        assert similarity(human, model) == pytest.approx(1.0, abs=1e-7)
    assert nan_cases > 0, "the fixture no longer reaches scipy's NaN case"


def test_similarity_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="3 options, model distribution 2"):
        similarity([0.2, 0.3, 0.5], [0.5, 0.5])


def test_similarity_rejects_negative_entries() -> None:
    with pytest.raises(ValueError, match="model distribution has negative"):
        similarity([0.5, 0.5], [1.2, -0.2])


def test_similarity_rejects_non_finite_entries() -> None:
    with pytest.raises(ValueError, match="human distribution has non-finite"):
        similarity([float("nan"), 1.0], [0.5, 0.5])


def test_similarity_rejects_zero_mass() -> None:
    with pytest.raises(ValueError, match="model distribution sums to 0"):
        similarity([0.5, 0.5], [0.0, 0.0])


def test_similarity_rejects_matrices() -> None:
    with pytest.raises(ValueError, match="1-D"):
        similarity([[0.5, 0.5]], [[0.5, 0.5]])


def test_similarity_rejects_empty_vectors() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        similarity([], [])


# --- item_similarities -----------------------------------------------------------------------

HUMAN = pd.DataFrame(
    [
        ("DEU", "Q1", 1, 0.5, 100, True),
        ("DEU", "Q1", 2, 0.3, 100, True),
        ("DEU", "Q1", 3, 0.2, 100, True),
        ("DEU", "Q2", 0, 0.0, 90, True),
        ("DEU", "Q2", 2, 0.6, 90, True),
        ("DEU", "Q2", 5, 0.4, 90, True),
        ("JPN", "Q1", 1, 0.1, 80, True),
        ("JPN", "Q1", 2, 0.1, 80, True),
        ("JPN", "Q1", 3, 0.8, 80, True),
    ],
    columns=["country", "question", "option", "share", "n", "weighted"],
)


def model_rows(items: dict[tuple[str, str, str, str, str], dict[int, float]]) -> pd.DataFrame:
    rows = [(*item, option, prob) for item, dist in items.items() for option, prob in dist.items()]
    columns = ["model", "condition", "country", "question", "image", "option", "prob"]
    return pd.DataFrame(rows, columns=columns)


ITEMS = {
    ("smol", "text", "DEU", "Q1", ""): {3: 0.1, 1: 0.6, 2: 0.3},
    ("smol", "text", "DEU", "Q2", ""): {5: 0.7, 0: 0.1, 2: 0.2},
    ("smol", "image", "DEU", "Q2", "deu_01"): {2: 0.5, 0: 0.25, 5: 0.25},
    ("smol", "image", "JPN", "Q1", "jpn_01"): {1: 0.2, 2: 0.2, 3: 0.6},
    ("tiny", "text", "JPN", "Q1", ""): {2: 1.0, 1: 0.0, 3: 0.0},
}


def test_item_similarities_align_options_by_code() -> None:
    table = model_rows(ITEMS).sample(frac=1.0, random_state=3)  # order must not matter
    result = item_similarities(table, HUMAN.sample(frac=1.0, random_state=4))
    assert len(result) == len(ITEMS)
    got = {
        tuple(row[k] for k in ("model", "condition", "country", "question", "image")): row
        for _, row in result.iterrows()
    }
    human_vectors = {
        ("DEU", "Q1"): [0.5, 0.3, 0.2],  # codes 1, 2, 3
        ("DEU", "Q2"): [0.0, 0.6, 0.4],  # codes 0, 2, 5
        ("JPN", "Q1"): [0.1, 0.1, 0.8],
    }
    model_vectors = {
        ("smol", "text", "DEU", "Q1", ""): [0.6, 0.3, 0.1],
        ("smol", "text", "DEU", "Q2", ""): [0.1, 0.2, 0.7],
        ("smol", "image", "DEU", "Q2", "deu_01"): [0.25, 0.5, 0.25],
        ("smol", "image", "JPN", "Q1", "jpn_01"): [0.2, 0.2, 0.6],
        ("tiny", "text", "JPN", "Q1", ""): [0.0, 1.0, 0.0],
    }
    for item, vector in model_vectors.items():
        expected = hand_similarity(human_vectors[(item[2], item[3])], vector)
        assert got[item]["similarity"] == pytest.approx(expected, abs=1e-12), item
        assert got[item]["n_options"] == 3


def test_item_similarities_reject_an_option_the_human_answers_lack() -> None:
    items = dict(ITEMS)
    items[("smol", "text", "DEU", "Q1", "")] = {1: 0.5, 2: 0.2, 3: 0.1, 4: 0.2}
    with pytest.raises(ValueError, match=r"model smol .*country DEU question Q1.*\[4\]"):
        item_similarities(model_rows(items), HUMAN)


def test_item_similarities_reject_a_missing_option() -> None:
    items = dict(ITEMS)
    items[("smol", "image", "DEU", "Q2", "deu_01")] = {2: 0.5, 5: 0.5}
    with pytest.raises(ValueError, match=r"model smol .*country DEU question Q2.*lacks.*\[0\]"):
        item_similarities(model_rows(items), HUMAN)


def test_item_similarities_reject_a_question_without_human_answers() -> None:
    items = dict(ITEMS)
    items[("smol", "text", "JPN", "Q2", "")] = {0: 0.2, 2: 0.3, 5: 0.5}
    with pytest.raises(ValueError, match="no answers for country JPN question Q2"):
        item_similarities(model_rows(items), HUMAN)


def test_item_similarities_reject_a_duplicate_option() -> None:
    table = model_rows(ITEMS)
    table = pd.concat([table, table.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="appears more than once"):
        item_similarities(table, HUMAN)


def test_item_similarities_reject_negative_probabilities() -> None:
    table = model_rows(ITEMS)
    table.loc[2, "prob"] = -0.1
    with pytest.raises(ValueError, match="must be finite and non-negative"):
        item_similarities(table, HUMAN)


def test_item_similarities_reject_an_item_without_mass() -> None:
    items = dict(ITEMS)
    items[("tiny", "text", "JPN", "Q1", "")] = {1: 0.0, 2: 0.0, 3: 0.0}
    with pytest.raises(ValueError, match=r"model tiny .*sum to 0"):
        item_similarities(model_rows(items), HUMAN)


def test_item_similarities_reject_shares_not_summing_to_one() -> None:
    human = HUMAN.copy()
    human.loc[0, "share"] = 0.6
    with pytest.raises(ValueError, match=r"country DEU question Q1 sum to 1\.1"):
        item_similarities(model_rows(ITEMS), human)


def test_item_similarities_reject_a_missing_column() -> None:
    with pytest.raises(ValueError, match=r"model results lack column\(s\) \['image'\]"):
        item_similarities(model_rows(ITEMS).drop(columns="image"), HUMAN)


def test_item_similarities_score_a_hundred_thousand_items_in_one_scipy_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    n_countries, n_questions, n_images, n_options = 20, 100, 50, 4  # 100,000 items
    countries = [f"C{i:02d}" for i in range(n_countries)]
    questions = [f"Q{i}" for i in range(n_questions)]
    human_share = rng.dirichlet(np.ones(n_options), size=n_countries * n_questions)
    human = pd.DataFrame(
        {
            "country": np.repeat(countries, n_questions * n_options),
            "question": np.tile(np.repeat(questions, n_options), n_countries),
            "option": np.tile(np.arange(1, n_options + 1), n_countries * n_questions),
            "share": human_share.ravel(),
        }
    )
    n_items = n_countries * n_questions * n_images
    model_prob = rng.dirichlet(np.ones(n_options), size=n_items)
    per_item = n_images * n_options
    model = pd.DataFrame(
        {
            "model": "m",
            "condition": "image",
            "country": np.repeat(countries, n_questions * per_item),
            "question": np.tile(np.repeat(questions, per_item), n_countries),
            "image": np.tile(
                np.repeat([f"img{i}" for i in range(n_images)], n_options),
                n_countries * n_questions,
            ),
            "option": np.tile(np.arange(1, n_options + 1), n_items),
            "prob": model_prob.ravel(),
        }
    )
    calls: list[int] = []

    def counted(human: np.ndarray, model: np.ndarray) -> np.ndarray:
        calls.append(len(human))
        return js_distance_rows(human, model)

    monkeypatch.setattr(metrics, "js_distance_rows", counted)
    result = item_similarities(model, human)
    assert len(result) == n_items
    assert calls == [n_items]  # one (items, options) array: every item has 4 options
    # Spot-check items against the scalar metric on vectors cut from the generating arrays.
    for index in rng.choice(n_items, size=25, replace=False):
        c, rest = divmod(int(index), n_questions * n_images)
        q, i = divmod(rest, n_images)
        row = result.loc[
            (result["country"] == countries[c])
            & (result["question"] == questions[q])
            & (result["image"] == f"img{i}")
        ]
        expected = 1 - float(jensenshannon(human_share[c * n_questions + q], model_prob[index]))
        assert float(row["similarity"].iloc[0]) == pytest.approx(expected, abs=1e-12)
