"""`cvs-export`: plans, one-line errors, verification, and a build that fails loudly."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cvs_export.cli import main
from cvs_export.validate import Comparison, ValidationReport


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_plan_covers_the_three_full_families_by_default() -> None:
    result = invoke("plan")
    assert result.exit_code == 0, result.output
    for text in ("13.351B", "34.752B", "72.667B", "export peak above baseline"):
        assert text in result.output


def test_an_unknown_model_is_one_line_with_a_suggestion() -> None:
    result = invoke("plan", "--model", "yi-34b")
    assert result.exit_code == 1
    assert "did you mean 'yi34b'" in result.output and "Traceback" not in result.output


def test_weights_need_exactly_one_model(tmp_path: Path) -> None:
    result = invoke(
        "build", "--model", "tiny-yi", "--model", "tiny-qwen", "--weights", str(tmp_path)
    )
    assert result.exit_code == 2 and "--weights needs exactly one --model" in result.output


def test_an_unknown_precision_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("build", "--model", "tiny-yi", "--precision", "int8", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "'int8' is not one of" in result.output and "int8-qdq" in result.output
    assert "Traceback" not in result.output


def test_a_real_family_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("build", "--model", "yi34b", "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "--weights" in result.output and "Traceback" not in result.output


def test_verify_needs_a_target() -> None:
    assert invoke("verify").exit_code == 2


def test_verify_rehashes_a_built_engine_and_names_a_corrupted_file(
    engine_shelf: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "tiny-yi" / "fp32"
    shutil.copytree(engine_shelf("tiny-yi").folder, copy)
    result = invoke("verify", "--model", "tiny-yi", "--engines", str(tmp_path))
    files = len(engine_shelf("tiny-yi").manifest.files)  # 4 parts, weights, validation, scoring
    assert files == 10
    assert (
        result.exit_code == 0 and f"ok, {files} files" in result.output
    )  # four graphs, weights, validation.txt
    weights = copy / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[0] ^= 1
    weights.write_bytes(bytes(data))
    result = invoke("verify", str(copy))
    assert result.exit_code == 1
    assert "weights.bin content changed" in result.output and "Traceback" not in result.output


def test_a_build_whose_validation_fails_stops_with_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cvs_export.validate as validate

    def failing(*args: Any, **kwargs: Any) -> ValidationReport:
        row = Comparison(
            part="decoder",
            output="logits",
            case="batch=3",
            max_abs=0.5,
            mean_abs=0.1,
            where=(0, 0, 7),
            engine=1.5,
            reference=1.0,
            atol=1e-4,
            rtol=1e-4,
            compared=10,
            passed=False,
        )
        return ValidationReport(precision="fp32", parts=[row])

    monkeypatch.setattr(validate, "validate_engine", failing)
    result = invoke("build", "--model", "tiny-qwen", "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "engine failed parity" in result.output and "FAIL at (0, 0, 7)" in result.output
    assert "rejected engine kept in" in result.output
    assert not (tmp_path / "tiny-qwen" / "fp32").exists()
    assert (tmp_path / "tiny-qwen" / "fp32.partial" / "validation.txt").is_file()


def test_sessions_reports_memory_of_two_processes_per_setting(engine_shelf: Any) -> None:
    result = invoke(
        "sessions", str(engine_shelf("tiny-yi").folder), "--batch", "2", "--tokens", "8"
    )
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("on", "0"), ("on", "1"), ("off", "0"), ("off", "1")]
    for row in rows:
        rss, pss, uss = (int(v) for v in row[4:7])
        assert 0 < uss <= pss <= rss


def test_a_lower_precision_without_prompts_is_one_line_before_any_build(tmp_path: Path) -> None:
    result = invoke(
        "build", "--model", "tiny-yi", "--precision", "int8-wo", "--engines", str(tmp_path)
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--prompts" in result.output and "cvs-eval prompts --model tiny-yi" in result.output
    assert not (tmp_path / "tiny-yi").exists()  # refused before the fp32 build


def test_prompts_of_another_checkpoint_are_refused_naming_the_field(tmp_path: Path) -> None:
    from cvs_runtime.request_file import CALIBRATION_SET, VERDICT_SET, write_request_file

    foreign = write_request_file(
        tmp_path / "p.npz",
        family="tiny-yi",
        checkpoint_fingerprint="0" * 64,
        sets={VERDICT_SET: [], CALIBRATION_SET: []},
    )
    result = invoke(
        "build",
        "--model",
        "tiny-yi",
        "--precision",
        "int8-wo",
        "--prompts",
        str(foreign),
        "--engines",
        str(tmp_path / "engines"),
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--prompts" in result.output and "checkpoint_fingerprint" in result.output
    assert not (tmp_path / "engines" / "tiny-yi").exists()


def test_build_trt_is_a_command_of_the_module_run_as_a_script() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cvs_export.cli", "build-trt", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--workspace-gib" in result.stdout
