"""Two engines' result rows compared: figures against a hand computation (JS via scipy) on a
small fixture."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.precision_compare import Comparison, compare_rows

# Two countries, three questions in two sections; B differs from A on some items.
HUMAN = {
    ("BRA", "Q1"): [0.5, 0.3, 0.2],
    ("BRA", "Q2"): [0.6, 0.4],
    ("BRA", "Q3"): [0.1, 0.2, 0.3, 0.4],
    ("MEX", "Q1"): [0.2, 0.2, 0.6],
    ("MEX", "Q2"): [0.5, 0.5],
    ("MEX", "Q3"): [0.25, 0.25, 0.25, 0.25],
}
A = {
    ("BRA", "Q1"): [0.6, 0.3, 0.1],
    ("BRA", "Q2"): [0.7, 0.3],
    ("BRA", "Q3"): [0.4, 0.3, 0.2, 0.1],
    ("MEX", "Q1"): [0.3, 0.3, 0.4],
    ("MEX", "Q2"): [0.45, 0.55],
    ("MEX", "Q3"): [0.1, 0.2, 0.3, 0.4],
}
B = {
    ("BRA", "Q1"): [0.5, 0.35, 0.15],  # same top option
    ("BRA", "Q2"): [0.4, 0.6],  # top option flips
    ("BRA", "Q3"): [0.4, 0.3, 0.2, 0.1],  # identical
    ("MEX", "Q1"): [0.3, 0.3, 0.4],
    ("MEX", "Q2"): [0.55, 0.45],  # flips
    ("MEX", "Q3"): [0.1, 0.25, 0.25, 0.4],
}
SECTION_OF = {"Q1": "Social values", "Q2": "Social values", "Q3": "Happiness"}


def _rows(distributions: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "item_id": f"text/{country}/{question}",
                "model": "smol",
                "condition": "text",
                "country": country,
                "question": question,
                "image": "",
                "section": SECTION_OF[question],
                "status": "scored",
                "option_codes": list(range(1, len(probs) + 1)),
                "distribution": probs,
            }
            for (country, question), probs in distributions.items()
        ]
    )


def _shares() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"country": c, "question": q, "option": i + 1, "share": s}
            for (c, q), shares in HUMAN.items()
            for i, s in enumerate(shares)
        ]
    )


@pytest.fixture(scope="module")
def compared() -> Comparison:
    return compare_rows(_rows(A), _rows(B), _shares(), SECTION_OF)


def test_js_and_top1_equal_a_hand_computation(compared: Comparison) -> None:
    js = [jensenshannon(A[k], B[k]) for k in A]
    assert compared.items == 6
    assert compared.mean_js == pytest.approx(np.mean(js), abs=1e-12)
    assert compared.max_js == pytest.approx(np.max(js), abs=1e-12)
    assert compared.top1 == pytest.approx(4 / 6)


def test_the_section_shift_equals_a_hand_computation(compared: Comparison) -> None:
    def similarity(model: dict[tuple[str, str], list[float]], key: tuple[str, str]) -> float:
        return 1 - float(jensenshannon(HUMAN[key], model[key]))

    pooled = {}
    per_country = {}
    for section in ("Social values", "Happiness"):
        keys = [k for k in A if SECTION_OF[k[1]] == section]
        pooled[section] = abs(
            np.mean([similarity(B, k) for k in keys]) - np.mean([similarity(A, k) for k in keys])
        )
        for country in ("BRA", "MEX"):
            mine = [k for k in keys if k[0] == country]
            per_country[(country, section)] = abs(
                np.mean([similarity(B, k) for k in mine])
                - np.mean([similarity(A, k) for k in mine])
            )
    worst = max(pooled, key=lambda s: pooled[s])
    assert compared.max_section_shift == pytest.approx(pooled[worst], abs=1e-12)
    assert compared.shifted_section == worst
    assert compared.max_section_country_shift == pytest.approx(max(per_country.values()), abs=1e-12)


def test_items_not_scored_on_both_are_left_out() -> None:
    b = _rows(B)
    b.loc[b["item_id"] == "text/BRA/Q2", "status"] = "low_mass"
    result = compare_rows(_rows(A), b, _shares(), SECTION_OF)
    kept = [k for k in A if k != ("BRA", "Q2")]
    assert result.items == 5
    assert result.mean_js == pytest.approx(np.mean([jensenshannon(A[k], B[k]) for k in kept]))


def test_no_common_item_is_an_error() -> None:
    b = _rows(B).assign(item_id=lambda t: "other/" + t["item_id"])
    with pytest.raises(ValueError, match="no item in common"):
        compare_rows(_rows(A), b, _shares(), SECTION_OF)


def test_identical_engines_compare_as_zero() -> None:
    same = compare_rows(_rows(A), _rows(A), _shares(), SECTION_OF)
    assert same.mean_js == 0 and same.top1 == 1 and same.max_section_shift == 0
