"""From per-item similarities to the study's tables: section means, changes, tests, intervals.

Everything here starts from a *question table*: one row per (model, condition, country, question)
with a `similarity`. Two tables of that shape exist:
- `question_similarities(item_sims)`: the mean over a question's images of the per-item
  similarities (for the text condition, with one item per question, the item's similarity);
- `marginal_similarities(model_long, human_shares)`: average the model's option distributions over
  a question's images first, then take the similarity of that average ("marginal" in the study).
Every aggregate below accepts either.

The unit of every aggregate is a (country, question) pair. Grouped per country, a section mean is
the plain mean over the country's questions in that section, so each question weighs the same
however many images it was asked with. Grouped per income group (`income_of` given), it is the
mean over all (country, question) pairs of the group's countries: a country weighs by how many of
the section's questions it has. Countries whose income group is None are left out and counted
(`n_left_out`); a country missing from `income_of` altogether is an error.

A section named `ALL_SECTIONS` ("all") pools every section: the mean over all questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from cvs_evaluator.metrics import QUESTION_KEYS, align_options, grouped_similarities

ALL_SECTIONS = "all"
"""Section label of rows that pool every section."""
INCOME_GROUP = "income_group"
"""Column that replaces `country` when an aggregate is split by income group."""
QUESTION_TABLE_COLUMNS: tuple[str, ...] = (*QUESTION_KEYS, "similarity")
"""Columns every aggregate needs in its input table."""
PERMUTATION_RESAMPLES = 10_000
"""Sign flips drawn per permutation test (all 2^n patterns instead when that is fewer)."""
PERMUTATION_COLUMNS: tuple[str, ...] = (
    "condition_a",
    "condition_b",
    "n_pairs",
    "mean_a",
    "mean_b",
    "mean_diff",
    "p_value",
)
"""Columns of a permutation-test row after its group keys."""
BOOTSTRAP_RESAMPLES = 2_000
"""Resamples per bootstrap interval."""


def question_similarities(item_sims: pd.DataFrame) -> pd.DataFrame:
    """Mean item similarity per (model, condition, country, question), over the question's images.

    Input: `item_similarities`' output. Output: the question keys, `similarity` (the mean over
    images) and `n_images` (items averaged; 1 for text prompts), sorted by the keys.
    """
    _require(item_sims, (*QUESTION_TABLE_COLUMNS, "image"), "item similarities")
    grouped = item_sims.groupby(list(QUESTION_KEYS), sort=True)
    return grouped.agg(similarity=("similarity", "mean"), n_images=("image", "size")).reset_index()


def marginal_similarities(model_long: pd.DataFrame, human_shares: pd.DataFrame) -> pd.DataFrame:
    """Similarity of the model's image-averaged distribution per (model, condition, country,
    question) to the country's answers.

    Each item's probabilities are first normalised to sum to 1, then averaged option by option
    over the question's images (every image weighs the same), then compared with the human
    shares. Options are checked per item as in `item_similarities`. Output: the question keys,
    `n_options`, `similarity`, `n_images`, sorted by the keys.
    """
    aligned = align_options(model_long, human_shares)
    item_keys = [*QUESTION_KEYS, "image"]
    aligned["prob"] = aligned["prob"] / aligned.groupby(item_keys)["prob"].transform("sum")
    averaged = (
        aligned.groupby([*QUESTION_KEYS, "option"], sort=True)
        .agg(prob=("prob", "mean"), share=("share", "first"))
        .reset_index()
    )
    result = grouped_similarities(averaged, QUESTION_KEYS)
    n_images = aligned.groupby(list(QUESTION_KEYS), sort=True)["image"].nunique()
    return result.join(n_images.rename("n_images"), on=list(QUESTION_KEYS))


def section_means(
    question_sims: pd.DataFrame,
    section_of: Mapping[str, str],
    *,
    income_of: Mapping[str, str | None] | None = None,
    overall: bool = False,
) -> pd.DataFrame:
    """Mean similarity per model × condition × country (or income group) × section.

    The mean is over the (country, question) pairs in the group (see the module docstring).
    Columns: model, condition, country or income_group, section, similarity, n_questions
    (distinct questions), n_pairs (pairs averaged); with `income_of`, also n_countries and
    n_left_out. `overall` adds rows with section "all" pooling every section.
    """
    table, group, left_out = _prepare(question_sims, section_of, income_of)
    if overall:
        table = _with_overall(table)
    keys = ["model", "condition", group, "section"]
    result = _pooled(table, keys)
    return _finish(result, keys, income_of, left_out, counted=table)


def percent_change(mean_a: Any, mean_b: Any) -> Any:
    """(b − a) / a × 100: the change of the means in percent of a (similarity is at least
    1 − √ln 2 ≈ 0.17, so a is never 0). Scalars or aligned columns."""
    return (mean_b - mean_a) / mean_a * 100.0


def permutation_tests(
    question_sims: pd.DataFrame,
    section_of: Mapping[str, str],
    condition_a: str,
    condition_b: str,
    *,
    income_of: Mapping[str, str | None] | None = None,
    seed: int = 0,
    n_resamples: int = PERMUTATION_RESAMPLES,
) -> pd.DataFrame:
    """Paired sign-flip test of `condition_b` against `condition_a` per model × section.

    Pools every country (or, with `income_of`, the countries of each income group). The data are
    the differences b − a of the (country, question) pairs scored under both conditions; the
    statistic is their mean; the null flips each difference's sign independently
    (`scipy.stats.permutation_test`, permutation_type="samples", two-sided, `n_resamples`
    flips, or all 2^n when fewer, random_state=`seed` for every row). Section "all" pools every
    section. Columns: model, [income_group,] section, condition_a, condition_b, n_pairs, mean_a,
    mean_b, mean_diff, p_value (NaN for a single pair), n_unpaired (+ n_countries, n_left_out
    with `income_of`).
    """
    paired, _, left_out = _paired(question_sims, section_of, condition_a, condition_b, income_of)
    keys = ["model", "section"] if income_of is None else ["model", INCOME_GROUP, "section"]
    complete = paired.loc[paired["paired"]]
    rows = []
    for key, block in complete.groupby(keys, sort=True):
        diff = (block["similarity_b"] - block["similarity_a"]).to_numpy(dtype=np.float64)
        p_value = sign_flip_p(diff, seed=seed, n_resamples=n_resamples)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "condition_a": condition_a,
                "condition_b": condition_b,
                "n_pairs": diff.size,
                "mean_a": float(block["similarity_a"].mean()),
                "mean_b": float(block["similarity_b"].mean()),
                "mean_diff": float(diff.mean()),
                "p_value": float(p_value),
            }
        )
    result = pd.DataFrame(
        rows,
        columns=[*keys, *PERMUTATION_COLUMNS],
    )
    result = _with_unpaired(result, paired, keys)
    return _finish(result, keys, income_of, left_out, counted=complete)


def sign_flip_p(
    diff: NDArray[np.float64], *, seed: int, n_resamples: int = PERMUTATION_RESAMPLES
) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean(diff) = 0
    (`scipy.stats.permutation_test`, all 2^n flips when fewer than `n_resamples`, seeded); NaN
    for fewer than two differences (scipy needs two; one pair cannot be tested)."""
    if diff.size < 2:
        return float("nan")
    from scipy import stats  # here, not at import: it costs 0.6 s of a run's cold start

    test = stats.permutation_test(
        (diff,),
        _mean_last_axis,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        random_state=seed,
        batch=1_000,
    )
    return float(test.pvalue)


def bootstrap_section_means(
    question_sims: pd.DataFrame,
    section_of: Mapping[str, str],
    *,
    income_of: Mapping[str, str | None] | None = None,
    seed: int = 0,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Percentile bootstrap interval of each section mean, resampling the section's questions.

    Groups as `section_means` (without "all"). A resample draws the group's questions with
    replacement; each drawn question brings all of its (country, question) pairs, and the
    statistic is the mean over the drawn pairs (per country: the mean over the drawn questions).
    `scipy.stats.bootstrap`, method="percentile", `n_resamples`, random_state=`seed` for every
    row. A group with one question has no interval (ci_low, ci_high NaN). Columns: the
    `section_means` columns plus ci_low and ci_high.
    """
    table, group, left_out = _prepare(question_sims, section_of, income_of)
    keys = ["model", "condition", group, "section"]
    result = _pooled(table, keys)
    per_question = (
        table.groupby([*keys, "question"], sort=True)["similarity"]
        .agg(["sum", "size"])
        .reset_index()
    )
    low, high = [], []
    for _, block in per_question.groupby(keys, sort=True):
        sums = block["sum"].to_numpy(dtype=np.float64)  # (questions,)
        sizes = block["size"].to_numpy(dtype=np.float64)  # (questions,) pairs per question
        if sums.size < 2:
            low.append(np.nan)
            high.append(np.nan)
            continue
        from scipy import stats

        interval = stats.bootstrap(
            (sums, sizes),
            _ratio_of_sums,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            random_state=seed,
        ).confidence_interval
        low.append(float(interval.low))
        high.append(float(interval.high))
    result["ci_low"] = low  # both groupbys sort by the same keys: rows line up
    result["ci_high"] = high
    return _finish(result, keys, income_of, left_out, counted=table)


def _mean_last_axis(values: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    return np.asarray(np.mean(values, axis=axis), dtype=np.float64)


def _ratio_of_sums(
    sums: NDArray[np.float64], sizes: NDArray[np.float64], axis: int = -1
) -> NDArray[np.float64]:
    # Mean over the pairs of the drawn questions: (sum of their similarities) / (their pairs).
    return np.asarray(np.sum(sums, axis=axis) / np.sum(sizes, axis=axis), dtype=np.float64)


def _require(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} lack column(s) {missing}; have {list(table.columns)}")
    if table.empty:
        raise ValueError(f"{name} are empty")


def _prepare(
    question_sims: pd.DataFrame,
    section_of: Mapping[str, str],
    income_of: Mapping[str, str | None] | None,
) -> tuple[pd.DataFrame, str, list[str]]:
    """The question table with `section` (and `income_group`), its group column, countries left
    out."""
    _require(question_sims, QUESTION_TABLE_COLUMNS, "question similarities")
    duplicated = question_sims.duplicated(list(QUESTION_KEYS))
    if duplicated.any():
        row = question_sims.loc[duplicated].iloc[0]
        raise ValueError(
            "question similarities hold more than one row for "
            + ", ".join(f"{k} {row[k]}" for k in QUESTION_KEYS)
            + " (average over images first: question_similarities)"
        )
    table = question_sims.loc[:, list(QUESTION_TABLE_COLUMNS)].copy()
    unknown = sorted(set(table["question"]) - set(section_of))
    if unknown:
        raise ValueError(f"no section known for question(s) {unknown[:10]}")
    table["section"] = table["question"].map(dict(section_of))
    if income_of is None:
        return table, "country", []
    countries = sorted(set(table["country"]))
    unlisted = [c for c in countries if c not in income_of]
    if unlisted:
        raise ValueError(
            f"no income group entry for country(ies) {unlisted}: classify them, or map them "
            f"to None to leave them out"
        )
    left_out = [c for c in countries if income_of[c] is None]
    table = table.loc[~table["country"].isin(left_out)].copy()
    if table.empty:
        raise ValueError(f"every country lacks an income group: {left_out}")
    table[INCOME_GROUP] = table["country"].map(dict(income_of))
    return table, INCOME_GROUP, left_out


def _with_overall(table: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([table, table.assign(section=ALL_SECTIONS)], ignore_index=True)


def _pooled(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return (
        table.groupby(keys, sort=True)
        .agg(
            similarity=("similarity", "mean"),
            n_questions=("question", "nunique"),
            n_pairs=("question", "size"),
        )
        .reset_index()
    )


def _paired(
    question_sims: pd.DataFrame,
    section_of: Mapping[str, str],
    condition_a: str,
    condition_b: str,
    income_of: Mapping[str, str | None] | None,
) -> tuple[pd.DataFrame, str, list[str]]:
    """One row per (model, country, question) scored under a or b: similarity_a, similarity_b,
    paired (both present); with the section rows repeated under section "all"."""
    if condition_a == condition_b:
        raise ValueError(f"compare two different conditions, got {condition_a!r} twice")
    table, group, left_out = _prepare(question_sims, section_of, income_of)
    present = set(table["condition"])
    for condition in (condition_a, condition_b):
        if condition not in present:
            raise ValueError(f"no rows for condition {condition!r}; have {sorted(present)}")
    shared = ["model", "country", "question", "section"] + ([group] if group != "country" else [])
    a = table.loc[table["condition"] == condition_a, [*shared, "similarity"]]
    b = table.loc[table["condition"] == condition_b, [*shared, "similarity"]]
    paired = a.merge(b, on=shared, how="outer", suffixes=("_a", "_b"), validate="one_to_one")
    paired["paired"] = paired["similarity_a"].notna() & paired["similarity_b"].notna()
    return _with_overall(paired), group, left_out


def _with_unpaired(result: pd.DataFrame, paired: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    unpaired = (~paired["paired"]).groupby([paired[k] for k in keys]).sum().rename("n_unpaired")
    result = result.join(unpaired, on=keys)
    result["n_unpaired"] = result["n_unpaired"].fillna(0).astype(np.int64)
    return result


def _finish(
    result: pd.DataFrame,
    keys: list[str],
    income_of: Mapping[str, str | None] | None,
    left_out: list[str],
    counted: pd.DataFrame,
) -> pd.DataFrame:
    """Sort; with an income split add n_countries (countries behind each row, from the pairs in
    `counted`) and n_left_out (unclassified countries left out of the whole table), and list
    the latter in `result.attrs["left_out"]`."""
    result = result.sort_values(keys, kind="stable").reset_index(drop=True)
    if income_of is not None:
        n_countries = counted.groupby(keys)["country"].nunique().rename("n_countries")
        result = result.join(n_countries, on=keys)
        result["n_left_out"] = len(left_out)
        result.attrs["left_out"] = list(left_out)
    return result
