"""How closely a model's answers match a country's: 1 − Jensen–Shannon distance per item.

The study's metric is `1 - scipy.spatial.distance.jensenshannon(human, model)`: natural log, both
vectors normalised to sum to 1, square root of the divergence. It lies in [1 − √ln 2, 1] ≈
[0.167, 1]; 1 means the model's option distribution equals the country's answer shares.

A model distribution and a human one are compared option by option, matched on the WVS answer code.
If the two option sets differ (a prompt built from a different codebook version, a dropped option)
that is an error naming the item, never a silent drop of the unmatched options: a dropped option
would change both vectors' normalisation and so the score.

Tables (long format, one row per option):
- human shares: `country`, `question`, `option`, `share` (sums to 1 per country × question), ...
- model results: `model`, `condition`, `country`, `question`, `image`, `option`, `prob`.
  An *item* is one (model, condition, country, question, image); `image` is "" for text prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from cvs_runtime.comparison import js_distance_rows

ITEM_KEYS: tuple[str, ...] = ("model", "condition", "country", "question", "image")
"""Columns that identify one scored item."""
QUESTION_KEYS: tuple[str, ...] = ("model", "condition", "country", "question")
"""Columns that identify one question asked of one model under one condition for one country."""
HUMAN_KEYS: tuple[str, ...] = ("country", "question")
"""Columns that identify one human answer distribution."""
MODEL_COLUMNS: tuple[str, ...] = (*ITEM_KEYS, "option", "prob")
"""Columns a model-results table must have."""
HUMAN_COLUMNS: tuple[str, ...] = (*HUMAN_KEYS, "option", "share")
"""Columns a human-shares table must have (others, such as `n` and `weighted`, are kept out)."""
SHARE_SUM_TOLERANCE = 1e-6
"""How far a country × question's shares may sum from 1 (they are fractions written as floats)."""


def similarity(human: ArrayLike, model: ArrayLike) -> float:
    """1 − Jensen–Shannon distance between two distributions over the same options, in order.

    Both vectors are normalised to sum to 1 (as scipy does). Rounding can make scipy's divergence
    a tiny negative number for nearly equal vectors, whose square root scipy returns as NaN; that
    case is a distance of 0 (similarity 1), which is what the definition gives.

    Raises ValueError for vectors of different lengths, not 1-D, empty, with negative or
    non-finite entries, or summing to 0.
    """
    human_vector = _as_distribution(human, "human")
    model_vector = _as_distribution(model, "model")
    if human_vector.shape != model_vector.shape:
        raise ValueError(
            f"human distribution has {human_vector.size} options, model distribution "
            f"{model_vector.size}: they must cover the same options in the same order"
        )
    return float(similarity_rows(human_vector[None, :], model_vector[None, :])[0])


def similarity_rows(human: NDArray[np.float64], model: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise `similarity` of two (rows, options) arrays of valid distributions → (rows,).

    No validation: callers pass non-negative, finite rows with positive sums. The distance is
    `cvs_runtime.comparison.js_distance_rows` (scipy's, with its rounding guard).
    """
    return np.asarray(1.0 - js_distance_rows(human, model), dtype=np.float64)  # (rows,)


def _as_distribution(values: ArrayLike, name: str) -> NDArray[np.float64]:
    vector = np.asarray(values, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"{name} distribution must be a non-empty 1-D vector, got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{name} distribution has non-finite entries: {vector.tolist()}")
    if np.any(vector < 0):
        raise ValueError(f"{name} distribution has negative entries: {vector.tolist()}")
    if vector.sum() <= 0:
        raise ValueError(f"{name} distribution sums to 0: no probability mass to compare")
    return vector


def item_similarities(model_long: pd.DataFrame, human_shares: pd.DataFrame) -> pd.DataFrame:
    """One row per item: the item keys, `n_options` and `similarity` to the country's answers.

    Options are matched on the WVS code; an item whose option codes differ from its country ×
    question's human options raises ValueError naming the item. Rows come sorted by item keys.
    """
    aligned = align_options(model_long, human_shares)
    return grouped_similarities(aligned, ITEM_KEYS)


def align_options(model_long: pd.DataFrame, human_shares: pd.DataFrame) -> pd.DataFrame:
    """Model rows joined to the human share of the same option: item keys, option, prob, share.

    Checks both tables (columns, duplicates, values) and that every item has exactly its country ×
    question's human option codes; raises ValueError naming the first offending item otherwise.
    Rows come sorted by item keys, then option.
    """
    check_model_results(model_long)
    check_human_shares(human_shares)
    model = model_long.loc[:, list(MODEL_COLUMNS)]
    human = human_shares.loc[:, list(HUMAN_COLUMNS)]
    on = [*HUMAN_KEYS, "option"]
    merged = model.merge(human, on=on, how="left", validate="many_to_one", indicator=True)

    unmatched = merged["_merge"] == "left_only"
    if unmatched.any():
        _raise_extra_options(merged.loc[unmatched], human)

    # Every model option is a human option; the item is complete iff it has as many options.
    human_counts = human.groupby(list(HUMAN_KEYS)).size().rename("n_human")
    item_counts = merged.groupby(list(ITEM_KEYS)).size().rename("n_model").reset_index()
    item_counts = item_counts.join(human_counts, on=list(HUMAN_KEYS))
    short = item_counts.loc[item_counts["n_model"] < item_counts["n_human"]]
    if len(short):
        _raise_missing_options(short.iloc[0], merged, human)

    mass = merged.groupby(list(ITEM_KEYS))["prob"].sum()
    empty = mass.loc[mass <= 0]
    if len(empty):
        raise ValueError(
            f"{_item_name(dict(zip(ITEM_KEYS, empty.index[0], strict=True)))}: the model's option "
            f"probabilities sum to 0 (drop items without an option distribution before scoring)"
        )
    merged = merged.drop(columns="_merge")
    return merged.sort_values([*ITEM_KEYS, "option"], kind="stable").reset_index(drop=True)


def grouped_similarities(aligned: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """`similarity` of `prob` against `share` for every group of rows with equal `keys`.

    `aligned` holds one row per option with columns `keys`, `option`, `prob` and `share`, each
    group's options already checked to match the human ones. Returns one row per group: `keys`,
    `n_options`, `similarity`, sorted by `keys`. Groups with equal option counts go through scipy
    together as one (groups, options) array.
    """
    key_list = list(keys)
    rows = aligned.sort_values([*key_list, "option"], kind="stable").reset_index(drop=True)
    group_id = rows.groupby(key_list, sort=False).ngroup().to_numpy()  # (rows,), runs in order
    sizes = np.bincount(group_id)  # (groups,)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (groups,) first row of each group
    prob = rows["prob"].to_numpy(dtype=np.float64)
    share = rows["share"].to_numpy(dtype=np.float64)
    scores = np.empty(sizes.size, dtype=np.float64)
    for n_options in np.unique(sizes):
        groups = np.flatnonzero(sizes == n_options)
        picked = (starts[groups][:, None] + np.arange(n_options)[None, :]).ravel()
        scores[groups] = similarity_rows(
            share[picked].reshape(groups.size, n_options),  # (groups, options)
            prob[picked].reshape(groups.size, n_options),
        )
    result = rows.loc[starts, key_list].reset_index(drop=True)
    result["n_options"] = sizes
    result["similarity"] = scores
    return result


def check_model_results(model_long: pd.DataFrame) -> None:
    """Raise ValueError unless the table has the model-result columns, no missing keys, no
    duplicate option within an item and finite, non-negative probabilities."""
    _require_columns(model_long, MODEL_COLUMNS, "model results")
    if model_long.empty:
        raise ValueError("model results are empty")
    _reject_missing_keys(model_long, [*ITEM_KEYS, "option"], "model results")
    duplicated = model_long.duplicated([*ITEM_KEYS, "option"])
    if duplicated.any():
        row = model_long.loc[duplicated].iloc[0]
        raise ValueError(f"{_item_name(row)}: option {row['option']} appears more than once")
    prob = model_long["prob"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(prob) | (prob < 0)
    if bad.any():
        row = model_long.loc[bad].iloc[0]
        raise ValueError(
            f"{_item_name(row)}: option {row['option']} has probability {row['prob']} "
            f"(must be finite and non-negative)"
        )


def check_human_shares(human_shares: pd.DataFrame) -> None:
    """Raise ValueError unless the table has the share columns, no missing keys, no duplicate
    option and finite non-negative shares summing to 1 per country × question."""
    _require_columns(human_shares, HUMAN_COLUMNS, "human shares")
    if human_shares.empty:
        raise ValueError("human shares are empty")
    _reject_missing_keys(human_shares, [*HUMAN_KEYS, "option"], "human shares")
    duplicated = human_shares.duplicated([*HUMAN_KEYS, "option"])
    if duplicated.any():
        row = human_shares.loc[duplicated].iloc[0]
        raise ValueError(
            f"human shares: country {row['country']} question {row['question']} lists "
            f"option {row['option']} more than once"
        )
    share = human_shares["share"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(share) | (share < 0)
    if bad.any():
        row = human_shares.loc[bad].iloc[0]
        raise ValueError(
            f"human shares: country {row['country']} question {row['question']} option "
            f"{row['option']} has share {row['share']} (must be finite and non-negative)"
        )
    totals = human_shares.groupby(list(HUMAN_KEYS))["share"].sum()
    off = totals.loc[(totals - 1.0).abs() > SHARE_SUM_TOLERANCE]
    if len(off):
        (country, question), total = off.index[0], off.iloc[0]
        raise ValueError(
            f"human shares: country {country} question {question} sum to {total:.6g}, not 1"
        )


def _require_columns(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} lack column(s) {missing}; have {list(table.columns)}")


def _reject_missing_keys(table: pd.DataFrame, keys: Sequence[str], name: str) -> None:
    for column in keys:
        if table[column].isna().any():
            raise ValueError(f"{name}: column {column!r} has missing values")


def _item_name(row: pd.Series | dict[str, object]) -> str:
    image = row["image"]
    where = f" image {image!r}" if image != "" else ""
    return (
        f"model {row['model']} condition {row['condition']} country {row['country']} "
        f"question {row['question']}{where}"
    )


def _human_options(human: pd.DataFrame, country: object, question: object) -> list[int]:
    match = (human["country"] == country) & (human["question"] == question)
    return sorted(int(o) for o in human.loc[match, "option"])


def _raise_extra_options(unmatched: pd.DataFrame, human: pd.DataFrame) -> None:
    first = unmatched.iloc[0]
    options = _human_options(human, first["country"], first["question"])
    if not options:
        raise ValueError(
            f"{_item_name(first)}: the human data has no answers for country "
            f"{first['country']} question {first['question']}"
        )
    same_item = np.ones(len(unmatched), dtype=bool)
    for key in ITEM_KEYS:
        same_item &= (unmatched[key] == first[key]).to_numpy()
    extra = sorted(int(o) for o in unmatched.loc[same_item, "option"])
    raise ValueError(
        f"{_item_name(first)}: model has option code(s) {extra} that the human answers lack "
        f"(human options {options})"
    )


def _raise_missing_options(item: pd.Series, merged: pd.DataFrame, human: pd.DataFrame) -> None:
    options = _human_options(human, item["country"], item["question"])
    same_item = np.ones(len(merged), dtype=bool)
    for key in ITEM_KEYS:
        same_item &= (merged[key] == item[key]).to_numpy()
    present = {int(o) for o in merged.loc[same_item, "option"]}
    missing = [o for o in options if o not in present]
    raise ValueError(
        f"{_item_name(item)}: model lacks option code(s) {missing} that the human answers have "
        f"(human options {options})"
    )
