"""`cvs-eval`: each bad command line is one line and a non-zero exit, before anything is scored."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cvs_evaluator.cli_eval import main


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--compare-to", "pytorch/fp32"], 1, "--compare-to 'pytorch/fp32': unknown engine"),
        (["--compare-to", "torch/fp16"], 1, "--engine torch runs the fp32 PyTorch reference"),
        (["--engine", "torch", "--precision", "fp16"], 1, "not fp16: score fp16 on an engine"),
        (["--engine", "ort", "--precision", "int8-banana"], 1, "unknown precision 'int8-banana'"),
        (["--human-source", "pew"], 2, "'pew' is not one of 'wvs', 'goqa'"),
        (["--human-source", "goqa"], 1, "--human-source goqa needs --goqa-file FILE"),
        (["--screen", "0"], 2, "'--screen': 0 is not in the range x>=1"),
        (["--screen", "3"], 1, "--screen screens images: it needs an image condition"),
        (["--parity-sample", "0"], 2, "'--parity-sample': 0 is not in the range x>=1"),
    ],
)
def test_a_bad_command_line_is_one_line_and_writes_nothing(
    args: list[str], code: int, message: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [*args, "--model", "tiny-yi", "--out", str(out)])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) <= 3  # click's usage lines (parse errors), then the one-line message
    assert not out.exists()


def test_a_goqa_file_without_the_goqa_source_is_refused(tmp_path: Path) -> None:
    goqa = tmp_path / "goqa.csv"
    goqa.write_text("question,selections,options,source\n")
    result = CliRunner().invoke(main, ["--goqa-file", str(goqa), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "--goqa-file is read only with --human-source goqa" in result.output


def test_help_lists_the_subcommands_and_run_is_the_default() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "report" in result.output and "repair" in result.output and "run" in result.output
    run_help = CliRunner().invoke(main, ["run", "--help"])
    assert "--compare-to" in run_help.output and "--parity-sample" in run_help.output


def test_report_on_a_folder_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a run folder" in result.output and "Traceback" not in result.output


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.write_text("not a folder")
    result = CliRunner().invoke(
        main, ["--model", "tiny-yi", "--question", "Q57", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "is a file, not a run folder" in result.output and "Traceback" not in result.output
    assert out.read_text() == "not a folder"
