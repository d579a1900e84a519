"""`make bench` results → results.json, a Markdown table and a PNG, each speed beside its ceiling.

Why this module exists: the benchmark's numbers are only honest next to what the machine could
do. Every row of the table shows items/s, the speed-up over the study's loop and over the
PyTorch reference, and the GFLOP/s achieved as a share of the measured dense GEMM ceiling at the
variant's precision and thread count; the header names the CPU, its kernel flags, the thread
count, the ceilings, the commit and the library versions. Agreement columns (log-prob
differences, Jensen–Shannon distances, top-1 agreement) sit on the same row, so a speed-up is
never read without what it costs.

The input is the results.json object `make bench` builds (keys listed in `write_reports`);
variants may carry extra keys, which are ignored here. Matplotlib is imported only by `plot`,
through its Agg canvas: no window, no global backend switch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvs_evaluator.bench.machine import int8_dot_product
from cvs_evaluator.durable import durable_path, write_json

CEILING_KEYS: tuple[str, ...] = ("fp32", "bf16", "int8")
"""The precisions a GEMM ceiling is measured at, in report order."""
CONDITION_ORDER: tuple[str, ...] = ("text", "image")
"""Conditions in plot order; any other condition follows in the order first seen."""
MIB = 2**20


# ---------------------------------------------------------------------------------------------
# Number formatting: None (or a missing key) is a blank cell.


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _significant(value: Any, digits: int = 3) -> str:
    """`digits` significant digits, plain for ordinary magnitudes, scientific beyond."""
    number = _number(value)
    if number is None:
        return ""
    if number == 0.0:
        return "0"
    magnitude = math.floor(math.log10(abs(number)))
    if -3 <= magnitude < digits + 3:
        decimals = max(digits - 1 - magnitude, 0)
        return f"{number:,.{decimals}f}"
    return f"{number:.{digits - 1}e}"


def _ratio(value: Any) -> str:
    text = _significant(value)
    return f"{text}×" if text else ""


def _percent(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{100.0 * number:.1f}%"


def _mib(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{number / MIB:,.0f}"


def _integer(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{int(number):,}"


def _text(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|")


def ceiling_key(precision: str) -> str | None:
    """The ceiling a variant at `precision` is measured against: fp32, bf16, int8 or None."""
    if precision.startswith("int8"):
        return "int8"
    if precision in ("fp32", "bf16"):
        return precision
    return None


def share_of_ceiling(variant: dict[str, Any], ceilings: dict[str, Any]) -> float | None:
    """Achieved GFLOP/s over the ceiling at the variant's precision (a fraction), or None."""
    key = ceiling_key(str(variant.get("precision", "")))
    achieved = _number(variant.get("gflops_achieved"))
    ceiling = _number(ceilings.get(key)) if key else None
    if achieved is None or ceiling is None or ceiling <= 0.0:
        return None
    return achieved / ceiling


COLUMNS: tuple[tuple[str, Callable[[dict[str, Any], dict[str, Any]], str]], ...] = (
    ("variant", lambda v, c: _text(v.get("name"))),
    ("condition", lambda v, c: _text(v.get("condition"))),
    ("precision", lambda v, c: _text(v.get("precision"))),
    ("items", lambda v, c: _integer(v.get("items"))),
    ("items/s", lambda v, c: _significant(v.get("items_per_s"))),
    ("× study loop", lambda v, c: _ratio(v.get("ratio_vs_study_loop"))),
    ("× torch reference", lambda v, c: _ratio(v.get("ratio_vs_torch_reference"))),
    ("GFLOP/s achieved", lambda v, c: _significant(v.get("gflops_achieved"))),
    ("% of ceiling", lambda v, c: _percent(share_of_ceiling(v, c))),
    ("peak RSS MiB", lambda v, c: _mib(v.get("peak_rss_bytes"))),
    (
        "max |Δ log-prob| vs study loop",
        lambda v, c: _significant(v.get("max_abs_dlogprob_vs_study_loop")),
    ),
    ("mean JS vs study loop", lambda v, c: _significant(v.get("mean_js_vs_study_loop"))),
    ("max JS vs study loop", lambda v, c: _significant(v.get("max_js_vs_study_loop"))),
    ("top-1 vs study loop", lambda v, c: _percent(v.get("top1_vs_study_loop"))),
    ("mean JS vs ort-fp32", lambda v, c: _significant(v.get("mean_js_vs_ort_fp32"))),
    ("top-1 vs ort-fp32", lambda v, c: _percent(v.get("top1_vs_ort_fp32"))),
)
"""The table's columns: header, and the cell of one variant given the ceilings."""


def _ceilings_text(ceilings: dict[str, Any]) -> str:
    parts = []
    for key in CEILING_KEYS:
        value = _significant(ceilings.get(key))
        parts.append(f"{key} {value} GFLOP/s" if value else f"{key} not measured")
    return ", ".join(parts)


def header_line(results: dict[str, Any]) -> str:
    """One paragraph: machine, kernel flags, int8 dot product, threads and GEMM ceilings."""
    flags = list(results.get("cpu_flags") or [])
    flag_text = " ".join(flags) if flags else "none of the listed kernel flags"
    threads = results.get("threads")
    thread_text = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "threads ?"
    ceilings = results.get("ceilings_gflops") or {}
    return (
        f"**{_text(results.get('machine', 'unknown machine'))}**, CPU flags: {flag_text} "
        f"(int8 dot product: {int8_dot_product(flags)}); {thread_text}; dense GEMM ceilings "
        f"at {thread_text}: {_ceilings_text(ceilings)}."
    )


def provenance_line(results: dict[str, Any]) -> str:
    """Commit, library versions and how each ceiling was measured."""
    versions = results.get("versions") or {}
    version_text = ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
    sources = results.get("ceilings_source") or {}
    source_text = "; ".join(f"{key}: {sources[key]}" for key in CEILING_KEYS if key in sources)
    return (
        f"Commit {results.get('commit') or 'unknown'}; {version_text or 'versions unknown'}. "
        f"Ceilings measured with {source_text or 'unknown method'}."
    )


def markdown_table(results: dict[str, Any]) -> str:
    """The results as Markdown: header paragraph, provenance, one table row per variant."""
    ceilings = results.get("ceilings_gflops") or {}
    headers = [_text(name) for name, _ in COLUMNS]
    lines = [
        header_line(results),
        "",
        provenance_line(results),
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(headers))) + "|",
    ]
    for variant in results.get("variants") or []:
        lines.append("| " + " | ".join(cell(variant, ceilings) for _, cell in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plot


def _conditions(variants: list[dict[str, Any]]) -> list[str]:
    seen = [str(v.get("condition")) for v in variants]
    return [c for c in CONDITION_ORDER if c in seen] + [
        c for c in dict.fromkeys(seen) if c not in CONDITION_ORDER
    ]


def _grouped_bars(
    axes: Any,
    variants: list[dict[str, Any]],
    value_key: str,
    label: Callable[[dict[str, Any]], str] | None,
) -> None:
    """Bars of `value_key` per variant, grouped by condition (one colour per variant name)."""
    conditions = _conditions(variants)
    names = list(dict.fromkeys(str(v.get("name")) for v in variants))
    width = 0.8 / max(len(names), 1)
    colours = [f"C{i % 10}" for i in range(len(names))]
    for index, name in enumerate(names):
        xs, heights, texts = [], [], []
        for group, condition in enumerate(conditions):
            for variant in variants:
                value = _number(variant.get(value_key))
                if (
                    str(variant.get("name")) == name
                    and str(variant.get("condition")) == condition
                    and value is not None
                    and value > 0.0
                ):
                    xs.append(group - 0.4 + width * (index + 0.5))
                    heights.append(value)
                    texts.append(label(variant) if label else "")
        if not xs:
            continue
        bars = axes.bar(xs, heights, width=width * 0.9, color=colours[index], label=name)
        if label:
            axes.bar_label(bars, labels=texts, fontsize=7, padding=2, rotation=90)
    axes.set_xticks(range(len(conditions)), conditions)
    axes.set_yscale("log")
    axes.grid(axis="y", which="both", alpha=0.3)


def plot(results: dict[str, Any], path: Path) -> None:
    """Two panels as a PNG at `path` (atomically): items/s per variant and condition with the
    ratio over the study loop on each bar; achieved GFLOP/s against the GEMM ceilings."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = list(results.get("variants") or [])
    ceilings = results.get("ceilings_gflops") or {}
    figure = Figure(figsize=(14, 6), layout="constrained")
    FigureCanvasAgg(figure)
    speed, work = figure.subplots(1, 2)

    _grouped_bars(speed, variants, "items_per_s", lambda v: _ratio(v.get("ratio_vs_study_loop")))
    speed.set_ylabel("items/s (log scale)")
    speed.set_title("Throughput; labels: × the study loop")
    speed.margins(y=0.25)
    speed.legend(fontsize=8, loc="upper left")

    _grouped_bars(work, variants, "gflops_achieved", None)
    styles = {"fp32": "-", "bf16": ":", "int8": "--"}
    for key in CEILING_KEYS:
        value = _number(ceilings.get(key))
        if value is not None and value > 0.0:
            work.axhline(value, color="black", linestyle=styles[key], linewidth=1.0)
            work.annotate(
                f"{key} GEMM ceiling {_significant(value)} GFLOP/s",
                xy=(0.01, value),
                xycoords=("axes fraction", "data"),
                fontsize=8,
                va="bottom",
            )
    if work.get_legend_handles_labels()[0]:
        work.legend(fontsize=8, loc="lower right")
    work.set_ylabel("GFLOP/s achieved (log scale)")
    work.set_title("Achieved GFLOP/s against the measured GEMM ceilings")
    work.margins(y=0.25)

    threads = results.get("threads")
    figure.suptitle(f"{results.get('machine', 'unknown machine')} — {threads} threads")
    with durable_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)


def write_reports(results: dict[str, Any], folder: Path) -> tuple[Path, Path, Path]:
    """Write results.json, results.md and results.png into `folder`; return their paths.

    `results` holds: machine, cpu_flags, versions, commit, threads, ceilings_gflops and
    ceilings_source (keyed fp32/bf16/int8), and variants (name, condition, precision, items,
    items_per_s, ratio_vs_study_loop, ratio_vs_torch_reference, peak_rss_bytes, agreement
    figures, gflops_achieved). Each file is written atomically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path, png_path = (
        folder / "results.json",
        folder / "results.md",
        folder / "results.png",
    )
    write_json(json_path, results)
    with durable_path(markdown_path) as temporary:
        temporary.write_text(markdown_table(results), encoding="utf-8")
    plot(results, png_path)
    return json_path, markdown_path, png_path
