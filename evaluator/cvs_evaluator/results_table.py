"""The run's final table: one row per item, everything a reader or a report needs beside it.

`results_frame` joins the store's rows with the human answer shares of each item's country and
question (in the item's option order) and computes the similarity of each scored item from its
definition (`metrics.similarity`: 1 − scipy's Jensen–Shannon distance, unrounded). Items not
scored keep their row and reason, with a null model distribution and a null similarity; an item
whose country × question has no human shares keeps a null `human_dist` and a null similarity.
The column list is `RESULT_COLUMNS`; `results.parquet` holds exactly this table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from cvs_evaluator.metrics import similarity

RESULT_COLUMNS: tuple[str, ...] = (
    "item_id",
    "model",
    "engine",
    "precision",
    "checkpoint_fingerprint",
    "engine_manifest_sha256",
    "template_version",
    "scoring_variant",
    "condition",
    "country",
    "image",
    "image_sha256",
    "question",
    "section",
    "group_key",
    "option_codes",
    "option_logprobs",
    "model_dist",
    "human_dist",
    "option_mass",
    "similarity",
    "status",
    "reason",
)
"""Columns of `results.parquet`, in order."""


def human_distributions(shares: pd.DataFrame) -> dict[tuple[str, str], dict[int, float]]:
    """(country, question) → {answer code: share} from the long human-shares table."""
    table: dict[tuple[str, str], dict[int, float]] = {}
    for country, question, option, share in shares[
        ["country", "question", "option", "share"]
    ].itertuples(index=False):
        table.setdefault((str(country), str(question)), {})[int(option)] = float(share)
    return table


def results_frame(
    stored: pd.DataFrame, shares: pd.DataFrame, order: Sequence[str] | None = None
) -> pd.DataFrame:
    """The final table from stored rows (`ResultStore.frame()`): one row per item, in `order`
    (item ids; rows not listed are left out) or in stored order."""
    if order is not None:
        position = {item_id: index for index, item_id in enumerate(order)}
        stored = stored[stored["item_id"].isin(position)]
        stored = stored.sort_values("item_id", key=lambda ids: ids.map(position), kind="stable")
    humans = human_distributions(shares)
    rows = [
        _result_row({str(k): v for k, v in row.items()}, humans)
        for row in stored.to_dict("records")
    ]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _result_row(row: dict[str, Any], humans: dict[tuple[str, str], dict[int, float]]) -> dict:
    codes = [int(code) for code in row["option_codes"]]
    by_code = humans.get((str(row["country"]), str(row["question"])))
    human = None
    if by_code is not None and all(code in by_code for code in codes):
        human = [by_code[code] for code in codes]
    model = row.get("distribution")
    model_dist = None if model is None else [float(v) for v in model]
    scored = row["status"] == "scored" and model_dist is not None
    value = None
    if scored and human is not None and model_dist is not None:
        value = similarity(human, model_dist)
    return {
        "item_id": row["item_id"],
        "model": row["model"],
        "engine": row["engine"],
        "precision": row["precision"],
        "checkpoint_fingerprint": row.get("checkpoint_fingerprint", ""),
        "engine_manifest_sha256": row.get("engine_manifest_sha256", ""),
        "template_version": row["template_version"],
        "scoring_variant": row.get("scoring_variant", ""),
        "condition": row["condition"],
        "country": row["country"],
        "image": row["image"],
        "image_sha256": row.get("image_sha256", ""),
        "question": row["question"],
        "section": row["section"],
        "group_key": row["group_key"],
        "option_codes": codes,
        "option_logprobs": [float(v) for v in row["option_logprobs"]],
        "model_dist": model_dist if scored else None,
        "human_dist": human,
        "option_mass": float(row["raw_mass"]),
        "similarity": value,
        "status": row["status"],
        "reason": row["reason"],
    }
