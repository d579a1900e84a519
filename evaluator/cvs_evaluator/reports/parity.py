"""Parity: does the run's engine and precision change the study's numbers, against a reference?

Why this module exists: an engine is worth using only if a reader can see, in survey terms,
that it gives the study's answers. Two results frames over the same items (the run, and the
comparison engine — usually the PyTorch reference at fp32 on a sample) are compared at three
levels (STYLE.md, "Parity checks that can fail"):
- item: the largest |Δ| of an option's log-prob, the Jensen–Shannon distance between the two
  option distributions (scipy, natural log), whether the most likely option agrees;
- verdict: fp32 must match the reference to `FP32_LOGPROB_TOLERANCE` in log-prob; a lower
  precision is judged against `cvs_export.precision.targets_for` (mean JS, top-1 agreement,
  largest section shift);
- study: the change of every section × country mean similarity and of the image − text effect,
  run minus compare over the same (country, question) pairs, each with a paired sign-flip
  permutation test of whether the change is detectable, and a one-sentence answer to "does
  this precision change what the study would conclude?".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from cvs_evaluator.aggregate import (
    ALL_SECTIONS,
    PERMUTATION_RESAMPLES,
    question_similarities,
    sign_flip_p,
)
from cvs_evaluator.reports.alignment import ALL_COUNTRIES, CONDITION_ORDER, sort_by
from cvs_evaluator.reports.tables import ReportTable
from cvs_runtime.comparison import js_distance, top1_agrees

if TYPE_CHECKING:
    from cvs_export.precision import Targets

FP32_LOGPROB_TOLERANCE = 1e-4
"""fp32 must match the reference to this in every option log-prob (DESIGN.md, "Engines")."""
STUDY_SHIFT = 0.01
"""How far a section mean may move before the study's table reads differently, when the
precision's targets name no section shift (the int8 target's figure)."""
SIGNIFICANCE = 0.05
"""A change with a permutation p-value below this is called detectable."""
Answer = Literal["no", "no, within the bound", "yes", "cannot tell"]
"""The answers to "does this precision change what the study would conclude?"."""


@dataclass(frozen=True)
class Check:
    """One figure judged against one bound."""

    name: str
    """What is measured."""
    value: float
    """The measured figure."""
    bound: float
    """The bound it is judged against."""
    direction: Literal["at most", "at least"]
    """Whether the figure must stay at or below the bound, or at or above it."""
    passed: bool
    """Whether it did (a NaN figure fails)."""


@dataclass(frozen=True)
class ParityReport:
    """The run against the comparison engine over the items both hold."""

    precision: str
    """The run's precision."""
    run_label: str
    """`engine/precision` of the run."""
    compare_label: str
    """`engine/precision` of the comparison engine."""
    items: pd.DataFrame
    """Per item: keys, max_abs_dlogprob, js_distance, top1_agrees (the last two empty unless
    both sides have a distribution), status_run, status_compare."""
    summary: dict[str, Any]
    """n_items, n_scored_both, n_status_differs, mean_js, max_js, top1, max_abs_dlogprob,
    worst_item, max_section_shift, max_section_country_shift."""
    rule: str
    """The verdict's rule in words."""
    checks: list[Check]
    """The figures judged."""
    passed: bool
    """Every check passed."""
    sections: pd.DataFrame
    """Per condition × country ("all": pooled) × section ("all": pooled): mean similarity of
    run and compare over the same pairs, their difference, n_pairs, p_value."""
    effects: pd.DataFrame
    """Per image condition × section: the image − text effect on each engine, its change and
    p_value, over the pairs scored under both conditions on both engines."""
    shift_bound: float
    """The section shift the answer is judged against."""
    answer: Answer
    """Does the precision change what the study would conclude?"""
    conclusion: str
    """The answer as a sentence, with the figures behind it."""
    logprobs_compare: NDArray[np.float64]
    """Every compared option log-prob of the comparison engine, flattened (for the scatter)."""
    logprobs_run: NDArray[np.float64]
    """The run's, in the same order."""

    def question(self) -> str:
        """The question the page answers."""
        return (
            f"Does {self.precision} ({self.run_label}) change what this study would conclude, "
            f"against {self.compare_label}?"
        )

    def to_json(self) -> dict[str, Any]:
        """parity.json's content (NaN written as null)."""
        return {
            "run": self.run_label,
            "compare": self.compare_label,
            "precision": self.precision,
            "summary": _json_safe(self.summary),
            "verdict": {
                "passed": self.passed,
                "rule": self.rule,
                "checks": [_json_safe(asdict(c)) for c in self.checks],
            },
            "alignment": {
                "shift_bound": self.shift_bound,
                "significance": SIGNIFICANCE,
                "sections": _records(self.sections),
                "effects": _records(self.effects),
            },
            "question": self.question(),
            "answer": self.answer,
            "conclusion": self.conclusion,
            "items": _records(self.items),
        }

    def tables(self) -> list[ReportTable]:
        """The page's tables."""
        checks = pd.DataFrame([asdict(c) for c in self.checks])
        return [
            ReportTable(
                "parity_summary",
                "Summary",
                pd.DataFrame({"figure": list(self.summary), "value": list(self.summary.values())}),
                "mean_js/max_js and top1 over the items both engines scored; max_abs_dlogprob "
                "over every compared item (worst_item); section shifts: largest |Δ| of a section "
                "mean pooled over countries, and of a section × country mean.",
            ),
            ReportTable("verdict", "Checks", checks, f"The rule: {self.rule}."),
            ReportTable(
                "parity_sections",
                "Section means: run − compare over the same items",
                self.sections,
                "similarity_run/similarity_compare: mean over the (country, question) pairs both "
                "engines scored; p_value: paired sign-flip permutation test of the mean "
                "per-question difference (two-sided).",
            ),
            ReportTable(
                "parity_effects",
                "Image − text effect on each engine",
                self.effects,
                "Over the (country, question) pairs scored under both conditions on both "
                "engines; p_value: paired sign-flip test of the per-pair change of the effect.",
            ),
            ReportTable(
                "parity_items",
                "Item by item",
                self.items,
                "max_abs_dlogprob: largest |Δ| of an option's full-vocabulary log-prob; "
                "js_distance: Jensen–Shannon distance (natural log) between the option "
                "distributions; top1_agrees: the most likely option is the same.",
            ),
        ]


def skipped_parity(reason: str) -> dict[str, str]:
    """parity.json when no comparison ran, e.g. {"skipped": "torch not installed"}."""
    return {"skipped": reason}


def parity_report(
    run: pd.DataFrame,
    compare: pd.DataFrame,
    *,
    precision: str,
    seed: int = 0,
    n_resamples: int = PERMUTATION_RESAMPLES,
) -> ParityReport:
    """Compare two results frames (results.parquet schema) over the item ids both hold."""
    run_label, compare_label = _label(run), _label(compare)
    items, logprobs = _item_table(run, compare)
    scored = items.loc[items["js_distance"].notna()]
    paired = _paired_questions(run, compare, set(scored["item_id"]))
    sections = _section_shifts(paired, seed=seed, n_resamples=n_resamples)
    effects = _effect_changes(paired, seed=seed, n_resamples=n_resamples)
    pooled = sections.loc[(sections["country"] == ALL_COUNTRIES)]
    pooled = pooled.loc[pooled["section"] != ALL_SECTIONS]
    by_country = sections.loc[sections["section"] != ALL_SECTIONS]
    worst = int(np.argmax(items["max_abs_dlogprob"].to_numpy(np.float64))) if len(items) else None
    summary: dict[str, Any] = {
        "n_items": len(items),
        "n_scored_both": len(scored),
        "n_status_differs": int((items["status_run"] != items["status_compare"]).sum()),
        "mean_js": _mean(scored["js_distance"]),
        "max_js": _max(scored["js_distance"]),
        "top1": _mean(scored["top1_agrees"].astype(float)),
        "max_abs_dlogprob": _max(items["max_abs_dlogprob"]),
        "worst_item": "" if worst is None else str(items["item_id"].iloc[worst]),
        "max_section_shift": _max(pooled["difference"].abs()),
        "max_section_country_shift": _max(by_country["difference"].abs()),
    }
    targets = _targets(precision)
    rule, checks = _verdict(precision, targets, summary)
    bound = (
        STUDY_SHIFT if targets is None or targets.section_shift is None else targets.section_shift
    )
    answer, conclusion = _conclusion(sections, effects, summary, bound)
    return ParityReport(
        precision=precision,
        run_label=run_label,
        compare_label=compare_label,
        items=items,
        summary=summary,
        rule=rule,
        checks=checks,
        passed=all(c.passed for c in checks),
        sections=sections,
        effects=effects,
        shift_bound=bound,
        answer=answer,
        conclusion=conclusion,
        logprobs_compare=logprobs[0],
        logprobs_run=logprobs[1],
    )


def _label(frame: pd.DataFrame) -> str:
    pairs = sorted(set(zip(frame["engine"], frame["precision"], strict=True)))
    if len(pairs) != 1:
        raise ValueError(f"a results frame holds one engine and precision; this one {pairs}")
    return f"{pairs[0][0]}/{pairs[0][1]}"


def _item_table(
    run: pd.DataFrame, compare: pd.DataFrame
) -> tuple[pd.DataFrame, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    keys = ["item_id", "condition", "country", "question", "section", "image"]
    joined = run.merge(compare, on="item_id", how="inner", suffixes=("_run", "_compare"))
    if joined.empty:
        raise ValueError("the run and the comparison hold no item id in common")
    rows = []
    flat_run: list[NDArray[np.float64]] = []
    flat_compare: list[NDArray[np.float64]] = []
    for record in joined.to_dict("records"):
        codes_run = np.asarray(record["option_codes_run"], dtype=np.int64)
        if not np.array_equal(codes_run, np.asarray(record["option_codes_compare"])):
            raise ValueError(f"item {record['item_id']}: the two engines list different options")
        lp_run = np.asarray(record["option_logprobs_run"], dtype=np.float64)
        lp_compare = np.asarray(record["option_logprobs_compare"], dtype=np.float64)
        flat_run.append(lp_run)
        flat_compare.append(lp_compare)
        js: float | None = None
        agrees: bool | None = None
        dist_run, dist_compare = record["model_dist_run"], record["model_dist_compare"]
        if _present(dist_run) and _present(dist_compare):
            p = np.asarray(dist_run, dtype=np.float64)
            q = np.asarray(dist_compare, dtype=np.float64)
            js = js_distance(p, q)  # 0 where rounding made the divergence negative
            agrees = top1_agrees(p, q)
        rows.append(
            {
                **{k: record[k if k == "item_id" else f"{k}_run"] for k in keys},
                "max_abs_dlogprob": float(np.max(np.abs(lp_run - lp_compare))),
                "js_distance": js,
                "top1_agrees": agrees,
                "status_run": record["status_run"],
                "status_compare": record["status_compare"],
            }
        )
    items = pd.DataFrame(rows)
    items["js_distance"] = items["js_distance"].astype("float64")
    logprobs = (
        np.concatenate(flat_compare) if flat_compare else np.zeros(0),
        np.concatenate(flat_run) if flat_run else np.zeros(0),
    )
    return items, logprobs


def _paired_questions(run: pd.DataFrame, compare: pd.DataFrame, item_ids: set[str]) -> pd.DataFrame:
    """condition, country, question, section, similarity_run, similarity_compare: per question
    the mean over its images of the stored similarity, over items both engines scored."""
    sides = []
    for frame in (run, compare):
        rows = frame.loc[frame["item_id"].isin(item_ids)]
        table = rows.loc[:, ["condition", "country", "question", "image", "similarity"]]
        sides.append(question_similarities(table.assign(model="m").astype({"similarity": float})))
    section_of = dict(zip(run["question"], run["section"], strict=True))
    keys = ["condition", "country", "question"]
    paired = sides[0].merge(sides[1], on=["model", *keys], suffixes=("_run", "_compare"))
    paired["section"] = paired["question"].map(section_of)
    return paired.loc[:, [*keys, "section", "similarity_run", "similarity_compare"]]


def _with_pooled(table: pd.DataFrame) -> pd.DataFrame:
    """Each row also under country "all", section "all" and both."""
    return pd.concat(
        [
            table,
            table.assign(country=ALL_COUNTRIES),
            table.assign(section=ALL_SECTIONS),
            table.assign(country=ALL_COUNTRIES, section=ALL_SECTIONS),
        ],
        ignore_index=True,
    )


def _section_shifts(paired: pd.DataFrame, *, seed: int, n_resamples: int) -> pd.DataFrame:
    columns = ["condition", "country", "section", "n_pairs", "similarity_run"]
    columns += ["similarity_compare", "difference", "p_value"]
    if paired.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (condition, country, section), block in _with_pooled(paired).groupby(
        ["condition", "country", "section"], sort=True
    ):
        diff = (block["similarity_run"] - block["similarity_compare"]).to_numpy(np.float64)
        rows.append(
            {
                "condition": condition,
                "country": country,
                "section": section,
                "n_pairs": diff.size,
                "similarity_run": float(block["similarity_run"].mean()),
                "similarity_compare": float(block["similarity_compare"].mean()),
                "difference": float(diff.mean()),
                "p_value": sign_flip_p(diff, seed=seed, n_resamples=n_resamples),
            }
        )
    return sort_by(pd.DataFrame(rows, columns=columns), _orders(paired))


def _effect_changes(paired: pd.DataFrame, *, seed: int, n_resamples: int) -> pd.DataFrame:
    columns = ["condition_a", "condition_b", "section", "n_pairs", "effect_run"]
    columns += ["effect_compare", "change", "p_value"]
    rows = []
    text = paired.loc[paired["condition"] == "text"]
    for condition in sorted(set(paired["condition"]) - {"text"}):
        other = paired.loc[paired["condition"] == condition]
        both = text.merge(other, on=["country", "question", "section"], suffixes=("_a", "_b"))
        both["effect_run"] = both["similarity_run_b"] - both["similarity_run_a"]
        both["effect_compare"] = both["similarity_compare_b"] - both["similarity_compare_a"]
        pooled = pd.concat([both, both.assign(section=ALL_SECTIONS)], ignore_index=True)
        for section, block in pooled.groupby("section"):
            change = (block["effect_run"] - block["effect_compare"]).to_numpy(np.float64)
            rows.append(
                {
                    "condition_a": "text",
                    "condition_b": condition,
                    "section": section,
                    "n_pairs": change.size,
                    "effect_run": float(block["effect_run"].mean()),
                    "effect_compare": float(block["effect_compare"].mean()),
                    "change": float(change.mean()),
                    "p_value": sign_flip_p(change, seed=seed, n_resamples=n_resamples),
                }
            )
    return sort_by(pd.DataFrame(rows, columns=columns), _orders(paired))


def _orders(paired: pd.DataFrame) -> dict[str, list[str]]:
    sections = list(dict.fromkeys(paired["section"]))
    return {
        "condition": list(CONDITION_ORDER),
        "condition_b": list(CONDITION_ORDER),
        "country": [ALL_COUNTRIES, *sorted(set(paired["country"]))],
        "section": [*sorted(sections), ALL_SECTIONS],
    }


def _targets(precision: str) -> Targets | None:
    from cvs_export.parts import PRECISIONS
    from cvs_export.precision import targets_for

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    return targets_for(precision)


def _verdict(
    precision: str, targets: Targets | None, summary: dict[str, Any]
) -> tuple[str, list[Check]]:
    def check(
        name: str, key: str, bound: float, direction: Literal["at most", "at least"]
    ) -> Check:
        value = float(summary[key])
        ok = value <= bound if direction == "at most" else value >= bound
        return Check(name, value, bound, direction, bool(ok) and not math.isnan(value))

    if targets is None:
        tolerance = f"{FP32_LOGPROB_TOLERANCE:.0e}".replace("e-0", "e-")  # 1e-4
        rule = f"{precision} must match the reference to {tolerance} in log-prob"
        return rule, [
            check("max |Δ option log-prob|", "max_abs_dlogprob", FP32_LOGPROB_TOLERANCE, "at most")
        ]
    checks = [check("mean JS distance", "mean_js", targets.mean_js, "at most")]
    parts = [f"mean JS distance ≤ {targets.mean_js:g}"]
    if targets.top1 is not None:
        checks.append(check("top-1 agreement", "top1", targets.top1, "at least"))
        parts.append(f"top-1 agreement ≥ {targets.top1:g}")
    if targets.section_shift is not None:
        checks.append(
            check(
                "largest section mean shift (pooled over countries)",
                "max_section_shift",
                targets.section_shift,
                "at most",
            )
        )
        parts.append(f"no section mean moving more than {targets.section_shift:g}")
    return f"{precision}: " + ", ".join(parts), checks


def _conclusion(
    sections: pd.DataFrame,
    effects: pd.DataFrame,
    summary: dict[str, Any],
    bound: float,
) -> tuple[Answer, str]:
    by_cell = sections.loc[sections["section"] != ALL_SECTIONS]
    moves = pd.concat(
        [
            by_cell.assign(what=_cell_names(by_cell), size=by_cell["difference"].abs()),
            effects.assign(
                what="the " + effects["condition_b"] + " − text effect in " + effects["section"],
                size=effects["change"].abs(),
            ),
        ],
        ignore_index=True,
    )
    n = f"{summary['n_scored_both']} items both engines scored"
    if moves.empty:
        return "cannot tell", f"Cannot tell: no section mean could be compared over the {n}."
    largest = moves.iloc[int(np.argmax(moves["size"].to_numpy(np.float64)))]
    over = moves.loc[moves["size"] > bound]
    detectable = moves.loc[moves["p_value"] < SIGNIFICANCE]
    smallest_p = float(moves["p_value"].min())
    if not over.empty:
        return "yes", (
            f"Yes: {len(over)} figure(s) of the study move by more than {bound:g}; the largest, "
            f"{largest['what']}, by {largest['size']:.4f} (p = {largest['p_value']:.3g}, paired "
            f"sign-flip test; {n})."
        )
    if not detectable.empty:
        return "no, within the bound", (
            f"No, within the study's resolution: {len(detectable)} change(s) are detectable "
            f"(smallest p = {smallest_p:.3g}), but no section mean and no image − text effect "
            f"moves by more than {bound:g} (largest |Δ| {largest['size']:.2g}, {largest['what']}; "
            f"{n})."
        )
    return "no", (
        f"No: no section × country mean and no image − text effect moves by more than {bound:g} "
        f"(largest |Δ| {largest['size']:.2g}, {largest['what']}) and no change is detectable at "
        f"p < {SIGNIFICANCE:g} (smallest p = {smallest_p:.3g}, paired sign-flip test; {n})."
    )


def _cell_names(table: pd.DataFrame) -> pd.Series:
    country = table["country"].where(table["country"] != ALL_COUNTRIES, "all countries")
    return (
        "the " + table["condition"] + " mean of " + table["section"] + " (" + country + ")"
    ).astype(str)


def _present(value: Any) -> bool:
    """A stored distribution (a list or array), not null."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def _max(values: pd.Series) -> float:
    return float(values.max()) if len(values) else math.nan


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_json_safe(dict(row)) for row in frame.to_dict("records")]
