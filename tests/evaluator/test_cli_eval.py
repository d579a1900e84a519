"""`cvs-eval`: what a command line asks for, each refusal as one line before anything is scored,
and the help of every command.

`run_pipeline.execute` is replaced by a recorder, so no model or engine loads: what reaches it is
the `RunRequest` the command line made, after `check_request` accepted it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cvs_evaluator.cli_eval import main, run
from cvs_evaluator.run_pipeline import RunRequest
from cvs_runtime.budgets import Budgets, default_budgets


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (the default --out and --engines are relative to it)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def executed(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RunRequest]]:
    """The requests that reached `execute` (which scores nothing here)."""
    requests: list[RunRequest] = []

    def record(request: RunRequest, echo: object) -> Path:
        requests.append(request)
        return request.out

    monkeypatch.setattr("cvs_evaluator.run_pipeline.execute", record)
    yield requests


def invoke(args: list[str], env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env)


def fake_engine(root: Path, model: str, folder: str) -> None:
    """What `check_request` looks for before an engine run: `<root>/<model>/<folder>/manifest.json`
    (its content is checked later, by the runtime)."""
    (root / model / folder).mkdir(parents=True)
    (root / model / folder / "manifest.json").write_text("{}")


# ---- what a command line asks for -------------------------------------------------------------


def test_run_with_nothing_asks_for_the_documented_defaults(
    executed: list[RunRequest], workdir: Path
) -> None:
    result = invoke([])
    assert result.exit_code == 0, result.output
    [request] = executed
    assert (request.model, request.engine, request.precision) == ("smol", "torch", "fp32")
    assert request.engines_root == Path("engines") and request.weights is None
    assert request.conditions == ("text",)
    assert request.countries == () and request.questions == ()  # the study's, chosen later
    assert request.per_section == 2
    assert request.images == "flags" and not request.include_uninformative_images
    assert request.out == Path("runs/smol-torch-fp32") and not request.fresh
    assert request.compare_to is None and request.parity_sample == 64
    assert request.screen is None
    assert (request.human_source, request.goqa_file) == ("wvs", None)
    assert request.batch_size == 8  # torch's default; engines are capped by max_batch
    memory = default_budgets()
    assert request.budgets == Budgets(
        image_cache_bytes=memory.image_cache_bytes,
        prefix_cache_bytes=memory.prefix_cache_bytes,
        activation_bytes=memory.activation_bytes,
        max_batch=64,
    )
    assert not request.share_weight_pages and not request.allow_failed_engine
    assert request.verify_engine == "cached"
    assert request.progress and not request.show_items
    assert list(workdir.iterdir()) == []  # the --out probe removed what it created


def test_no_subcommand_is_run(executed: list[RunRequest]) -> None:
    for args in ([], ["run"], ["--country", "DEU"], ["run", "--country", "DEU"]):
        assert invoke(args).exit_code == 0
    without, with_run, deu, deu_run = executed
    assert without == with_run
    assert deu == deu_run and deu.countries == ("DEU",)


def test_budget_options_reach_the_request(executed: list[RunRequest]) -> None:
    sizes = ["--image-cache-bytes", "512MiB", "--prefix-cache-bytes", "1GiB"]
    assert invoke([*sizes, "--activation-bytes", "1500MB", "--batch-size", "4"]).exit_code == 0
    assert invoke(["--no-cache", "--image-cache-bytes", "512MiB"]).exit_code == 0
    given, no_cache = executed
    assert given.budgets == Budgets(
        image_cache_bytes=512 * 2**20,
        prefix_cache_bytes=2**30,
        activation_bytes=1_500_000_000,
        max_batch=4,
    )
    assert given.batch_size == 4
    # --no-cache wins over a cache size; the activation budget is untouched
    assert (no_cache.budgets.image_cache_bytes, no_cache.budgets.prefix_cache_bytes) == (0, 0)
    assert no_cache.budgets.activation_bytes == default_budgets().activation_bytes


def test_an_engine_run_names_its_folder_after_model_engine_and_precision(
    executed: list[RunRequest], workdir: Path
) -> None:
    fake_engine(workdir / "built", "tiny-yi", "int8-wo")
    args = ["--model", "tiny-yi", "--engine", "ort", "--precision", "int8-wo"]
    result = invoke([*args, "--engines", "built", "--all-questions", "--no-progress"])
    assert result.exit_code == 0, result.output
    [request] = executed
    assert request.out == Path("runs/tiny-yi-ort-int8-wo")
    assert request.engines_root == Path("built")
    assert request.per_section is None  # --all-questions
    assert not request.progress
    assert request.compare_to is None  # torch/fp32 or none is decided when the run starts


def test_a_trt_engine_is_looked_for_in_its_own_folder(
    executed: list[RunRequest], workdir: Path
) -> None:
    fake_engine(workdir / "engines", "smol", "trt-fp32")
    result = invoke(["--engine", "trt", "--compare-to", "none"])
    assert result.exit_code == 0, result.output
    assert [r.engine for r in executed] == ["trt"]


# ---- each refusal: one line, exit status 1, nothing scored or written --------------------------

REFUSALS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown model": (["--model", "yi-34b"], ("--model", "'yi-34b'", "did you mean 'yi34b'")),
    "torch at fp16": (
        ["--engine", "torch", "--precision", "fp16"],
        ("--engine torch", "not fp16", "--engine ort --precision fp16"),
    ),
    "unknown precision": (
        ["--engine", "ort", "--precision", "int8-banana"],
        ("--precision", "'int8-banana'", "int8-wo"),
    ),
    "unknown comparison engine": (
        ["--compare-to", "pytorch/fp32"],
        ("--compare-to 'pytorch/fp32'", "unknown engine 'pytorch'", "ort-trt"),
    ),
    "comparison torch at fp16": (["--compare-to", "torch/fp16"], ("--compare-to", "not fp16")),
    "comparison unknown precision": (
        ["--compare-to", "ort/int8-banana"],
        ("--compare-to", "'int8-banana'"),
    ),
    "uninformative images": (
        ["--condition", "image"],
        ("--condition image", "smol", "--include-uninformative-images"),
    ),
    "screen without images": (["--screen", "3"], ("--screen", "image condition")),
    "goqa without its file": (["--human-source", "goqa"], ("--human-source goqa", "--goqa-file")),
    "goqa file without goqa": (
        ["--goqa-file", "goqa.csv"],
        ("--goqa-file", "--human-source goqa"),
    ),
    "unknown country": (["--country", "XYZ"], ("--country", "'XYZ'")),
    "unknown question": (["--question", "Q9999"], ("--question", "Q9999")),
    "no such images": (
        ["--condition", "image", "--include-uninformative-images", "--images", "nowhere"],
        ("--images nowhere", "no such folder or CSV"),
    ),
    "engine not built": (
        ["--engine", "ort", "--engines", "empty"],
        ("--engines empty", "no fp32 engine for smol", "`cvs-export build --engines empty"),
    ),
    "trt engine not built": (
        ["--engine", "trt", "--engines", "empty", "--compare-to", "none"],
        ("--engines empty", "trt-fp32", "`cvs-export build-trt"),
    ),
    "comparison engine not built": (
        ["--compare-to", "ort/fp32", "--engines", "empty"],
        ("--compare-to ort/fp32", "no fp32 engine for smol", "`cvs-export build"),
    ),
    "out is a file": (["--out", "afile"], ("--out afile", "is a file")),
    "out under a file": (["--out", "afile/run"], ("--out afile/run", "afile is a file")),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_command_line_is_one_line(
    case: str, executed: list[RunRequest], workdir: Path
) -> None:
    (workdir / "afile").write_text("not a folder")
    (workdir / "goqa.csv").write_text("question,selections,options,source\n")
    before = sorted(p.name for p in workdir.iterdir())
    args, facts = REFUSALS[case]
    result = invoke(args)
    assert result.exit_code == 1, result.output
    assert _one_error_line(result) and all(fact in result.output for fact in facts), result.output
    assert executed == []
    assert sorted(p.name for p in workdir.iterdir()) == before
    assert (workdir / "afile").read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_out_that_cannot_be_created_is_one_line(executed: list[RunRequest]) -> None:
    # /proc takes no new folders, whoever runs the test (root ignores permission bits)
    result = invoke(["--out", "/proc/cvs-eval-run"])
    assert result.exit_code == 1 and _one_error_line(result), result.output
    assert "--out /proc/cvs-eval-run" in result.output and "cannot be created" in result.output
    assert executed == []


@pytest.mark.parametrize(
    "env,facts",
    [
        ({"CVS_DATA": None}, ("CVS_DATA is not set",)),
        ({"CVS_DATA": "."}, ("CVS_DATA=.", "wvs7/")),
    ],
)
def test_survey_data_that_is_not_there_is_one_line(
    env: dict[str, str | None], facts: tuple[str, ...], executed: list[RunRequest]
) -> None:
    result = invoke([], env=env)
    assert result.exit_code == 1 and _one_error_line(result), result.output
    assert all(fact in result.output for fact in facts), result.output
    assert executed == []


@pytest.mark.parametrize(
    "args,option",
    [
        (["--human-source", "pew"], "--human-source"),
        (["--screen", "0"], "--screen"),
        (["--parity-sample", "0"], "--parity-sample"),
        (["--per-section", "0"], "--per-section"),
        (["--image-cache-bytes", "lots"], "--image-cache-bytes"),
        (["--engine", "onnx"], "--engine"),
        (["--condition", "audio"], "--condition"),
    ],
)
def test_a_value_click_refuses_names_its_option(
    args: list[str], option: str, executed: list[RunRequest]
) -> None:
    result = invoke(args)
    assert result.exit_code == 2
    assert f"'{option}'" in result.output.splitlines()[-1]
    assert "Traceback" not in result.output and executed == []


def test_a_user_error_during_the_run_is_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(request: RunRequest, echo: object) -> Path:
        raise ValueError("stored rows disagree with run.json: engine ort, not trt")

    monkeypatch.setattr("cvs_evaluator.run_pipeline.execute", fail)
    result = invoke([])
    assert result.exit_code == 1 and _one_error_line(result), result.output
    assert "engine ort, not trt" in result.output


def test_a_bug_during_the_run_is_not_dressed_as_a_user_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(request: RunRequest, echo: object) -> Path:
        raise RuntimeError("a bug")

    monkeypatch.setattr("cvs_evaluator.run_pipeline.execute", crash)
    result = invoke([])
    assert isinstance(result.exception, RuntimeError)
    assert "Error:" not in result.output


def _one_error_line(result: Result) -> bool:
    lines = [line for line in result.output.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output


# ---- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_the_group_help_lists_the_commands_and_the_default(flag: str) -> None:
    result = invoke([flag])
    assert result.exit_code == 0
    commands = result.output.partition("Commands:")[2].split()
    assert {"run", "report", "repair"} <= set(commands)
    assert "`run` is the default command" in " ".join(result.output.split())


def test_run_help_lists_every_option_with_its_help() -> None:
    result = invoke(["run", "--help"])
    assert result.exit_code == 0
    options = [p for p in run.params if isinstance(p, click.Option)]
    assert len(options) >= 25
    for option in options:
        assert option.help, f"{option.opts[0]} has no help"
        for name in option.opts:
            assert name in result.output, f"{name} missing from `cvs-eval run --help`"
    text = " ".join(result.output.split())
    for default in ("[default: smol]", "[default: torch]", "[default: fp32]", "[default: 64;"):
        assert default in text


@pytest.mark.parametrize(
    "command,words",
    [
        ("report", ("RUN", "reports", "scoring nothing", "results.parquet")),
        ("repair", ("RUN", "duplicated item ids", "store.jsonl.damaged")),
    ],
)
def test_report_and_repair_describe_themselves(command: str, words: tuple[str, ...]) -> None:
    result = invoke([command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert all(word in text for word in words), text


# ---- report and repair on folders that are not runs ---------------------------------------------


def test_report_on_a_folder_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    result = invoke(["report", str(tmp_path)])
    assert result.exit_code == 1 and _one_error_line(result), result.output
    assert "is not a run folder" in result.output and "settings.json" in result.output
    assert list(tmp_path.iterdir()) == []


def test_repair_on_a_folder_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    result = invoke(["repair", str(tmp_path)])
    assert result.exit_code == 1 and _one_error_line(result), result.output
    assert "is not a run folder" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["report", "repair"])
def test_report_and_repair_refuse_a_missing_folder_or_a_file(command: str, tmp_path: Path) -> None:
    missing = invoke([command, str(tmp_path / "absent")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "afile").write_text("")
    a_file = invoke([command, str(tmp_path / "afile")])
    assert a_file.exit_code == 2 and "is a file" in a_file.output
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]
