"""What a lower precision costs on the survey: two engines of one model, item by item.

Why this module exists: a precision is worth having only if the answers it gives stay those of
fp32, measured where the study looks. `cvs-export compare --model M A B` scores every value
question × study country (text condition) on engine A and on engine B into resumable result
stores, then reports, per engine: layers kept in higher precision, folder size, items/s; and
between them: mean Jensen–Shannon distance between option distributions, top-1 agreement and
the largest move of a section's mean similarity to the human answers (pooled over countries,
and per section × country, the study's unit).

It also provides the survey prompts the export stage calibrates and judges lower precisions
with (`survey_requests`): `cvs_export.cli` imports this module lazily, the one place where the
export stage reaches into the evaluator (it owns prompts and human shares; the export stage
must not duplicate them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.aggregate import question_similarities, section_means
from cvs_evaluator.metrics import item_similarities
from cvs_evaluator.results import model_long

if TYPE_CHECKING:
    from cvs_evaluator.questions import QuestionBank
    from cvs_runtime.requests import ScoringRequest


def survey_requests(
    spec: Any, tokenizer: Any, *, count: int, half: int, countries: Sequence[str] = ()
) -> list[ScoringRequest]:
    """`count` text-condition survey prompts: the value questions of one `half` (0: even
    positions, 1: odd, so calibration and judging never share a question), each with a study
    country in turn (grouped by country so a prefix cache serves them)."""
    from cvs_evaluator.countries import STUDY_COUNTRIES
    from cvs_evaluator.prompts import build_prompt_set, to_request
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.wvs import load_study_shares

    bank = load_question_bank()
    present = set(load_study_shares()["country"])
    wanted = [c for c in (countries or STUDY_COUNTRIES) if c in present]
    ordered = [q for questions in bank.by_section().values() for q in questions]
    chosen = ordered[half::2]
    # Spread `count` over the half's questions evenly, countries taking turns.
    picks = np.linspace(0, len(chosen) - 1, min(count, len(chosen))).round().astype(int)
    by_country: dict[str, list[Any]] = {}
    for n, index in enumerate(picks.tolist()):
        by_country.setdefault(wanted[n % len(wanted)], []).append(chosen[index])
    requests: list[ScoringRequest] = []
    for code, questions in by_country.items():
        built = build_prompt_set(questions, [code], "text", [], tokenizer, spec)
        requests.extend(to_request(item, tokenizer, spec, None) for item in built.items)
    return requests


@dataclass(frozen=True)
class EngineRun:
    """One engine's scores over the survey, and what it costs."""

    precision: str
    """The engine's precision."""
    folder: Path
    """Its engine folder."""
    rows: pd.DataFrame
    """Result rows (one per item)."""
    items_per_second: float | None
    """Items scored per second (None when every item came from the store and no timing was
    recorded)."""
    size_bytes: int
    """Bytes of every file of the engine."""
    kept: tuple[str, ...]
    """Layer groups kept in higher precision (from the manifest)."""
    verdict: str
    """The build's verdict line (fp32: `reference`)."""


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
        js.append(float(jensenshannon(p, q)))
        agree.append(int(np.argmax(p)) == int(np.argmax(q)))
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


def score_engine(
    model: str,
    precision: str,
    engines_root: Path,
    out_dir: Path,
    *,
    allow_failed_engine: bool = True,
    progress: bool = True,
) -> EngineRun:
    """Score all value questions × study countries (text) on `engines_root/model/precision`
    into `out_dir` (resumable), timing the items scored now."""
    from cvs_evaluator import evaluate
    from cvs_evaluator.countries import STUDY_COUNTRIES
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.results import ResultStore
    from cvs_evaluator.scorers import engine_scorer
    from cvs_evaluator.wvs import load_study_shares
    from cvs_families.registry import get_family
    from cvs_runtime.engine_manifest import check_engine
    from cvs_runtime.engines import engine_folder

    spec = get_family(model)
    folder = engine_folder(engines_root, "ort", model, precision)
    manifest = check_engine(
        folder, family=model, precision=precision, allow_failed_verdict=allow_failed_engine
    )
    scorer = engine_scorer(
        spec, None, "ort", engines_root, precision, allow_failed_engine=allow_failed_engine
    )
    bank = load_question_bank()
    shares = load_study_shares()
    present = set(shares["country"])
    settings = evaluate.EvalSettings(
        model=model,
        engine="ort",
        precision=precision,
        conditions=("text",),
        countries=tuple(c for c in STUDY_COUNTRIES if c in present),
    )
    chosen = evaluate.select_questions(bank, per_section=None)
    asked = set(zip(shares["country"], shares["question"], strict=True))
    items, _ = evaluate.build_items(settings, chosen, scorer.tokenizer, spec, asked=asked)
    store = ResultStore(evaluate.default_store_path(out_dir, settings))
    started = time.perf_counter()
    scored = evaluate.run_evaluation(
        settings,
        items,
        store,
        scorer=scorer.stream,
        tokenizer=scorer.tokenizer,
        spec=spec,
        prepare_image=_no_image,
        progress=progress,
        row_identity=evaluate.row_identity(
            scorer.checkpoint_fingerprint, scorer.engine_manifest_sha256
        ),
    )
    seconds = time.perf_counter() - started
    timing = _record_timing(store.path, scored, seconds)
    rows = store.frame()
    rows = rows[rows["item_id"].isin({item.item_id for item in items})]
    verdict = manifest.validation.get("verdict") or {}
    return EngineRun(
        precision=precision,
        folder=folder,
        rows=rows.reset_index(drop=True),
        items_per_second=timing,
        size_bytes=sum(f.size for f in manifest.files),
        kept=tuple(manifest.export.get("kept_groups", ())),
        verdict="reference" if precision == "fp32" else _verdict_word(verdict),
    )


def _no_image(image_id: str) -> Any:
    raise ValueError(f"compare scores the text condition; item asked for image {image_id!r}")


def _verdict_word(verdict: dict[str, Any]) -> str:
    if not verdict:
        return "none"
    if not verdict.get("ran", True):
        return "not run"
    return "pass" if verdict.get("passed") else "FAIL"


def _record_timing(store: Path, scored: int, seconds: float) -> float | None:
    """Accumulate (items, seconds) beside the store; items/s over every timed run."""
    path = store.with_suffix(".timing.json")
    totals = json.loads(path.read_text()) if path.is_file() else {"items": 0, "seconds": 0.0}
    if scored:
        totals = {"items": totals["items"] + scored, "seconds": totals["seconds"] + seconds}
        path.write_text(json.dumps(totals))
    return totals["items"] / totals["seconds"] if totals["items"] else None


def comparison_table(runs: Sequence[EngineRun], comparisons: Sequence[Comparison]) -> str:
    """One line per engine (the first is the reference the others are compared with)."""
    header = (
        f"{'precision':<18} {'kept fp32':<16} {'size MiB':>9} {'items/s':>8} {'mean JS':>9} "
        f"{'max JS':>8} {'top-1':>7} {'sect Δ':>8} {'sect×cty Δ':>10}  {'verdict':<8} section"
    )
    lines = [header]
    for index, run in enumerate(runs):
        speed = f"{run.items_per_second:.2f}" if run.items_per_second else "-"
        kept = ",".join(run.kept) or "-"
        base = f"{run.precision:<18} {kept:<16} {run.size_bytes / 2**20:>9.1f} {speed:>8}"
        if index == 0:
            lines.append(base + f" {'(reference)':>9}" + " " * 38 + f"  {run.verdict:<8}")
            continue
        c = comparisons[index - 1]
        lines.append(
            base + f" {c.mean_js:>9.4f} {c.max_js:>8.4f} {c.top1:>7.1%} "
            f"{c.max_section_shift:>8.4f} {c.max_section_country_shift:>10.4f}  "
            f"{run.verdict:<8} {c.shifted_section}"
        )
    return "\n".join(lines)


def compare_engines(
    model: str,
    precisions: Sequence[str],
    *,
    engines_root: Path,
    out_dir: Path,
    progress: bool = True,
) -> str:
    """Score every engine (the first is the reference) and return the comparison table."""
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.wvs import load_study_shares

    if len(precisions) < 2:
        raise ValueError("compare needs a reference engine and at least one other")
    runs = [score_engine(model, p, engines_root, out_dir, progress=progress) for p in precisions]
    bank: QuestionBank = load_question_bank()
    shares = load_study_shares()
    section_of = dict(bank.section_of())
    comparisons = [compare_rows(runs[0].rows, run.rows, shares, section_of) for run in runs[1:]]
    items = comparisons[0].items
    return (
        f"{model}: {items} items (all value questions × study countries present, text), "
        f"vs {precisions[0]}\n" + comparison_table(runs, comparisons)
    )
