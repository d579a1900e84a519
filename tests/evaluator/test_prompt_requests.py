"""The survey prompts a lower-precision build needs, written by the evaluator as a file
(`cvs-eval prompts`) for the export stage to read: disjoint halves, the checkpoint's stamp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cvs_evaluator.cli_prompts import prompts
from cvs_evaluator.prompt_requests import survey_requests, write_precision_prompts
from cvs_runtime.request_file import CALIBRATION_SET, VERDICT_SET, read_request_file


@pytest.fixture(scope="module")
def tiny_yi() -> tuple[Any, Any]:
    from cvs_families.checkpoint import ensure_checkpoint, load_tokenizer
    from cvs_families.registry import get_family

    spec = get_family("tiny-yi")
    return spec, load_tokenizer(spec, ensure_checkpoint(spec))


def test_survey_halves_share_no_question(tiny_yi: tuple[Any, Any]) -> None:
    spec, tokenizer = tiny_yi
    first = [r.item_id for r in survey_requests(spec, tokenizer, count=20, half=0)]
    second = [r.item_id for r in survey_requests(spec, tokenizer, count=20, half=1)]
    assert len(first) == 20 and len(second) == 20
    question = {i: i.split("|")[-1] for i in first + second}  # id: version|family|…|country|-|Q
    assert not {question[i] for i in first} & {question[i] for i in second}
    assert len({i.split("|")[3] for i in first}) == 8  # the study countries present take turns


def test_the_file_holds_both_sets_stamped_with_the_checkpoint(tmp_path: Path) -> None:
    from cvs_families.checkpoint import checkpoint_fingerprint, ensure_checkpoint
    from cvs_families.registry import get_family

    path = write_precision_prompts("tiny-yi", tmp_path / "p.npz", verdict=12, calibration=5)
    read = read_request_file(path)
    fingerprint = checkpoint_fingerprint(ensure_checkpoint(get_family("tiny-yi")))
    assert read.family == "tiny-yi" and read.checkpoint_fingerprint == fingerprint
    assert len(read.sets[VERDICT_SET]) == 12 and len(read.sets[CALIBRATION_SET]) == 5
    assert read.source["prompt_template_version"].startswith("cvs-prompt-")
    verdict_ids = {r.item_id for r in read.sets[VERDICT_SET]}
    assert not verdict_ids & {r.item_id for r in read.sets[CALIBRATION_SET]}


def test_the_command_writes_the_file_and_says_what_it_holds(tmp_path: Path) -> None:
    out = tmp_path / "prompts" / "tiny-yi.npz"
    args = ["--model", "tiny-yi", "--out", str(out), "--verdict", "6", "--calibration", "3"]
    result = CliRunner().invoke(prompts, args)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "6 verdict" in result.output
    assert len(read_request_file(out).sets[VERDICT_SET]) == 6


def test_an_unknown_model_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(prompts, ["--model", "tiny-yj", "--out", str(tmp_path / "p.npz")])
    assert result.exit_code == 2
    assert "--model" in result.output and "tiny-yi" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "p.npz").exists()


def test_help_shows_the_export_command_that_reads_the_file() -> None:
    result = CliRunner().invoke(prompts, ["--help"])
    assert result.exit_code == 0 and "cvs-export build" in result.output
    assert "--prompts" in result.output
