"""The reports of a run folder, written from its results frames (no model is loaded or scored).

`write_reports` writes, into a run folder:
- `alignment.html` / `alignment.csv` / `alignment.md`: the study's tables (section means beside
  human baselines with bootstrap intervals, condition changes with permutation p-values, income
  groups, marginal similarity, screening, items not scored, skipped images, latency and the
  check of the engine's first batch), the same tables in all
  three, with a section × country heatmap per condition and a latency figure in the HTML;
- `parity.json` / `parity.html` when a comparison engine's frame is given (or a `skipped` form
  saying why none ran);
- `latency.json` when timings are given; `provenance.json`, whose facts end every page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cvs_evaluator.durable import write_text
from cvs_evaluator.questions import QuestionBank
from cvs_evaluator.reports.alignment import AlignmentReport, alignment_report, scored_mask
from cvs_evaluator.reports.figures import (
    InlineFigure,
    latency_bars,
    logprob_scatter,
    section_heatmap,
)
from cvs_evaluator.reports.latency import LatencyRecord, latency_summary, latency_tables
from cvs_evaluator.reports.page import Block, alignment_page, parity_page, skipped_parity_page
from cvs_evaluator.reports.parity import ParityReport, parity_report, skipped_parity
from cvs_evaluator.reports.provenance import collect_provenance, footer_lines
from cvs_evaluator.reports.tables import ReportTable, tables_csv, tables_markdown

__all__ = [
    "AlignmentReport",
    "LatencyRecord",
    "ParityReport",
    "alignment_report",
    "collect_provenance",
    "latency_summary",
    "parity_report",
    "read_latency",
    "write_reports",
]

ALIGNMENT_FILES: tuple[str, ...] = ("alignment.html", "alignment.csv", "alignment.md")
"""What `write_reports` always writes besides provenance.json."""


def write_reports(
    run_dir: Path,
    results: pd.DataFrame,
    shares: pd.DataFrame,
    bank: QuestionBank,
    *,
    provenance: Mapping[str, Any],
    precision: str,
    compare: pd.DataFrame | None = None,
    parity_skipped: str | None = None,
    latency: LatencyRecord | Mapping[str, Any] | None = None,
    compare_latency: LatencyRecord | Mapping[str, Any] | None = None,
    screening: pd.DataFrame | None = None,
    skipped_images: pd.DataFrame | None = None,
    income_of: Mapping[str, str | None] | None = None,
    notes: Sequence[str] = (),
    seed: int = 0,
) -> list[Path]:
    """Write every report of one run into `run_dir`; returns the files written.

    `results` / `compare`: results.parquet frames of the run and of the comparison engine.
    `parity_skipped`: why no comparison ran (writes the skipped parity files; ignored when
    `compare` is given). `latency` / `compare_latency`: a `LatencyRecord` or its
    `latency_summary` (as read back from latency.json by `read_latency`). `screening`: one row
    per screened image (image_id, country, category, rank, kept). `skipped_images`: one row
    per image the run could not use (image_id, country, category, reason, detail; None: no
    images). `income_of`: ISO3 → income
    group (default `cvs_evaluator.countries.income_groups()`). `notes`: sentences shown at the
    top of the alignment page (e.g. that a condition carries no information for this model).
    """
    _check_precision(results, precision)
    if income_of is None:
        from cvs_evaluator.countries import income_groups

        income_of = income_groups()
    run_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        write_text(run_dir / name, text)
        written.append(run_dir / name)

    put("provenance.json", json.dumps(dict(provenance), indent=2, sort_keys=True) + "\n")
    summaries = {"run": _summary(latency), "compare": _summary(compare_latency)}
    if latency is not None:
        put("latency.json", json.dumps(_finite(summaries), indent=2) + "\n")

    parity_written = compare is not None or parity_skipped is not None
    links = [("CSV", "alignment.csv"), ("Markdown", "alignment.md")]
    if parity_written or (run_dir / "parity.html").is_file():
        links.append(("Parity", "parity.html"))
    links.append(("Provenance", "provenance.json"))

    report = alignment_report(
        results, shares, bank, income_of=income_of, screening=screening,
        skipped_images=skipped_images, seed=seed,
    )  # fmt: skip
    lat_tables = latency_tables(summaries["run"], summaries["compare"])
    tables = [*report.tables(), *lat_tables]
    title = f"Alignment: {report.model}, {_label(results)}"
    put("alignment.csv", tables_csv(tables))
    put("alignment.md", tables_markdown(title, tables, footer_lines(provenance)))
    blocks = _alignment_blocks(report, lat_tables, summaries)
    put(
        "alignment.html",
        alignment_page(
            title=title,
            facts=_facts(results, report),
            notes=notes,
            blocks=blocks,
            links=links,
            provenance=provenance,
        ),
    )

    _write_parity(put, results, compare, parity_skipped, precision, provenance, seed)
    return written


def _write_parity(
    put: Callable[[str, str], None],
    results: pd.DataFrame,
    compare: pd.DataFrame | None,
    parity_skipped: str | None,
    precision: str,
    provenance: Mapping[str, Any],
    seed: int,
) -> None:
    """parity.json and parity.html: the comparison, or why none ran (nothing when neither)."""
    back = [("Alignment", "alignment.html"), ("Provenance", "provenance.json")]
    if compare is not None:
        _check_precision(compare, None)
        parity = parity_report(results, compare, precision=precision, seed=seed)
        put("parity.json", json.dumps(parity.to_json(), indent=2) + "\n")
        put("parity.html", _parity_html(parity, back, provenance))
    elif parity_skipped is not None:
        put("parity.json", json.dumps(skipped_parity(parity_skipped), indent=2) + "\n")
        page = skipped_parity_page(
            title=f"Parity: {_label(results)}", reason=parity_skipped, links=back,
            provenance=provenance,
        )  # fmt: skip
        put("parity.html", page)


def read_latency(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The (run, compare) latency summaries stored in `run_dir/latency.json` ((None, None) when
    there is none): what `cvs-eval report RUN` passes back to `write_reports`."""
    path = run_dir / "latency.json"
    if not path.is_file():
        return None, None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get("run"), data.get("compare")


def _summary(latency: LatencyRecord | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if latency is None:
        return None
    if isinstance(latency, LatencyRecord):
        return latency_summary(latency)
    return dict(latency)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_precision(results: pd.DataFrame, precision: str | None) -> None:
    held = sorted(set(results["precision"]))
    if len(held) != 1 or (precision is not None and held[0] != precision):
        wanted = f" (expected {precision})" if precision is not None else ""
        raise ValueError(f"a results frame holds one precision{wanted}; this one holds {held}")


def _label(results: pd.DataFrame) -> str:
    engines = "+".join(sorted(set(results["engine"])))
    return f"{engines}/{results['precision'].iloc[0]}"


def _facts(results: pd.DataFrame, report: AlignmentReport) -> list[tuple[str, str]]:
    scored = int(scored_mask(results).sum())
    facts = [
        ("model", report.model),
        ("engine", _label(results)),
        ("items", str(len(results))),
        ("scored", str(scored)),
        ("not scored", str(len(results) - scored)),
        *(
            [("skipped images", str(len(report.skipped_images)))]
            if report.skipped_images is not None
            else []
        ),
        ("conditions", ", ".join(report.conditions)),
        ("countries", ", ".join(report.countries)),
    ]
    if "checkpoint_fingerprint" in results.columns:
        fingerprints = sorted(set(results["checkpoint_fingerprint"]))
        facts.append(("checkpoint", ", ".join(f[:16] for f in fingerprints)))
    return facts


def _alignment_blocks(
    report: AlignmentReport,
    lat_tables: list[ReportTable],
    summaries: Mapping[str, Mapping[str, Any] | None],
) -> list[Block]:
    tables = {t.name: t for t in report.tables()}
    values = report.sections["similarity"].dropna()
    low, high = float(values.min()), float(values.max())
    limits = (low, high) if high > low else (low - 0.01, high + 0.01)
    heatmaps = [
        section_heatmap(
            report.sections, condition, report.section_order, report.countries, limits=limits
        )
        for condition in report.conditions
    ]
    blocks = [
        Block("Alignment by section", [tables["sections"]], heatmaps),
        Block(
            "Change between conditions",
            [tables["effects"]],
            text="" if len(report.effects) else "The run has no pair of conditions to compare.",
        ),
        Block("Income groups", [tables["income"], tables["income_effects"]]),
        Block(
            "Marginal similarity",
            [tables["marginal"]],
            text="" if len(report.marginal) else "The run has no image condition.",
        ),
    ]
    if "screening" in tables:
        blocks.append(Block("Image screening", [tables["screening"]]))
    blocks.append(
        Block(
            "Items not scored",
            [tables["not_scored"]],
            text=f"{len(report.not_scored)} item(s) have no model distribution.",
        )
    )
    if report.skipped_images is not None:
        blocks.append(
            Block(
                "Skipped images",
                [tables["skipped_images"]],
                text=f"{len(report.skipped_images)} image(s) could not be used.",
            )
        )
    if lat_tables:
        figures: list[InlineFigure] = [latency_bars(summaries)]
        blocks.append(Block("Latency", lat_tables, figures))
    return blocks


def _parity_html(
    parity: ParityReport, links: list[tuple[str, str]], provenance: Mapping[str, Any]
) -> str:
    tables = {t.name: t for t in parity.tables()}
    summary = parity.summary
    facts = [
        ("run", parity.run_label),
        ("compare", parity.compare_label),
        ("items compared", str(summary["n_items"])),
        ("scored on both", str(summary["n_scored_both"])),
        ("status differs", str(summary["n_status_differs"])),
    ]
    scatter = logprob_scatter(parity.logprobs_compare, parity.logprobs_run, parity.run_label)
    blocks = [
        Block("Verdict", [tables["parity_summary"], tables["verdict"]]),
        Block(
            "What the study would report",
            [tables["parity_sections"], tables["parity_effects"]],
            text=f"A change is called detectable at p < 0.05; the answer above judges every "
            f"move against {parity.shift_bound:g}.",
        ),
        Block("Item by item", [tables["parity_items"]], [scatter]),
    ]
    return parity_page(
        title=f"Parity: {parity.run_label} against {parity.compare_label}",
        facts=facts,
        question=parity.question(),
        answer=parity.answer,
        conclusion=parity.conclusion,
        passed=parity.passed,
        rule=parity.rule,
        blocks=blocks,
        links=links,
        provenance=provenance,
    )
