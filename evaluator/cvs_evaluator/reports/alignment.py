"""The alignment report: a run's results frame → the study's tables, beside the human baselines.

Why this module exists: `results.parquet` holds one row per item; a reader wants the study's
tables. Every number here comes from the existing analyses (`cvs_evaluator.aggregate`,
`baselines`, `evaluate.condition_effects`) applied to the run's items; this module only converts
the results frame into their input (the metrics' long table), picks the groupings and orders the
rows. Items without a model distribution (`model_dist` null: low option mass, …) are never
dropped silently: they are counted and listed in the `not_scored` table; images the run could
not use (`cvs_evaluator.skipped_images`) are listed, with their reasons, in `skipped_images`.

Baselines are computed over the same (country, question) pairs as the model's means: for each
condition and country, only the questions scored for that country under that condition count
(the other countries' answers still all serve as stand-ins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from cvs_evaluator.aggregate import (
    ALL_SECTIONS,
    INCOME_GROUP,
    bootstrap_section_means,
    marginal_similarities,
    question_similarities,
    section_means,
)
from cvs_evaluator.baselines import section_baselines
from cvs_evaluator.metrics import item_similarities
from cvs_evaluator.questions import QuestionBank
from cvs_evaluator.reports.paired import POOLED, paired_changes
from cvs_evaluator.reports.tables import ReportTable
from cvs_evaluator.results import model_long

CONDITION_ORDER: tuple[str, ...] = ("text", "image", "image+country")
"""Conditions in the order tables list them (others follow, sorted)."""
EFFECT_PAIRS: tuple[tuple[str, str], ...] = (("text", "image"), ("text", "image+country"))
"""(a, b) condition changes reported as b − a, when the run has both."""
INCOME_ORDER: tuple[str, ...] = (
    "High income",
    "Upper middle income",
    "Lower middle income",
    "Low income",
)
"""World Bank income groups, richest first (`cvs_evaluator.countries.income_groups` values)."""
SCREENING_COLUMNS: tuple[str, ...] = ("image_id", "country", "category", "rank", "kept")
"""Columns a screening table must have (one row per screened image)."""
ALL_COUNTRIES = POOLED
"""`country` of rows pooling every country."""


@dataclass(frozen=True)
class Entry:
    """A question-bank entry seen through one section label (for the pooled baselines)."""

    section: str
    """The section the baselines group it under."""


@dataclass(frozen=True)
class PooledBank:
    """A bank whose every question belongs to one section: baselines over all sections."""

    questions: dict[str, Entry]
    """Question id → entry (section `ALL_SECTIONS`)."""
    sections: list[str]
    """`[ALL_SECTIONS]`."""


@dataclass(frozen=True)
class AlignmentReport:
    """Every table of the alignment page, as frames."""

    model: str
    """The run's model."""
    conditions: list[str]
    """Conditions with at least one scored item, in `CONDITION_ORDER`."""
    countries: list[str]
    """Countries with at least one scored item, sorted."""
    section_order: list[str]
    """The bank's sections present in the run, questionnaire order, then "all"."""
    items: pd.DataFrame
    """One row per scored item: item keys, n_options, similarity (recomputed from the shares)."""
    sections: pd.DataFrame
    """Mean similarity per condition × country × section (and "all"), its bootstrap 95%
    interval over questions, and the human baselines over the same pairs."""
    effects: pd.DataFrame
    """b − a per (a, b) in `EFFECT_PAIRS`, per country ("all": pooled) × section, with the paired
    sign-flip permutation p-value."""
    income: pd.DataFrame
    """Mean similarity per condition × income group × section with bootstrap intervals."""
    income_effects: pd.DataFrame
    """b − a per income group × section with p-values."""
    income_left_out: list[str]
    """Countries without an income group (left out of the income tables)."""
    marginal: pd.DataFrame
    """Image conditions: similarity of the image-averaged distribution beside the mean of the
    per-image similarities, per condition × country × section."""
    screening: pd.DataFrame | None
    """Kept and dropped images per country × category (None: screening was off)."""
    not_scored: pd.DataFrame
    """Items without a model distribution, with their status and reason."""
    skipped_images: pd.DataFrame | None = None
    """Images the run could not use: image_id, country, category, reason, detail (None: the
    run had no images)."""

    def tables(self) -> list[ReportTable]:
        """The page's tables, in page order (the CSV and Markdown hold the same)."""
        left_out = (
            f" Left out (no income group): {', '.join(self.income_left_out)}."
            if self.income_left_out
            else ""
        )
        tables = [
            ReportTable(
                "sections",
                "Mean similarity by section, beside the human baselines",
                self.sections,
                "similarity: mean over the country's questions of 1 − Jensen–Shannon distance "
                "(image conditions: a question's images averaged first); ci_low/ci_high: "
                "percentile bootstrap 95% interval resampling questions (none with one question). "
                "Baselines over the same (country, question) pairs: uniform answers, the other "
                "countries' pooled answers, the closest other country's answers "
                "(closest_other_country) and the mean other country.",
            ),
            ReportTable(
                "effects",
                "Change between conditions (b − a)",
                self.effects,
                "Over the (country, question) pairs scored under both conditions; country "
                "'all' pools every country. p_value: paired sign-flip permutation test of the "
                "mean difference (two-sided; none for a single pair).",
            ),
            ReportTable(
                "income",
                "Mean similarity by income group",
                self.income,
                "Mean over the (country, question) pairs of the group's countries; bootstrap "
                "95% interval over questions." + left_out,
            ),
            ReportTable(
                "income_effects",
                "Change between conditions by income group (b − a)",
                self.income_effects,
                "Paired sign-flip permutation test over the group's (country, question) pairs.",
            ),
            ReportTable(
                "marginal",
                "Marginal similarity (image conditions)",
                self.marginal,
                "marginal_similarity: the model's option distributions averaged over a "
                "question's images, then compared with the country's answers; similarity: the "
                "mean of the per-image similarities, for comparison.",
            ),
        ]
        if self.screening is not None:
            tables.append(
                ReportTable(
                    "screening",
                    "Image screening: kept and dropped images",
                    self.screening,
                    "An image is kept when the model ranks its true country among its top k "
                    "guesses; unranked: the true country was not a candidate.",
                )
            )
        tables.append(
            ReportTable(
                "not_scored",
                "Items not scored",
                self.not_scored,
                "Kept in results.parquet with a null model distribution; left out of every "
                "mean above.",
            )
        )
        if self.skipped_images is not None:
            tables.append(
                ReportTable(
                    "skipped_images",
                    "Skipped images",
                    self.skipped_images,
                    "Images that could not be used (missing, empty, unreadable, not decodable, "
                    "truncated, over the pixel limit, outside the image root): none of their "
                    "items was scored; the run went on without them. The list is "
                    "skipped_images.json in the run folder.",
                )
            )
        return tables


def scored_mask(results: pd.DataFrame) -> pd.Series:
    """Rows with status "scored" and a model distribution."""
    return (results["status"] == "scored") & results["model_dist"].notna()


def results_model_long(results: pd.DataFrame) -> pd.DataFrame:
    """The scored rows of a results frame as the metrics' long table (model, condition, country,
    question, image, option, prob): `model_dist` exploded against `option_codes`."""
    rows = results.loc[
        scored_mask(results),
        ["model", "condition", "country", "question", "image", "status", "option_codes"],
    ].assign(distribution=results["model_dist"])
    return model_long(rows)


def alignment_report(
    results: pd.DataFrame,
    shares: pd.DataFrame,
    bank: QuestionBank,
    *,
    income_of: Mapping[str, str | None],
    screening: pd.DataFrame | None = None,
    skipped_images: pd.DataFrame | None = None,
    seed: int = 0,
) -> AlignmentReport:
    """Every alignment table of one run (one model). `income_of` maps ISO3 → income group; a
    country it lacks is treated as having none (left out of the income tables and named).
    `skipped_images`: the run's skipped images (`skipped_images.read_skipped`), listed as
    given."""
    models = sorted(set(results["model"]))
    if len(models) != 1:
        raise ValueError(f"a run holds one model; the results hold {models}")
    long = results_model_long(results)
    if long.empty:
        raise ValueError("no item of the run has a model distribution: nothing to report")
    items = item_similarities(long, shares)
    question_sims = question_similarities(items)
    section_of = bank.section_of()
    present = set(question_sims["question"].map(section_of))
    section_order = [s for s in bank.sections if s in present] + [ALL_SECTIONS]
    countries = sorted(set(question_sims["country"]))
    incomes = {c: income_of.get(c) for c in countries}
    orders = {
        "condition": _condition_order(question_sims["condition"]),
        "section": section_order,
        "country": [ALL_COUNTRIES, *countries],
        INCOME_GROUP: list(INCOME_ORDER),
    }

    sections = _section_table(question_sims, shares, bank, seed=seed)
    effects = _effect_table(question_sims, section_of, seed=seed)
    income, income_effects = _income_tables(question_sims, section_of, incomes, seed=seed)
    marginal = _marginal_table(long, shares, section_of, sections)
    return AlignmentReport(
        model=models[0],
        conditions=orders["condition"],
        countries=countries,
        section_order=section_order,
        items=items,
        sections=sort_by(sections, orders),
        effects=sort_by(effects, orders),
        income=sort_by(income, orders),
        income_effects=sort_by(income_effects, orders),
        income_left_out=sorted(c for c, group in incomes.items() if group is None),
        marginal=sort_by(marginal, orders),
        screening=None if screening is None else screening_summary(screening),
        not_scored=not_scored_items(results),
        skipped_images=None if skipped_images is None else skipped_images.reset_index(drop=True),
    )


def not_scored_items(results: pd.DataFrame) -> pd.DataFrame:
    """Rows without a model distribution: item_id, condition, country, question, image, status,
    reason, option_mass."""
    columns = ["item_id", "condition", "country", "question", "image", "status", "reason"]
    rows = results.loc[~scored_mask(results), [*columns, "option_mass"]].copy()
    missing = (rows["status"] == "scored") & (rows["reason"] == "")
    rows.loc[missing, "reason"] = "status scored but no model distribution stored"
    return rows.sort_values("item_id", kind="stable").reset_index(drop=True)


def screening_summary(screening: pd.DataFrame) -> pd.DataFrame:
    """Per country × category (and category "all"): n_images, kept, dropped, unranked (true
    country not a candidate), kept_share."""
    missing = [c for c in SCREENING_COLUMNS if c not in screening.columns]
    if missing:
        raise ValueError(f"screening table lacks column(s) {missing}")
    table = screening.assign(kept=screening["kept"].astype(bool), unranked=screening["rank"].isna())
    everything = table.assign(category=ALL_SECTIONS)
    summary = (
        pd.concat([table, everything], ignore_index=True)
        .groupby(["country", "category"], sort=True)
        .agg(
            n_images=("image_id", "size"),
            kept=("kept", "sum"),
            unranked=("unranked", "sum"),
        )
        .reset_index()
    )
    summary["dropped"] = summary["n_images"] - summary["kept"]
    summary["kept_share"] = summary["kept"] / summary["n_images"]
    columns = ["country", "category", "n_images", "kept", "dropped", "unranked", "kept_share"]
    categories = sorted(set(table["category"]))
    return sort_by(summary.loc[:, columns], {"category": [*categories, ALL_SECTIONS]})


def sort_by(frame: pd.DataFrame, orders: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """`frame` sorted by those of `orders`' columns it has, each in its listed order (values not
    listed go last, sorted)."""
    keys = [column for column in orders if column in frame.columns]
    if not keys or frame.empty:
        return frame.reset_index(drop=True)

    def rank(column: pd.Series) -> pd.Series:
        listed = {value: i for i, value in enumerate(orders[str(column.name)])}
        extra = {v: len(listed) + i for i, v in enumerate(sorted(set(column) - set(listed)))}
        return column.map({**listed, **extra})

    return frame.sort_values(keys, key=rank, kind="stable").reset_index(drop=True)


def _condition_order(conditions: pd.Series) -> list[str]:
    present = set(conditions)
    return [c for c in CONDITION_ORDER if c in present] + sorted(present - set(CONDITION_ORDER))


def _pooled_section_of(section_of: Mapping[str, str]) -> dict[str, str]:
    return dict.fromkeys(section_of, ALL_SECTIONS)


def _section_table(
    question_sims: pd.DataFrame, shares: pd.DataFrame, bank: QuestionBank, *, seed: int
) -> pd.DataFrame:
    section_of = bank.section_of()
    means = pd.concat(
        [
            bootstrap_section_means(question_sims, section_of, seed=seed),
            bootstrap_section_means(question_sims, _pooled_section_of(section_of), seed=seed),
        ],
        ignore_index=True,
    )
    baselines = _baselines(question_sims, shares, bank)
    table = means.merge(baselines, on=["condition", "country", "section"], how="left")
    columns = ["condition", "country", "section", "similarity", "ci_low", "ci_high"]
    columns += ["n_questions", "uniform", "others_pooled", "closest_other"]
    return table.loc[:, [*columns, "closest_other_country", "mean_other"]]


def _baselines(
    question_sims: pd.DataFrame, shares: pd.DataFrame, bank: QuestionBank
) -> pd.DataFrame:
    """condition, country, section (and "all"), uniform, others_pooled, closest_other,
    closest_other_country, mean_other: each over the questions scored for that country under
    that condition. Countries scored on every question they asked share one computation."""
    in_run = shares.loc[shares["question"].isin(set(question_sims["question"]))]
    asked = {
        str(country): frozenset(block["question"]) for country, block in in_run.groupby("country")
    }
    scored = {
        (str(condition), str(country)): frozenset(block["question"])
        for (condition, country), block in question_sims.groupby(["condition", "country"])
    }
    complete = sorted({c for (_, c), qs in scored.items() if qs == asked.get(c)})
    computed: dict[tuple[str, frozenset[str]], pd.DataFrame] = {}
    if complete:
        together = _baselines_of(in_run, bank, complete)
        for country in complete:
            block = together.loc[together["country"] == country]
            computed[(country, asked[country])] = block
    frames = []
    for (condition, country), questions in scored.items():
        if (country, questions) not in computed:
            own = in_run.loc[(in_run["country"] != country) | in_run["question"].isin(questions)]
            computed[(country, questions)] = _baselines_of(own, bank, [country])
        frames.append(computed[(country, questions)].assign(condition=condition))
    return pd.concat(frames, ignore_index=True)


def _baselines_of(shares: pd.DataFrame, bank: QuestionBank, countries: list[str]) -> pd.DataFrame:
    pooled = PooledBank(
        questions={q: Entry(ALL_SECTIONS) for q in bank.questions}, sections=[ALL_SECTIONS]
    )
    long = pd.concat(
        [section_baselines(shares, bank, countries), section_baselines(shares, pooled, countries)],
        ignore_index=True,
    )
    wide = (
        long.pivot_table(index=["country", "section"], columns="baseline", values="similarity")
        .reindex(columns=["uniform", "others_pooled", "best_other", "mean_other"])
        .rename(columns={"best_other": "closest_other"})
    )
    wide.columns.name = None
    closest = long.loc[long["baseline"] == "best_other"].set_index(["country", "section"])["other"]
    wide["closest_other_country"] = closest.reindex(wide.index)
    return wide.reset_index()


def _effect_table(
    question_sims: pd.DataFrame, section_of: Mapping[str, str], *, seed: int
) -> pd.DataFrame:
    present = set(question_sims["condition"])
    frames = [
        paired_changes(question_sims, section_of, a, b, seed=seed)
        for a, b in EFFECT_PAIRS
        if {a, b} <= present
    ]
    columns = ["condition_a", "condition_b", "country", "section", "n_pairs", "mean_a", "mean_b"]
    columns += ["mean_diff", "percent_change", "p_value", "n_unpaired"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).loc[:, columns]


def _income_tables(
    question_sims: pd.DataFrame,
    section_of: Mapping[str, str],
    income_of: Mapping[str, str | None],
    *,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    columns = ["condition", INCOME_GROUP, "section", "similarity", "ci_low", "ci_high"]
    columns += ["n_questions", "n_pairs", "n_countries"]
    effect_columns = ["condition_a", "condition_b", INCOME_GROUP, "section", "n_pairs", "mean_a"]
    effect_columns += ["mean_b", "mean_diff", "percent_change", "p_value", "n_countries"]
    if all(group is None for group in income_of.values()):
        return pd.DataFrame(columns=columns), pd.DataFrame(columns=effect_columns)
    means = pd.concat(
        [
            bootstrap_section_means(question_sims, section_of, income_of=income_of, seed=seed),
            bootstrap_section_means(
                question_sims, _pooled_section_of(section_of), income_of=income_of, seed=seed
            ),
        ],
        ignore_index=True,
    )
    present = set(question_sims["condition"])
    tests = [
        paired_changes(
            question_sims,
            section_of,
            a,
            b,
            group_of=income_of,
            group=INCOME_GROUP,
            pooled=False,
            seed=seed,
        )
        for a, b in EFFECT_PAIRS
        if {a, b} <= present
    ]
    if not tests:
        return means.loc[:, columns], pd.DataFrame(columns=effect_columns)
    effects = pd.concat(tests, ignore_index=True)
    return means.loc[:, columns], effects.loc[:, effect_columns]


def _marginal_table(
    long: pd.DataFrame,
    shares: pd.DataFrame,
    section_of: Mapping[str, str],
    sections: pd.DataFrame,
) -> pd.DataFrame:
    columns = ["condition", "country", "section", "marginal_similarity", "similarity"]
    images = long.loc[long["condition"] != "text"]
    if images.empty:
        return pd.DataFrame(columns=[*columns, "n_questions"])
    marginal = section_means(marginal_similarities(images, shares), section_of, overall=True)
    marginal = marginal.rename(columns={"similarity": "marginal_similarity"})
    per_image = sections.loc[:, ["condition", "country", "section", "similarity"]]
    table = marginal.merge(per_image, on=["condition", "country", "section"], how="left")
    return table.loc[:, [*columns, "n_questions"]]
