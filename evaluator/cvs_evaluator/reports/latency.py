"""Where a run's time went: per-stage call timings, cache use and peak memory, summarised.

The scheduler (engine runs) or the reference scorer (torch runs, stage "score") times each call
of each stage; a `LatencyRecord` holds those per-call seconds as measured, and
`latency_summary` reduces them to what `latency.json` and the report show: per stage the call
count, p50 and p95 (`numpy.percentile`, linear interpolation) and total seconds; items per
second over the run's wall time; each cache's hit rate; peak resident memory; and the check of
the first scored batch (`cvs_evaluator.output_guard`), which a run records beside its timings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cvs_evaluator.reports.tables import ReportTable

STAGES: tuple[str, ...] = ("prompt", "image_preprocess", "vision", "prefix", "suffix", "metric")
"""Engine-run stages in pipeline order (a record may hold any subset, and other stages after
these, e.g. "score" for the PyTorch reference)."""
CACHE_FIELDS: tuple[str, ...] = ("hits", "misses", "evictions", "peak_bytes", "budget_bytes")
"""What a record says about each cache."""


@dataclass(frozen=True)
class LatencyRecord:
    """A run's timings as measured."""

    stages: dict[str, list[float]]
    """Stage name → seconds of each call of that stage."""
    items: int
    """Items scored in the timed run."""
    wall_seconds: float
    """Wall-clock seconds of the timed run."""
    caches: dict[str, dict[str, float]] = field(default_factory=dict)
    """Cache name ("image", "prefix") → hits, misses, evictions, peak_bytes, budget_bytes."""
    peak_rss_bytes: int = 0
    """Peak resident set size of the process."""
    output_check: dict[str, Any] | None = None
    """`OutputCheck.to_json()` of the first scored batch; None when nothing was scored (or the
    record predates the check)."""
    verification: dict[str, Any] | None = None
    """`VerificationReport.to_json()` of the engine's content check before scoring; None for
    the PyTorch reference (or a record that predates the check)."""
    workers: list[dict[str, Any]] | None = None
    """A `--ray` run: each worker's node, process, threads, items and items/s (a replaced
    worker's place listed once, with its replacements); None for a run in one process."""

    def to_json(self) -> dict[str, Any]:
        """Plain data (the inverse of `from_json`)."""
        return {
            "stages": {name: list(map(float, calls)) for name, calls in self.stages.items()},
            "items": self.items,
            "wall_seconds": self.wall_seconds,
            "caches": {name: dict(values) for name, values in self.caches.items()},
            "peak_rss_bytes": self.peak_rss_bytes,
            "output_check": None if self.output_check is None else dict(self.output_check),
            "verification": None if self.verification is None else dict(self.verification),
            "workers": None if self.workers is None else [dict(w) for w in self.workers],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyRecord:
        """A record from `to_json`'s data."""
        return cls(
            stages={str(k): [float(v) for v in calls] for k, calls in data["stages"].items()},
            items=int(data["items"]),
            wall_seconds=float(data["wall_seconds"]),
            caches={
                str(k): {str(f): float(v) for f, v in c.items()} for k, c in data["caches"].items()
            },
            peak_rss_bytes=int(data.get("peak_rss_bytes", 0)),
            output_check=data.get("output_check"),
            verification=data.get("verification"),
            workers=data.get("workers"),
        )


def latency_summary(record: LatencyRecord) -> dict[str, Any]:
    """What latency.json holds for one run.

    {"stages": {stage: {"calls", "p50_s", "p95_s", "total_s"}} in `STAGES` order then the
    others sorted (a stage without calls has null percentiles), "items", "wall_seconds",
    "items_per_second" (null when no wall time), "caches": {name: {the record's fields,
    "hit_rate"}} (hits / (hits + misses); null when never asked), "peak_rss_bytes",
    "output_check" (the record's; null when nothing was scored), "verification" (the engine's
    content check: files hashed or taken from the record, bytes, seconds; null for torch),
    "workers" (a `--ray` run's workers; null for a run in one process)}.
    """
    order = [s for s in STAGES if s in record.stages]
    order += sorted(set(record.stages) - set(STAGES))
    stages: dict[str, dict[str, float | int | None]] = {}
    for name in order:
        calls = np.asarray(record.stages[name], dtype=np.float64)
        stages[name] = {
            "calls": int(calls.size),
            "p50_s": float(np.percentile(calls, 50)) if calls.size else None,
            "p95_s": float(np.percentile(calls, 95)) if calls.size else None,
            "total_s": float(calls.sum()),
        }
    caches: dict[str, dict[str, float | None]] = {}
    for name, values in sorted(record.caches.items()):
        asked = values.get("hits", 0.0) + values.get("misses", 0.0)
        caches[name] = {
            **{key: float(v) for key, v in values.items()},
            "hit_rate": values.get("hits", 0.0) / asked if asked else None,
        }
    return {
        "stages": stages,
        "items": record.items,
        "wall_seconds": record.wall_seconds,
        "items_per_second": record.items / record.wall_seconds if record.wall_seconds else None,
        "caches": caches,
        "peak_rss_bytes": record.peak_rss_bytes,
        "output_check": record.output_check,
        "verification": record.verification,
        "workers": record.workers,
    }


def output_check_text(check: Mapping[str, Any] | None) -> str:
    """The output check of a summary, in words for the throughput table."""
    if not check:
        return "not run (nothing scored)"
    verdict = "passed" if check.get("passed") else "failed"
    return f"{verdict} on {check.get('batch_items')} item(s)"


def verification_text(report: Mapping[str, Any] | None) -> str:
    """The engine's content check before scoring, in words for the throughput table."""
    if not report:
        return "none (PyTorch reference)"
    if report.get("mode") == "off":
        return "off (--verify-engine off)"
    mib = float(report.get("bytes_hashed", 0)) / 2**20
    return (
        f"{report.get('files_hashed')} file(s) hashed ({mib:.1f} MiB, "
        f"{float(report.get('seconds', 0.0)):.2f} s), {report.get('files_from_record')} from "
        "the verification record"
    )


def latency_tables(
    run: Mapping[str, Any] | None, compare: Mapping[str, Any] | None
) -> list[ReportTable]:
    """The latency section's tables from the summaries of the run and the comparison engine."""
    summaries = [(name, s) for name, s in (("run", run), ("compare", compare)) if s is not None]
    if not summaries:
        return []
    overall = pd.DataFrame(
        [
            {
                "engine": name,
                "items": s["items"],
                "wall_seconds": s["wall_seconds"],
                "items_per_second": s["items_per_second"],
                "peak_rss_bytes": s["peak_rss_bytes"],
                "output_check": output_check_text(s.get("output_check")),
                "engine_verification": verification_text(s.get("verification")),
            }
            for name, s in summaries
        ]
    )
    stages = pd.DataFrame(
        [
            {"engine": name, "stage": stage, **values}
            for name, s in summaries
            for stage, values in s["stages"].items()
        ],
        columns=["engine", "stage", "calls", "p50_s", "p95_s", "total_s"],
    )
    cache_columns = ["engine", "cache", *CACHE_FIELDS, "hit_rate"]
    caches = pd.DataFrame(
        [
            {"engine": name, "cache": cache, **values}
            for name, s in summaries
            for cache, values in s["caches"].items()
        ],
        columns=cache_columns,
    )
    return [
        ReportTable(
            "latency",
            "Throughput and memory",
            overall,
            "items_per_second: items scored over the timed run's wall time; peak_rss_bytes: "
            "the process's peak resident memory; output_check: the first scored batch checked "
            "for output uniform over the vocabulary or NaN/inf (a damaged engine) before "
            "anything was stored; engine_verification: the sha256 check of the engine's files "
            "against its manifest before loading (--verify-engine).",
        ),
        ReportTable(
            "latency_stages",
            "Time per stage",
            stages,
            "Per call of each stage: median (p50_s) and 95th percentile (p95_s) seconds, and "
            "the stage's total.",
        ),
        ReportTable(
            "latency_caches",
            "Caches",
            caches,
            "hit_rate: hits / (hits + misses); budget_bytes: the cache's byte budget.",
        ),
    ]
