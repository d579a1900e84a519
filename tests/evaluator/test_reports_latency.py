"""Latency summaries: percentiles, totals, rates and hit rates equal numpy on the recorded calls."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from cvs_evaluator.reports import LatencyRecord, latency_summary
from cvs_evaluator.reports.figures import latency_bars
from cvs_evaluator.reports.latency import latency_tables

CALLS = {
    "suffix": [0.31, 0.12, 0.55, 0.40, 0.29, 1.70, 0.33],
    "prompt": [0.002, 0.004, 0.003],
    "vision": [2.5],
    "score": [0.9, 1.1],  # not an engine stage: listed after the engine stages
    "prefix": [],
}


def record() -> LatencyRecord:
    return LatencyRecord(
        stages=CALLS,
        items=42,
        wall_seconds=7.5,
        caches={
            "prefix": {
                "hits": 9,
                "misses": 3,
                "evictions": 1,
                "peak_bytes": 5e8,
                "budget_bytes": 1e9,
            },
            "image": {"hits": 0, "misses": 0, "evictions": 0, "peak_bytes": 0, "budget_bytes": 0},
        },
        peak_rss_bytes=3 * 2**30,
    )


def test_percentiles_and_totals_equal_numpy() -> None:
    summary = latency_summary(record())
    for stage, calls in CALLS.items():
        got = summary["stages"][stage]
        assert got["calls"] == len(calls)
        assert got["total_s"] == pytest.approx(sum(calls))
        if calls:
            assert got["p50_s"] == pytest.approx(np.percentile(calls, 50))
            assert got["p95_s"] == pytest.approx(np.percentile(calls, 95))
        else:
            assert got["p50_s"] is None and got["p95_s"] is None
    # Hand-checkable: 7 sorted suffix calls, the median is the 4th; p95 sits at 0.95 × 6 = 5.7,
    # 70% of the way from the 6th call to the 7th.
    ordered = sorted(CALLS["suffix"])
    assert summary["stages"]["suffix"]["p50_s"] == pytest.approx(ordered[3])
    assert summary["stages"]["suffix"]["p95_s"] == pytest.approx(
        ordered[5] + 0.7 * (ordered[6] - ordered[5])
    )
    assert list(summary["stages"]) == ["prompt", "vision", "prefix", "suffix", "score"]


def test_rates_and_memory() -> None:
    summary = latency_summary(record())
    assert summary["items_per_second"] == pytest.approx(42 / 7.5)
    assert summary["caches"]["prefix"]["hit_rate"] == pytest.approx(9 / 12)
    assert summary["caches"]["image"]["hit_rate"] is None  # never asked
    assert summary["peak_rss_bytes"] == 3 * 2**30
    json.dumps(summary, allow_nan=False)


def test_record_round_trips_through_json() -> None:
    original = record()
    again = LatencyRecord.from_json(json.loads(json.dumps(original.to_json())))
    assert again == original


def test_tables_and_figure_for_run_and_compare() -> None:
    run = latency_summary(record())
    torch = latency_summary(LatencyRecord(stages={"score": [1.0, 2.0]}, items=2, wall_seconds=3.0))
    overall, stages, caches = latency_tables(run, torch)
    assert list(overall.frame["engine"]) == ["run", "compare"]
    assert len(stages.frame) == len(CALLS) + 1
    assert set(caches.frame["cache"]) == {"prefix", "image"}
    png = latency_bars({"run": run, "compare": torch}).png
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1
    assert latency_tables(None, None) == []
