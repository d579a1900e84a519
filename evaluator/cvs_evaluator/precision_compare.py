"""What a lower precision costs on the survey: two engines' result rows, item by item.

Why this module exists: a precision is worth having only if the answers it gives stay those of
fp32, measured where the study looks. `compare_rows` takes two engines' result rows (the same
items, e.g. a run and its `--compare-to` sample, or the benchmark's variants) and gives the mean
Jensen–Shannon distance between option distributions, top-1 agreement and the largest move of a
section's mean similarity to the human answers (pooled over countries, and per section ×
country, the study's unit). The distances are `cvs_runtime.comparison`'s, like every other
comparison in the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cvs_evaluator.aggregate import question_similarities, section_means
from cvs_evaluator.metrics import item_similarities
from cvs_evaluator.results import model_long
from cvs_runtime.comparison import js_distance, top1_agrees


@dataclass(frozen=True)
class Comparison:
    """Engine B against engine A over the items both scored."""

    items: int
    """Items compared (scored on both)."""
    mean_js: float
    """Mean Jensen–Shannon distance (natural log) between option distributions."""
    max_js: float
    """Largest such distance."""
    top1: float
    """Share of items whose most likely option agrees."""
    max_section_shift: float
    """Largest |Δ| of a section's mean similarity, pooled over countries."""
    shifted_section: str
    """The section where it happened."""
    max_section_country_shift: float
    """Largest |Δ| of a section × country mean similarity (the study's table)."""


def compare_rows(
    rows_a: pd.DataFrame, rows_b: pd.DataFrame, shares: pd.DataFrame, section_of: dict[str, str]
) -> Comparison:
    """Distribution agreement and section shift of B against A (items scored on both)."""
    keys = ["item_id"]
    a = rows_a[rows_a["status"] == "scored"].set_index(keys)
    b = rows_b[rows_b["status"] == "scored"].set_index(keys)
    common = a.index.intersection(b.index)
    if len(common) == 0:
        raise ValueError("the two engines scored no item in common")
    js: list[float] = []
    agree: list[bool] = []
    for item in common:
        p = np.asarray(a.at[item, "distribution"], dtype=np.float64)
        q = np.asarray(b.at[item, "distribution"], dtype=np.float64)
        js.append(js_distance(p, q))
        agree.append(top1_agrees(p, q))
    pooled: list[pd.Series] = []
    per_country: list[pd.Series] = []
    for rows in (a.loc[common].reset_index(), b.loc[common].reset_index()):
        rows = rows.assign(model="m")  # both sides under one name: the join is by section
        per_question = question_similarities(item_similarities(model_long(rows), shares))
        per_question["section"] = per_question["question"].map(section_of)
        pooled.append(per_question.groupby("section")["similarity"].mean())
        table = section_means(per_question.drop(columns="section"), section_of)
        per_country.append(table.set_index(["country", "section"])["similarity"])
    shift = (pooled[1] - pooled[0]).abs()
    country_shift = (per_country[1] - per_country[0]).abs()
    return Comparison(
        items=len(common),
        mean_js=float(np.mean(js)),
        max_js=float(np.max(js)),
        top1=float(np.mean(agree)),
        max_section_shift=float(shift.max()),
        shifted_section=str(shift.idxmax()),
        max_section_country_shift=float(country_shift.max()),
    )
