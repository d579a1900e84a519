"""The final results table: human distributions in option order, similarity from scipy."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.results_table import RESULT_COLUMNS, results_frame

SHARES = pd.DataFrame(
    {
        "country": ["DEU", "DEU", "DEU", "JPN", "JPN"],
        "question": ["Q1", "Q1", "Q1", "Q1", "Q1"],
        "option": [1, 2, 3, 1, 2],
        "share": [0.5, 0.3, 0.2, 0.9, 0.1],
    }
)


def _stored(**overrides: Any) -> dict[str, Any]:
    row = {
        "item_id": "a",
        "model": "smol",
        "engine": "ort",
        "precision": "fp32",
        "template_version": "cvs-prompt-x",
        "condition": "text",
        "country": "DEU",
        "question": "Q1",
        "section": "S",
        "image": "",
        "group_key": "g",
        "option_codes": [3, 1, 2],
        "option_logprobs": [-1.0, -2.0, -3.0],
        "raw_mass": 0.7,
        "status": "scored",
        "reason": "",
        "distribution": [0.6, 0.3, 0.1],
        "topk_distribution": None,
        "checkpoint_fingerprint": "ck",
        "engine_manifest_sha256": "mf",
        "image_sha256": "",
        "scoring_variant": "v",
    }
    row.update(overrides)
    return row


def test_human_distribution_follows_the_items_option_order_and_similarity_is_scipys() -> None:
    frame = results_frame(pd.DataFrame([_stored()]), SHARES)
    row = frame.iloc[0]
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert row["human_dist"] == [0.2, 0.5, 0.3]  # codes 3, 1, 2
    expected = 1 - jensenshannon([0.2, 0.5, 0.3], [0.6, 0.3, 0.1])
    assert row["similarity"] == pytest.approx(expected, abs=1e-15)
    assert row["option_mass"] == 0.7
    assert row["checkpoint_fingerprint"] == "ck"


def test_an_unscored_item_keeps_its_row_with_null_distribution_and_similarity() -> None:
    stored = _stored(status="low_mass", reason="raw option mass 0.01 below", distribution=None)
    row = results_frame(pd.DataFrame([stored]), SHARES).iloc[0]
    assert row["model_dist"] is None
    assert row["similarity"] is None
    assert row["reason"].startswith("raw option mass")
    assert row["human_dist"] == [0.2, 0.5, 0.3]


def test_an_item_without_human_shares_has_null_human_dist_and_similarity() -> None:
    row = results_frame(pd.DataFrame([_stored(country="FRA")]), SHARES).iloc[0]
    assert row["human_dist"] is None
    assert row["similarity"] is None
    assert row["model_dist"] == [0.6, 0.3, 0.1]


def test_rows_come_in_the_given_order_and_unlisted_rows_are_left_out() -> None:
    stored = pd.DataFrame(
        [
            _stored(item_id="a"),
            _stored(item_id="b", country="JPN", option_codes=[1, 2], distribution=[0.5, 0.5]),
            _stored(item_id="c"),
        ]
    )
    frame = results_frame(stored, SHARES, order=["b", "a"])
    assert frame["item_id"].tolist() == ["b", "a"]
    assert frame.iloc[0]["similarity"] == pytest.approx(1 - jensenshannon([0.9, 0.1], [0.5, 0.5]))
