"""`cvs-bench` (`make bench`): the study's loop against the runtime, side by side, in one run.

Each variant runs in its own process (`cvs_evaluator.bench.variants`), one after the other,
with the same thread count, on the same items; the machine's dense GEMM ceilings are measured
in the same run with the same threads, and its CPU model and flags recorded, so every speed is a
ratio against the study loop and a fraction of what the machine can do, never a bare number.
Outputs go to `bench/` (git-ignored): `results.json`, `results.md`, `results.png`.

Accuracy is reported beside speed: every variant against the study loop on the items both ran
(max |Δ option log-prob|, Jensen–Shannon distance, top-1), and the int8 variant against
`ort-fp32` on all items, with the section shift of the mean similarity to the human answers
(text) — the int8 verdict's targets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from cvs_evaluator.bench.workload import CONDITIONS
from cvs_export.parts import PRECISIONS

DEFAULT_INT8 = "int8-wo"
"""The int8 recipe benchmarked by default (the one whose verdict passes on smol)."""
INT8_CHOICES = (*(p for p in PRECISIONS if p.startswith("int8")), "")
"""What `--int8` accepts: an int8 precision `cvs-export build` makes, or '' for none."""


def variant_plan(conditions: Sequence[str], int8: Sequence[str]) -> list[tuple[str, str, str]]:
    """(name, condition, subset) of every variant run, in order."""
    plan = []
    for condition in conditions:
        plan += [
            ("study-loop", condition, "sample"),
            ("torch-reference", condition, "sample"),
            ("ort-fp32-nocache", condition, "sample"),
            ("ort-fp32", condition, "all"),
        ]
        plan += [(f"ort-{precision}", condition, "all") for precision in int8]
    return plan


def run_variant(
    name: str,
    condition: str,
    subset: str,
    *,
    model: str,
    threads: int,
    engines: Path,
    work: Path,
    limit: int | None = None,
) -> dict[str, Any]:
    """One variant in a fresh process; its JSON result."""
    out = work / f"{name}-{condition}.json"
    command = [
        sys.executable,
        "-m",
        "cvs_evaluator.bench.variants",
        name,
        condition,
        "--model",
        model,
        "--subset",
        subset,
        "--threads",
        str(threads),
        "--engines",
        str(engines),
        "--out",
        str(out),
        *(["--limit", str(limit)] if limit else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:]
        raise click.ClickException(
            f"variant {name} ({condition}) failed: {last[0] if last else 'no message'}"
        )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median items/s (its accuracy figures; the others' speeds recorded)."""
    ordered = sorted(runs, key=lambda r: r["items_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["items_per_s_runs"] = [r["items_per_s"] for r in runs]
    return chosen


def _distribution(logprobs: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(logprobs, dtype=np.float64)
    shifted = np.exp(values - values.max())
    return np.asarray(shifted / shifted.sum())


def agreement(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, float] | None:
    """b against a on the items both ran: max |Δ option log-prob|, mean/max JS distance, top-1."""
    from cvs_runtime.comparison import js_distance, top1_agrees

    common = sorted(set(a) & set(b))
    if not common:
        return None
    diffs, js, top = [], [], []
    for item in common:
        x, y = np.asarray(a[item]), np.asarray(b[item])
        diffs.append(float(np.abs(x - y).max()))
        js.append(js_distance(_distribution(x), _distribution(y)))
        top.append(top1_agrees(x, y))
    return {
        "items": len(common),
        "max_abs_dlogprob": max(diffs),
        "mean_js": float(np.mean(js)),
        "max_js": max(js),
        "top1": float(np.mean(top)),
    }


def section_shift(
    model: str, condition: str, a: dict[str, list[float]], b: dict[str, list[float]]
) -> dict[str, Any] | None:
    """Largest move of a section's mean similarity to the human answers (text items), b vs a."""
    if condition != "text":
        return None
    from cvs_evaluator.bench.workload import build_workload
    from cvs_evaluator.precision_compare import compare_rows
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.wvs import load_study_shares
    from cvs_families.checkpoint import ensure_checkpoint, load_tokenizer
    from cvs_families.registry import get_family

    spec = get_family(model)
    workload = build_workload("text", spec, load_tokenizer(spec, ensure_checkpoint(spec)))
    items = {item.item_id: item for item in workload.items}

    def rows(logprobs: dict[str, list[float]]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "item_id": item_id,
                    "model": model,
                    "condition": items[item_id].condition,
                    "country": items[item_id].country,
                    "question": items[item_id].question_id,
                    "image": items[item_id].image_id,
                    "option_codes": list(items[item_id].option_codes),
                    "distribution": _distribution(values).tolist(),
                    "status": "scored",
                }
                for item_id, values in logprobs.items()
            ]
        )

    bank = load_question_bank()
    result = compare_rows(rows(a), rows(b), load_study_shares(), bank.section_of())
    return {
        "max_section_shift": result.max_section_shift,
        "shifted_section": result.shifted_section,
        "max_section_country_shift": result.max_section_country_shift,
    }


def assemble(runs: dict[tuple[str, str], dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The `variants` list of results.json from the raw runs."""
    variants = []
    for (name, condition), run in runs.items():
        study = runs.get(("study-loop", condition))
        reference = runs.get(("torch-reference", condition))
        fp32 = runs.get(("ort-fp32", condition))
        versus_study = agreement(study["logprobs"], run["logprobs"]) if study else None
        versus_fp32 = (
            agreement(fp32["logprobs"], run["logprobs"])
            if fp32 and name.startswith("ort-int8")
            else None
        )
        shift = (
            section_shift(model, condition, fp32["logprobs"], run["logprobs"])
            if fp32 and name.startswith("ort-int8")
            else None
        )
        precision = name.removeprefix("ort-").removesuffix("-nocache") if "int8" in name else "fp32"

        def ratio(base: dict[str, Any] | None, run: dict[str, Any] = run) -> float | None:
            return run["items_per_s"] / base["items_per_s"] if base else None

        entry: dict[str, Any] = {
            "name": name,
            "condition": condition,
            "precision": precision,
            "items": run["items"],
            "items_per_s": run["items_per_s"],
            "ratio_vs_study_loop": ratio(study),
            "ratio_vs_torch_reference": ratio(reference),
            "peak_rss_bytes": run["peak_rss_bytes"],
            "max_abs_dlogprob_vs_study_loop": _get(versus_study, "max_abs_dlogprob"),
            "mean_js_vs_study_loop": _get(versus_study, "mean_js"),
            "max_js_vs_study_loop": _get(versus_study, "max_js"),
            "top1_vs_study_loop": _get(versus_study, "top1"),
            "mean_js_vs_ort_fp32": _get(versus_fp32, "mean_js"),
            "top1_vs_ort_fp32": _get(versus_fp32, "top1"),
            "gflops_achieved": run["gflops_achieved"],
            "items_compared_with_study_loop": _get(versus_study, "items"),
            "section_shift_vs_ort_fp32": shift,
            "seconds": run["seconds"],
            "items_per_s_runs": run.get("items_per_s_runs"),
            "rss_after_open_bytes": run["rss_after_open_bytes"],
            **{
                key: run[key]
                for key in ("stage_times", "suffix_gflops", "budgets", "cache_peaks")
                if key in run
            },
        }
        if "budgets" in run:
            # The memory target: growth above the opened engine within its budgets + 10%.
            bound = 1.1 * sum(run["budgets"].values())
            entry["memory_above_open_bytes"] = run["peak_rss_bytes"] - run["rss_after_open_bytes"]
            entry["memory_bound_bytes"] = bound
            entry["memory_within_bound"] = entry["memory_above_open_bytes"] <= bound
        variants.append(entry)
    return variants


def _get(table: dict[str, float] | None, key: str) -> float | None:
    return None if table is None else table[key]


def provenance() -> tuple[dict[str, str], str]:
    """(library versions, git commit) of this run."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("cvs-eval", "torch", "transformers", "onnxruntime", "onnx", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
        if dirty.stdout.strip():
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return versions, commit


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", default="smol", show_default=True, help="Model family.")
@click.option(
    "--engines",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("engines"),
    show_default=True,
    help="Engines root (fp32 and the int8 engine must be built: `make engines`).",
)
@click.option(
    "--int8",
    type=click.Choice(INT8_CHOICES),
    multiple=True,
    default=(DEFAULT_INT8,),
    show_default=True,
    help="int8 engine precision to benchmark (repeat for several; '' for none).",
)
@click.option(
    "--condition",
    "conditions",
    type=click.Choice(CONDITIONS),
    multiple=True,
    default=CONDITIONS,
    show_default=True,
    help="Workloads to run (repeat).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads for every variant and the GEMM ceiling [default: the machine's cores].",
)
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, hidden=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench"),
    show_default=True,
    help="Where results.json, results.md and results.png go.",
)
def main(
    model: str,
    engines: Path,
    int8: tuple[str, ...],
    conditions: tuple[str, ...],
    threads: int | None,
    repeats: int,
    limit: int | None,
    out: Path,
) -> None:
    """Benchmark the study's per-item loop against the runtime, side by side on one machine.

    \b
    Text: the study countries in the data × 48 questions; image: one 672×672 picture
    (2,928 image tokens) × all 239 value questions. The study loop and the unbatched variants
    run a fixed sample (96 text, 12 image items). Every speed is a ratio measured in this run,
    beside this machine's GEMM ceilings measured with the same threads.
    """
    from cvs_evaluator.bench.machine import cpu_flags, cpu_model, gemm_ceilings
    from cvs_evaluator.bench.report import markdown_table, write_reports

    check_arguments(model, engines, [p for p in int8 if p], out)
    threads = threads or os.cpu_count() or 1
    click.echo(f"measuring the GEMM ceilings with {threads} thread(s) …")
    ceilings, sources = gemm_ceilings(threads)
    plan = variant_plan(conditions, [p for p in int8 if p])
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cvs-bench-") as scratch:
        for name, condition, subset in plan:
            click.echo(f"{name} / {condition} ({subset}) …")
            repeated = [
                run_variant(
                    name,
                    condition,
                    subset,
                    model=model,
                    threads=threads,
                    engines=engines,
                    work=Path(scratch) / str(attempt),
                    limit=limit,
                )
                for attempt in range(repeats)
            ]
            runs[(name, condition)] = median_run(repeated)
            click.echo(f"  {runs[(name, condition)]['items_per_s']:.3f} items/s")
    # A ceiling is the best the machine does: measured again after the variants, the higher of
    # the two per precision is kept (a measurement disturbed by other load only reads low).
    click.echo("measuring the GEMM ceilings again …")
    after, _ = gemm_ceilings(threads)
    measured = {"before": ceilings, "after": after}
    ceilings = {key: _higher(value, after.get(key)) for key, value in ceilings.items()}
    versions, commit = provenance()
    results = {
        "machine": cpu_model(),
        "cpu_flags": cpu_flags(),
        "versions": versions,
        "commit": commit,
        "model": model,
        "threads": threads,
        "repeats": repeats,
        "ceilings_gflops": ceilings,
        "ceilings_source": sources,
        "ceilings_measured": measured,
        "variants": assemble(runs, model),
    }
    paths = write_reports(results, out)
    click.echo(markdown_table(results))
    click.echo("written: " + ", ".join(str(p) for p in paths))


def check_arguments(model: str, engines: Path, int8: Sequence[str], out: Path) -> None:
    """Everything the variants need, checked before the first measurement (a bench runs for
    minutes): the family, the survey data, each engine, and an --out the reports can go to."""
    from cvs_families.paths import DataDirMissing, check_writable_folder, data_dir
    from cvs_families.registry import UnknownFamilyError, get_family
    from cvs_runtime.engines import engine_folder

    try:
        get_family(model)
    except UnknownFamilyError as error:
        raise click.ClickException(f"--model: {error}") from None
    try:
        data_dir()  # every variant reads the survey data
    except DataDirMissing as error:
        raise click.ClickException(str(error)) from None
    for precision in ("fp32", *int8):
        folder = engine_folder(engines, "ort", model, precision)
        if not (folder / "manifest.json").is_file():
            raise click.ClickException(
                f"--engines {engines}: no {precision} engine for {model} in {folder}: build it "
                f"with `cvs-export build --engines {engines} --model {model} --precision "
                f"{precision}` (or `make engines`)"
            )
    check_writable_folder(out, "--out", "results folder")


def _higher(first: float | None, second: float | None) -> float | None:
    values = [v for v in (first, second) if v is not None]
    return max(values) if values else None


if __name__ == "__main__":
    main()
