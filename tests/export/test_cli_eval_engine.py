"""`cvs-eval` on engines: what it prints and writes, and the bad inputs refused before scoring."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cvs_evaluator.cli_eval import main
from cvs_evaluator.results import ResultStore
from tests.export.manifest_tools import reseal


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def engine_args(shelf: Any, out: Path, *extra: str) -> list[str]:
    root = shelf("tiny-yi").folder.parent.parent
    return [
        "--model", "tiny-yi", "--engine", "ort", "--engines", str(root), "--country", "DEU",
        "--question", "Q57", "--question", "Q58", "--out", str(out), "--no-progress",
        "--compare-to", "none", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
        (["--batch-size", "-3"], "'--batch-size': -3 is not in the range x>=1"),
        (["--per-section", "0"], "'--per-section': 0 is not in the range x>=1"),
        (["--image-cache-bytes", "lots"], "'lots' is not a size"),
        (["--prefix-cache-bytes", "12XB"], "'12XB' is not a size"),
        (["--activation-bytes", "-1MiB"], "'-1MiB' is not a size"),
    ],
)
def test_bad_numbers_are_refused_when_the_command_line_is_read(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = run(*args, "--out", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # nothing loaded, nothing written


def test_an_engine_run_scores_and_prints_where_the_time_went(
    engine_shelf: Any, tmp_path: Path
) -> None:
    result = run(*engine_args(engine_shelf, tmp_path))
    assert result.exit_code == 0, result.output
    rows = list(ResultStore(tmp_path / "store.jsonl").rows())
    assert len(rows) == 2 and {r["question"] for r in rows} == {"Q57", "Q58"}
    assert "stage times (this run):" in result.output
    # One group: its prefix computed once (a miss), every later batch of it a hit.
    assert re.search(r"prefix cache: \d+ hits, 1 misses, 0 evictions", result.output)


def test_an_image_run_checks_budgets_from_the_image_headers(
    engine_shelf: Any, tmp_path: Path
) -> None:
    args = engine_args(
        engine_shelf, tmp_path, "--condition", "image", "--include-uninformative-images"
    )
    args[args.index("DEU")] = "JPN"
    result = run(*args, "--image-cache-bytes", "1KiB")
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if "--image-cache-bytes" in x)
    assert "1.0 KiB" in line and "image" in line  # the flag, the budget given, what it holds
    assert not (tmp_path / "store.jsonl").exists()  # refused before any scoring


def test_a_prefix_budget_too_small_is_one_line_before_any_scoring(
    engine_shelf: Any, tmp_path: Path
) -> None:
    result = run(*engine_args(engine_shelf, tmp_path, "--prefix-cache-bytes", "1KiB"))
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if "prefix cache" in x)
    assert "1.0 KiB" in line and "--prefix-cache-bytes" in line
    assert "Traceback" not in result.output
    assert "items (" not in result.output  # refused by the preflight, before the run starts
    assert not (tmp_path / "store.jsonl").exists()


def test_an_engine_without_the_suffix_part_says_how_to_rebuild(
    engine_shelf: Any, tmp_path: Path
) -> None:
    old = tmp_path / "engines" / "tiny-yi" / "fp32"
    shutil.copytree(engine_shelf("tiny-yi").folder, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["parts"]["suffix"]
    manifest["files"] = [f for f in manifest["files"] if f["name"] != "suffix.onnx"]
    (old / "suffix.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    reseal(old)
    args = engine_args(engine_shelf, tmp_path / "runs")
    args[args.index("--engines") + 1] = str(tmp_path / "engines")
    result = run(*args)
    assert result.exit_code == 1
    assert "has no suffix part" in result.output
    assert "rebuild it: cvs-export build --model tiny-yi" in result.output

    from cvs_export.build import engine_up_to_date

    assert not engine_up_to_date("tiny-yi", "fp32", None, tmp_path / "engines")
    assert engine_up_to_date("tiny-yi", "fp32", None, engine_shelf("tiny-yi").folder.parent.parent)


def test_an_engine_run_is_compared_with_torch_and_writes_every_report(
    engine_shelf: Any, tmp_path: Path
) -> None:
    args = engine_args(engine_shelf, tmp_path)
    del args[args.index("--compare-to") : args.index("--compare-to") + 2]  # the default: torch
    result = run(*args)
    assert result.exit_code == 0, result.output
    for name in ("results.parquet", "alignment.html", "alignment.csv", "alignment.md",
                 "parity.html", "parity.json", "latency.json", "provenance.json"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["compare"] == "torch/fp32" and parity["summary"]["n_items"] == 2
    assert parity["verdict"]["passed"] and parity["summary"]["max_abs_dlogprob"] <= 1e-4
    rebuilt = run("report", str(tmp_path))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads((tmp_path / "parity.json").read_text()) == parity


def test_without_torch_parity_says_it_was_skipped(
    engine_shelf: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvs_evaluator import scorers

    monkeypatch.setattr(scorers, "torch_available", lambda: False)
    args = engine_args(engine_shelf, tmp_path)
    del args[args.index("--compare-to") : args.index("--compare-to") + 2]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "parity.json").read_text()) == {"skipped": "torch not installed"}
    assert not (tmp_path / "compare").exists()
