"""Paired changes between two conditions, per group × section, with sign-flip permutation tests.

The same statistic and test as `cvs_evaluator.aggregate.permutation_tests` (the mean of the
paired differences b − a over (country, question) pairs; a two-sided sign-flip test via
`scipy.stats.permutation_test`, all 2^n flips when fewer than the resamples, seeded), with two
differences a report needs: the groups are any column (each country, every country pooled, an
income group), and a group with a single pair gets a row with no p-value instead of stopping
the report (scipy needs two observations; with one the test cannot tell anything).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from cvs_evaluator.aggregate import (
    ALL_SECTIONS,
    PERMUTATION_RESAMPLES,
    percent_change,
    sign_flip_p,
)

POOLED = "all"
"""Group label of rows pooling every group."""
CHANGE_COLUMNS: tuple[str, ...] = (
    "condition_a",
    "condition_b",
    "n_pairs",
    "mean_a",
    "mean_b",
    "mean_diff",
    "percent_change",
    "p_value",
    "n_unpaired",
    "n_countries",
)
"""Columns of a change row after its group and section."""


def paired_changes(
    question_sims: pd.DataFrame,
    section_of: Mapping[str, str],
    condition_a: str,
    condition_b: str,
    *,
    group_of: Mapping[str, str | None] | None = None,
    group: str = "country",
    pooled: bool = True,
    seed: int = 0,
    n_resamples: int = PERMUTATION_RESAMPLES,
) -> pd.DataFrame:
    """b − a per group × section (and section "all") over the (country, question) pairs scored
    under both conditions.

    `question_sims`: one row per (condition, country, question) with `similarity` (as
    `aggregate.question_similarities`). Groups are the countries, or with `group_of` (ISO3 →
    group, None: left out) the countries' groups, in a column named `group`; `pooled` adds rows
    with group "all". Columns: `group`, section, then `CHANGE_COLUMNS` (percent_change: of the
    mean of a; n_unpaired: pairs scored under one condition only).
    """
    keys = ["country", "question"]
    a = question_sims.loc[question_sims["condition"] == condition_a, [*keys, "similarity"]]
    b = question_sims.loc[question_sims["condition"] == condition_b, [*keys, "similarity"]]
    pairs = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"), validate="one_to_one")
    pairs["section"] = pairs["question"].map(dict(section_of))
    if group_of is None:
        pairs[group] = pairs["country"]
    else:
        pairs[group] = pairs["country"].map(lambda c: group_of.get(c))
        pairs = pairs.loc[pairs[group].notna()]
    parts = [pairs, pairs.assign(section=ALL_SECTIONS)]
    if pooled:
        parts += [p.assign(**{group: POOLED}) for p in parts]
    expanded = pd.concat(parts, ignore_index=True)
    rows = []
    for (name, section), block in expanded.groupby([group, "section"], sort=True):
        both = block["similarity_a"].notna() & block["similarity_b"].notna()
        complete = block.loc[both]
        if complete.empty:
            continue
        diff = (complete["similarity_b"] - complete["similarity_a"]).to_numpy(np.float64)
        mean_a = float(complete["similarity_a"].mean())
        mean_b = float(complete["similarity_b"].mean())
        rows.append(
            {
                group: name,
                "section": section,
                "condition_a": condition_a,
                "condition_b": condition_b,
                "n_pairs": diff.size,
                "mean_a": mean_a,
                "mean_b": mean_b,
                "mean_diff": float(diff.mean()),
                "percent_change": percent_change(mean_a, mean_b),
                "p_value": sign_flip_p(diff, seed=seed, n_resamples=n_resamples),
                "n_unpaired": int((~both).sum()),
                "n_countries": int(complete["country"].nunique()),
            }
        )
    return pd.DataFrame(rows, columns=[group, "section", *CHANGE_COLUMNS])
