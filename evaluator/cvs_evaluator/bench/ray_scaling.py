"""`python -m cvs_evaluator.bench.ray_scaling`: one workload scored in one process, then on Ray
with 1 and 2 workers, side by side in one run (`make bench-ray`).

Each variant scores the same items into a fresh run folder through `cvs-eval`'s own `execute`;
items/s is the run's scoring rate (`timings.json`: items ÷ seconds of the scoring loop), and the
wall column adds what each variant pays before scoring (joining or starting the cluster,
placing and starting the workers, each worker opening the engine). The machine's CPU, flags and
fp32 GEMM ceiling at the same thread count are printed beside, as for `make bench`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click

VARIANTS: tuple[tuple[str, list[str]], ...] = (
    ("one process", []),
    ("ray, 1 worker", ["--ray", "auto", "--workers", "1"]),
    ("ray, 2 workers", ["--ray", "auto", "--workers", "2"]),
)


def _measure(args: list[str], out: Path) -> dict[str, Any]:
    from click.testing import CliRunner

    from cvs_evaluator.cli_eval import main

    started = time.perf_counter()
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    wall = time.perf_counter() - started
    if result.exit_code != 0:
        raise click.ClickException(f"{' '.join(args)}: {result.output.strip()[-400:]}")
    run = json.loads((out / "timings.json").read_text())["run"]
    workers = run.get("workers") or []
    return {
        "items": run["items"],
        "scoring_s": run["wall_seconds"],
        "items_per_s": run["items"] / run["wall_seconds"],
        "wall_s": wall,
        "threads": [w["threads"] for w in workers],
        "per_worker": [w["items"] for w in workers],
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="smol", show_default=True)
@click.option("--engines", type=click.Path(file_okay=False, path_type=Path), default="engines")
@click.option(
    "--countries",
    type=click.IntRange(min=2),
    default=8,
    show_default=True,
    help="The first N countries of the survey data (alphabetical ISO3).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="bench/ray.md")
def main(model: str, engines: Path, countries: int, out: Path) -> None:
    """Items/s of one process and of Ray with 1 and 2 workers on the same text items."""
    from cvs_evaluator.bench.machine import cpu_flags, cpu_model, gemm_ceilings
    from cvs_evaluator.wvs import load_study_shares

    cores = os.cpu_count() or 1
    chosen = sorted(set(load_study_shares()["country"]))[:countries]  # all in the survey data
    base = [
        "--model", model, "--engine", "ort", "--engines", str(engines), "--per-section", "2",
        "--compare-to", "none", "--no-progress", *[a for c in chosen for a in ("--country", c)],
    ]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="cvs-ray-bench-") as scratch:
        for name, extra in VARIANTS:
            click.echo(f"{name} …", err=True)
            rows.append((name, _measure([*base, *extra], Path(scratch) / name.replace(" ", "_"))))
    ceilings, _ = gemm_ceilings(cores)
    flags = [f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))]
    local = rows[0][1]["items_per_s"]
    lines = [
        f"# Ray scale-out: {model} on ort/fp32, {rows[0][1]['items']} text items "
        f"({countries} countries × 2 questions per section)",
        "",
        f"CPU: {cpu_model()}, {cores} cores; flags: {' '.join(flags)}; fp32 GEMM ceiling at "
        f"{cores} threads: {ceilings['fp32'] or 0:.0f} GFLOP/s.",
        "",
        "| variant | threads per worker | items per worker | items/s (scoring) | vs one process "
        "| wall incl. start (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {', '.join(map(str, row['threads'])) or cores} | "
            f"{', '.join(map(str, row['per_worker'])) or row['items']} | "
            f"{row['items_per_s']:.2f} | {row['items_per_s'] / local:.2f}× | {row['wall_s']:.1f} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
