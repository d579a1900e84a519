"""`cvs-eval`: score a model on WVS questions and compare it with each country's answers."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cvs_evaluator.prompts import CONDITIONS
from cvs_evaluator.scorers import ENGINES

if TYPE_CHECKING:
    from cvs_evaluator.ray_run import RaySettings
    from cvs_evaluator.run_pipeline import RunRequest


class ByteSize(click.ParamType):
    """A size like `512MiB`, `2GiB` or `1500MB` (plain bytes when there is no unit)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from cvs_runtime.budgets import BudgetError, parse_size

        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except BudgetError as error:
            self.fail(str(error), param, ctx)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class RunByDefault(click.Group):
    """`cvs-eval [OPTIONS]` is `cvs-eval run [OPTIONS]`: the subcommand may be left out."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=RunByDefault, context_settings=CONTEXT)
def main() -> None:
    """Score a model on the World Values Survey and report how closely it answers like each
    country's people; `run` is the default command (`cvs-eval --help` lists the others,
    `cvs-eval run --help` the run's options).

    \b
    Examples:
      cvs-eval --out runs/smol                     # score, compare, report into runs/smol
      cvs-eval report runs/smol                    # rebuild the reports, scoring nothing
      cvs-eval repair runs/smol                    # fix a store left damaged by an old version
    """


@main.command(context_settings=CONTEXT)
@click.option(
    "--model",
    default="smol",
    show_default=True,
    help="Model family (cvs-export plan --list shows them).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="torch",
    show_default=True,
    help="torch: the PyTorch reference; ort (CPU), ort-cuda, ort-trt (onnxruntime providers) "
    "and trt (TensorRT): engines built by `cvs-export build` under --engines.",
)
@click.option(
    "--engines",
    "engines_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("engines"),
    show_default=True,
    help="Engines root: <root>/<model>/<precision>/ (TensorRT: <root>/<model>/trt-<precision>/).",
)
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    help="Engine precision (torch: fp32 only; engines: those `cvs-export build` makes).",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local Hugging Face checkpoint folder (real families; tiny ones and smol are built).",
)
@click.option(
    "--condition",
    "conditions",
    type=click.Choice(CONDITIONS),
    multiple=True,
    default=("text",),
    show_default=True,
    help="Repeat for several: text (country in a persona), image, image+country.",
)
@click.option(
    "--country",
    "countries",
    multiple=True,
    help="ISO3 code; repeat. Default: the study's countries present in the data.",
)
@click.option(
    "--question",
    "questions",
    multiple=True,
    help="WVS id (Q57); repeat. Default: a subset from every section.",
)
@click.option(
    "--per-section",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Questions per section in the default subset.",
)
@click.option("--all-questions", is_flag=True, help="Ask all 239 value questions.")
@click.option(
    "--images",
    default="flags",
    show_default=True,
    help="Image conditions: 'flags', a folder <country>/<category>/<file>, or a Dollar Street CSV.",
)
@click.option(
    "--include-uninformative-images",
    is_flag=True,
    help="Score image conditions on a model whose vision tower carries no information (smol).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Most prompts per forward pass (torch: 8; engines: 64, fewer when --activation-bytes "
    "says so). Results do not depend on it.",
)
@click.option(
    "--image-cache-bytes",
    type=ByteSize(),
    default=None,
    help="Engines: image features kept across the run, e.g. 512MiB [default: 5% of memory].",
)
@click.option(
    "--prefix-cache-bytes",
    type=ByteSize(),
    default=None,
    help="Engines: prefix key/value caches kept across the run [default: 10% of memory].",
)
@click.option(
    "--activation-bytes",
    type=ByteSize(),
    default=None,
    help="Engines: activations of one pass (a group's prefix, or one suffix batch: the batch "
    "size follows from it) [default: 20% of memory].",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Engines: keep no image features or prefix caches (recomputed for every batch); for "
    "measuring what the caches save.",
)
@click.option(
    "--share-weight-pages",
    is_flag=True,
    help="onnxruntime: no weight prepacking, so processes share one copy of the weights (slower).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="The run folder: its store (a rerun resumes), results.parquet and the reports "
    "[default: runs/<model>-<engine>-<precision>].",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Discard what the run folder holds (store, reports, comparison) and start afresh.",
)
@click.option(
    "--compare-to",
    metavar="ENGINE[/PRECISION]",
    default=None,
    help="Score a sample on this engine too (rows in RUN/compare/) and write parity.html/.json "
    "[default for engine runs: torch/fp32 when torch is installed; 'none' for no comparison].",
)
@click.option(
    "--parity-sample",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Items scored on the comparison engine (all of them when the run has fewer).",
)
@click.option(
    "--screen",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Before an image condition, keep only images whose true country is among the model's "
    "K likeliest countries (the study used 3); the outcome goes in the report.",
)
@click.option(
    "--human-source",
    type=click.Choice(["wvs", "goqa"]),
    default="wvs",
    show_default=True,
    help="Human answers: wvs (our import of the WVS-7 microdata) or goqa (GlobalOpinionQA's "
    "WVS rows, the study's source; needs --goqa-file).",
)
@click.option(
    "--goqa-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="GlobalOpinionQA's CSV (Anthropic/llm_global_opinions) for --human-source goqa.",
)
@click.option(
    "--show-items", is_flag=True, help="Print each item's distribution beside the human one."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--verify-engine",
    type=click.Choice(["always", "cached", "off"]),
    default="cached",
    show_default=True,
    help="Check the engine's files by sha256 against its manifest before loading: always; "
    "cached (a file whose device, inode, size, mtime and ctime match an earlier successful "
    "check is not hashed again); off.",
)
@click.option(
    "--allow-failed-engine",
    is_flag=True,
    help="Use a lower-precision engine whose build verdict (accuracy against fp32) failed.",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="auto|ADDRESS",
    default=None,
    help="Score on Ray workers (needs cvs-eval[ray]): 'auto' joins the running cluster or "
    "starts a private one on 127.0.0.1; ADDRESS (host:port) joins that cluster. Results go "
    "to the same run folder as a local run (resume works across both).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="--ray: workers, each holding one engine [default: one per --gpus-per-worker GPUs, "
    "else one per node].",
)
@click.option(
    "--cpus-per-worker",
    type=click.IntRange(min=1),
    default=None,
    help="--ray: CPUs (threads) per worker [default: 1 with GPUs, else the node's CPUs, or the "
    "cluster's CPUs shared among --workers].",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="--ray: GPUs per worker (a request the cluster cannot hold fails within 30 s).",
)
@click.option(
    "--ray-ship-engine",
    is_flag=True,
    help="--ray: send the engine's files to the workers through Ray's object store instead of "
    "reading --engines on each node (for engines small enough to hold in memory).",
)
def run(**options: Any) -> None:
    """Ask MODEL the WVS value questions and compare its answers with each country's.

    Each item is one forward pass: the option letters' probabilities at the answer position,
    renormalised over the options, compared with the country's weighted answer shares
    (similarity = 1 − Jensen–Shannon distance). OUT is one run (one model, engine and precision):
    rows are written to OUT/store.jsonl batch by batch (a rerun resumes; a row is reused only
    under the same checkpoint, engine, precision, prompt template and image), then the reports:
    alignment.html (+ .csv, .md), parity.html (+ .json), latency.json, provenance.json, and
    results.parquet last.

    On an engine (ort, ort-cuda, ort-trt, trt) each image goes through the vision part once and
    each group's shared prefix (image, persona, instructions) through the decoder once per run;
    every question of the group is then scored against that one prefix cache. The caches and the
    batch size are bounded by the three byte budgets; the stage timings are printed at the end.

    \b
    Examples:
      cvs-eval                                    # smol, text condition, study countries
      cvs-eval --country DEU --question Q57 --question Q58 --show-items
      cvs-eval --model tiny-yi --condition image --images flags --country JPN
      cvs-eval --engine ort --precision int8-wo --compare-to ort/fp32 --out runs/int8
      cvs-eval --engine trt --model yi34b --weights /models/llava-v1.6-34b-hf
      cvs-eval --engine ort --ray auto --workers 2  # on Ray (a private local cluster if none)
    """
    from cvs_evaluator.run_checks import check_request
    from cvs_evaluator.run_pipeline import execute

    try:
        request = run_request(options)
        check_request(request)  # before anything loads, even where execute is replaced
        execute(request, click.echo)
    except _user_errors() as error:
        raise _one_line(error) from error


def run_request(options: dict[str, Any]) -> RunRequest:
    """`run`'s parsed options as the `RunRequest` the library runs: defaults that depend on
    other options resolved, the byte budgets built, the Ray flags checked."""
    from cvs_evaluator.run_pipeline import RunRequest
    from cvs_runtime.budgets import Budgets, default_budgets

    given = dict(options)
    defaults = default_budgets()
    no_cache = given.pop("no_cache")
    image, prefix = given.pop("image_cache_bytes"), given.pop("prefix_cache_bytes")
    budgets = Budgets(
        image_cache_bytes=_given(image, defaults.image_cache_bytes, no_cache),
        prefix_cache_bytes=_given(prefix, defaults.prefix_cache_bytes, no_cache),
        activation_bytes=_given(given.pop("activation_bytes"), defaults.activation_bytes),
        max_batch=given["batch_size"] or 64,
    )
    ray = _ray_settings(
        given.pop("ray_address"), given.pop("workers"), given.pop("cpus_per_worker"),
        given.pop("gpus_per_worker"), given.pop("ray_ship_engine"), given["engine"],
    )  # fmt: skip
    if given.pop("all_questions"):
        given["per_section"] = None
    model, engine, precision = given["model"], given["engine"], given["precision"]
    given["out"] = given["out"] or Path("runs") / f"{model}-{engine}-{precision}"
    given["batch_size"] = given["batch_size"] or 8
    given["progress"] = not given.pop("no_progress")
    return RunRequest(**given, budgets=budgets, ray=ray)


def _ray_settings(
    address: str | None,
    workers: int | None,
    cpus: int | None,
    gpus: float,
    ship: bool,
    engine: str,
) -> RaySettings | None:
    """`--ray` and its flags, checked: the worker flags mean nothing without it, and Ray must
    be installed."""
    import importlib.util

    from cvs_evaluator.ray_run import RaySettings

    given = [
        flag
        for flag, value in (
            ("--workers", workers), ("--cpus-per-worker", cpus),
            ("--gpus-per-worker", gpus or None), ("--ray-ship-engine", ship or None),
        )
        if value is not None
    ]  # fmt: skip
    if address is None:
        if given:
            raise click.ClickException(
                f"{given[0]} sets up Ray workers: it needs --ray auto|ADDRESS"
            )
        return None
    if address != "auto" and not re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d{1,5}", address):
        raise click.ClickException(
            f"--ray {address!r}: give 'auto' or a cluster address HOST:PORT (e.g. "
            "10.0.0.5:6379, what `ray start --head` printed; ray://HOST:10001 for Ray Client)"
        )
    if ship and engine == "torch":
        raise click.ClickException(
            "--ray-ship-engine ships an engine folder: --engine torch has none (its workers "
            "read --weights, or build the tiny checkpoints themselves)"
        )
    if importlib.util.find_spec("ray") is None:
        raise click.ClickException(
            "--ray needs Ray, which is not installed: pip install 'cvs-eval[ray]'"
        )
    return RaySettings(address, workers, cpus, gpus, ship)


def _given(value: int | None, default: int, off: bool = False) -> int:
    return 0 if off else default if value is None else value


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: one line each, exit status 1."""
    from cvs_evaluator.countries import UnknownCountry
    from cvs_evaluator.errors import DataError
    from cvs_evaluator.ray_run import RayUnitFailed
    from cvs_families.checkpoint_facts import CheckpointError
    from cvs_families.paths import DataDirMissing
    from cvs_families.registry import UnknownFamilyError
    from cvs_runtime.errors import BackendUnavailable, GpuProviderError, TensorRTUnavailable
    from cvs_runtime.scheduler import MissingSuffixPart

    return (
        DataError, DataDirMissing, CheckpointError, UnknownFamilyError, UnknownCountry,
        GpuProviderError, TensorRTUnavailable, BackendUnavailable, MissingSuffixPart, ValueError,
        FileNotFoundError, OSError, RayUnitFailed,
    )  # fmt: skip


def _one_line(error: Exception) -> click.ClickException:
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return click.ClickException(message)


@main.command()
@click.argument(
    "run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
def report(run_dir: Path) -> None:
    """Write RUN's reports again from its stored results, scoring nothing.

    Rebuilds results.parquet, alignment.html/.csv/.md, parity.html/.json, latency.json and
    provenance.json (e.g. after an upgrade of the report code).
    """
    from cvs_evaluator.run_pipeline import rebuild_reports

    try:
        folder = rebuild_reports(run_dir)
    except _user_errors() as error:
        raise _one_line(error) from error
    click.echo(f"report: {folder / 'alignment.html'}")


@main.command()
@click.argument(
    "run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
def repair(run_dir: Path) -> None:
    """Repair RUN's store: drop duplicated item ids (keeping the first row of each) and move
    damaged lines to store.jsonl.damaged. Needed for stores written by older versions."""
    from cvs_evaluator.run_folder import repair_run

    try:
        for store, outcome in repair_run(run_dir):
            click.echo(outcome.summary(store))
    except _user_errors() as error:
        raise _one_line(error) from error


def _register_prompts() -> None:
    from cvs_evaluator.cli_prompts import prompts

    main.add_command(prompts)


_register_prompts()

if __name__ == "__main__":
    sys.exit(main())
