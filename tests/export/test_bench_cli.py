"""`cvs-bench` end to end on a tiny engine: every variant in its own process, the results file's
schema, and the runtime's answers equal to the study's own loop (`model(**inputs)`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cvs_evaluator.bench.cli import main

pytestmark = pytest.mark.slow

VARIANT_KEYS = {
    "name", "condition", "precision", "items", "items_per_s", "ratio_vs_study_loop",
    "ratio_vs_torch_reference", "peak_rss_bytes", "max_abs_dlogprob_vs_study_loop",
    "mean_js_vs_study_loop", "max_js_vs_study_loop", "top1_vs_study_loop", "mean_js_vs_ort_fp32",
    "top1_vs_ort_fp32", "gflops_achieved",
}  # fmt: skip


def test_a_small_bench_writes_the_results_and_agrees_with_the_study_loop(
    engine_shelf: Any, tmp_path: Path
) -> None:
    root = engine_shelf("tiny-yi").folder.parent.parent
    result = CliRunner().invoke(
        main,
        ["--model", "tiny-yi", "--engines", str(root), "--int8", "", "--limit", "3",
         "--threads", "1", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "cpu_flags", "versions", "commit", "ceilings_gflops"} <= set(data)
    assert set(data["ceilings_gflops"]) == {"fp32", "bf16", "int8"}
    names = {(v["name"], v["condition"]) for v in data["variants"]}
    assert names == {
        (name, condition)
        for name in ("study-loop", "torch-reference", "ort-fp32-nocache", "ort-fp32")
        for condition in ("text", "image")
    }
    for variant in data["variants"]:
        assert set(variant) >= VARIANT_KEYS
        assert variant["precision"] == "fp32" and variant["items_per_s"] > 0
        if variant["name"] != "study-loop":
            # The project's scorers give the study loop's answers (fp32 chain bound).
            assert variant["max_abs_dlogprob_vs_study_loop"] <= 1e-4, variant
            assert variant["top1_vs_study_loop"] == 1.0
        else:
            assert variant["ratio_vs_study_loop"] == 1.0
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.png").is_file()
