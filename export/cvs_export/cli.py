"""`cvs-export`: plan, build and verify engines.

- `plan`: parameters, parts, shapes, file sizes and export peak memory of a family at full size,
  on the meta device (no weights needed).
- `build`: checkpoint → ONNX parts with one shared weight file → parity validation against
  PyTorch (parts at untraced shapes, and the whole chain against the reference scorer) →
  `engines/<model>/<precision>/manifest.json`. A parity failure stops the build with the table
  of differences; the rejected engine stays in `<precision>.partial/` for inspection.
- `build --precision P` (repeatable) or `--all-precisions`: lower precisions (fp16, bf16, the
  int8 recipes of `cvs_export.precision`) are built, validated the same way, and judged against
  their accuracy targets; the verdict goes into the manifest instead of failing the build
  (`cvs_export.precision_build`).
- `verify`: re-hash every engine file against its manifest.
- `compare --model M A B…`: the cost of a precision on the survey (sizes, items/s, JS distance,
  top-1 agreement, section shift). Survey prompts and human answers belong to the evaluator, so
  `compare` and the lower-precision builds (their calibration and verdict prompts) import
  `cvs_evaluator.precision_compare` lazily: the one edge from this stage into the evaluator.

Torch is imported only by `plan` and `build`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click

from cvs_export.parts import PRECISIONS, Precision

DEFAULT_BUILD_MODELS = ("tiny-vicuna", "tiny-yi", "tiny-qwen", "smol")
"""What `cvs-export build` (and `make engines`) builds without `--model`."""
DEFAULT_PLAN_MODELS = ("vicuna13b", "yi34b", "qwen72b")
"""What `cvs-export plan` plans without `--model`."""
SIZE_BOUND = 1.1
"""An engine folder may hold at most this many times one copy of the weights it reads."""


class BuildError(click.ClickException):
    """A build that cannot proceed; printed as one line, exit status 1."""


@dataclass(frozen=True)
class BuildSummary:
    """What one build produced and measured."""

    folder: Path
    """The finished engine folder."""
    manifest: Any
    """Its EngineManifest."""
    lines: tuple[str, ...]
    """Human-readable report lines."""


def _family(name: str) -> Any:
    from cvs_families.registry import UnknownFamilyError, get_family

    try:
        return get_family(name)
    except UnknownFamilyError as error:
        raise click.ClickException(f"--model: {error}") from None


def _known_models(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """`--model` checked while the command line is read, so a typo is named before any work."""
    for name in value if isinstance(value, tuple) else () if value is None else (value,):
        _family(name)
    return value


def check_writable_folder(path: Path, flag: str, what: str = "folder") -> None:
    """Refuse in one line, before anything slow starts, a folder `flag` names that cannot take
    what the command writes: a file, a path under a file, or a folder this process cannot write
    (a probe file is written and deleted, so root and read-only mounts are judged by what
    happens, not by permission bits). Folders created for the probe are removed again: a command
    refused later for another reason leaves nothing behind."""
    if path.exists() and not path.is_dir():
        raise click.ClickException(f"{flag} {path} is a file, not a {what}: choose another {flag}")
    blocker = next((parent for parent in path.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise click.ClickException(
            f"{flag} {path}: cannot create the {what}, {blocker} is a file: choose another {flag}"
        )
    created = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cvs-write-probe-"):
            pass
    except OSError as error:
        raise click.ClickException(
            f"{flag} {path}: the {what} cannot be created or written "
            f"({error.strerror or error}): choose another {flag}"
        ) from None
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def build_engine(
    name: str,
    *,
    weights: Path | None,
    precision: Precision,
    out_root: Path,
    chain: bool = True,
    echo: Callable[[str], None] = click.echo,
) -> BuildSummary:
    """Export, validate and record one family's engine into `out_root/<name>/<precision>/`."""
    import torch

    from cvs_export.llava_next import part_specs
    from cvs_export.manifest import build_manifest, write_manifest
    from cvs_export.onnx_export import EXPORTER, OPSET, engine_dtype, export_parts
    from cvs_export.planner import PeakMemory, plan_export
    from cvs_export.scoring_files import write_scoring_files
    from cvs_export.validate import enforce, validate_engine
    from cvs_families.checkpoint import CheckpointError, ensure_checkpoint, load_model
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig

    spec = _family(name)
    dtype = engine_dtype(precision)
    plan = plan_export(name, spec.config, precision)
    memory = PeakMemory()
    baseline = memory.start()
    try:
        path = ensure_checkpoint(spec, weights)
        loaded = load_model(spec, path, dtype=dtype)
    except CheckpointError as error:
        raise BuildError(str(error)) from None
    load_peak = memory.peak()
    specs = part_specs(spec.config)
    final = out_root / name / precision
    staging = out_root / name / f"{precision}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    loaded_rss = memory.start()
    started = time.perf_counter()
    with torch.no_grad():
        result = export_parts(loaded.model, specs, staging, precision=precision, opset=OPSET)
    export_seconds = time.perf_counter() - started
    export_peak = memory.peak()
    files = {part: staging / exported.file for part, exported in result.parts.items()}
    memory.start()
    started = time.perf_counter()
    report = validate_engine(
        loaded, OrtParts(files, OrtSessionConfig()), specs, precision, chain=chain
    )
    validate_seconds = time.perf_counter() - started
    validation_peak = memory.peak()
    (staging / "validation.txt").write_text(report.table() + "\n")
    enforce(report)  # ParityError: the table, and the rejected engine stays in staging
    folder_bytes = sum(p.stat().st_size for p in staging.iterdir() if p.is_file())
    ratio = folder_bytes / plan.weights_file_bytes
    if ratio > SIZE_BOUND:
        raise BuildError(
            f"{staging}: engine folder is {ratio:.3f}× one weight copy (bound {SIZE_BOUND}×)"
        )
    write_scoring_files(staging, spec, loaded.tokenizer)  # after the bound: they are no weights
    gib = 2**30
    export_info = {
        "seconds": round(export_seconds, 2),
        "part_seconds": {p: round(e.seconds, 2) for p, e in result.parts.items()},
        "validate_seconds": round(validate_seconds, 2),
        "weights_file_bytes": result.weight_bytes,
        "folder_bytes_before_manifest": folder_bytes,
        "planned_weights_file_bytes": plan.weights_file_bytes,
        "baseline_rss_bytes": baseline,
        "load_peak_rss_bytes": load_peak,
        "loaded_rss_bytes": loaded_rss,
        "export_peak_rss_bytes": export_peak,
        "validation_peak_rss_bytes": validation_peak,
        "predicted_export_peak_above_baseline_bytes": plan.predicted_export_peak_bytes,
        "peak_reset_per_phase": memory.resettable,
    }
    manifest = build_manifest(
        staging,
        family=name,
        checkpoint_fingerprint=loaded.fingerprint,
        precision=precision,
        opset=OPSET,
        exporter=EXPORTER,
        specs=specs,
        part_files={p: e.file for p, e in result.parts.items()},
        validation=report.to_json(),
        export=export_info,
    )
    write_manifest(staging, manifest)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    measured = export_peak - baseline
    lines = (
        f"{name} {precision}: engine in {final}",
        f"  export {export_seconds:.1f}s ("
        + ", ".join(f"{p} {e.seconds:.1f}s" for p, e in result.parts.items())
        + f"), validation {validate_seconds:.1f}s",
        f"  files: weights.bin {result.weight_bytes / 2**20:.1f} MiB, folder "
        f"{folder_bytes / 2**20:.1f} MiB = {ratio:.3f}× one weight copy (bound {SIZE_BOUND}×)",
        f"  memory above baseline {baseline / gib:.2f} GiB: load peak "
        f"{(load_peak - baseline) / gib:.2f} GiB; export peak measured {measured / gib:.2f} GiB "
        f"({measured / result.weight_bytes:.2f}× the weights), predicted "
        f"{plan.predicted_export_peak_bytes / gib:.2f} GiB; validation peak "
        f"{max(0, validation_peak - baseline) / gib:.2f} GiB",
        *("  " + line for line in report.table().splitlines() if not _is_deep_cache(line)),
    )
    for line in lines:
        echo(line)
    return BuildSummary(folder=final, manifest=manifest, lines=lines)


def _is_deep_cache(line: str) -> bool:
    """Table lines of cache layers past the first (kept in validation.txt, not on screen)."""
    words = line.split()
    return (
        len(words) > 1 and words[1].startswith("present.") and not words[1].startswith("present.0.")
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Checkpoint → ONNX parts → engines, validated against the PyTorch reference."""


_precision = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Engine precision (this stage builds fp32).",
)


@main.command()
@click.option(
    "--model", "models", multiple=True, callback=_known_models, help="Family name (repeatable)."
)
@_precision
def plan(models: tuple[str, ...], precision: str) -> None:
    """Plan engines on the meta device: parameters, parts, shapes, sizes, export peak memory."""
    from cvs_export.onnx_export import ExportError
    from cvs_export.planner import plan_export

    for name in models or DEFAULT_PLAN_MODELS:
        spec = _family(name)
        try:
            click.echo(plan_export(name, spec.config, cast(Precision, precision)).table())
        except ExportError as error:
            raise click.ClickException(str(error)) from None
        click.echo("")


@main.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    callback=_known_models,
    help=f"Family name (repeatable); default {', '.join(DEFAULT_BUILD_MODELS)}.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local checkpoint folder (real families); only with one --model.",
)
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(PRECISIONS),
    multiple=True,
    help="Engine precision (repeatable; default fp32). Below fp32 the build records an "
    "accuracy verdict instead of failing.",
)
@click.option(
    "--all-precisions", is_flag=True, help=f"Build every precision: {', '.join(PRECISIONS)}."
)
@click.option(
    "--engines",
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("engines"),
    show_default=True,
    help="Engines root: each engine goes to <root>/<model>/<precision>/ (--out: the old name).",
)
@click.option("--no-chain", is_flag=True, help="Skip the end-to-end chain check (parts only).")
@click.option(
    "--if-missing",
    is_flag=True,
    help="Build only engines that are missing or out of date (another checkpoint, a changed "
    "file, or a part this version adds); leave valid ones as they are.",
)
def build(
    models: tuple[str, ...],
    weights: Path | None,
    precisions: tuple[str, ...],
    all_precisions: bool,
    out: Path,
    no_chain: bool,
    if_missing: bool,
) -> None:
    """Export, validate and record engines (fp32 fails with a parity table on any difference;
    lower precisions get a verdict in their manifest)."""
    names = models or DEFAULT_BUILD_MODELS  # each --model checked by its callback
    if weights is not None and len(names) != 1:
        raise click.UsageError("--weights needs exactly one --model")
    if not if_missing:
        check_writable_folder(out, "--engines", "engines root")  # before the first slow build
    from cvs_export.onnx_export import ExportError
    from cvs_export.validate import ParityError

    requested = PRECISIONS if all_precisions else tuple(dict.fromkeys(precisions or ("fp32",)))
    for name in names:
        wanted = requested
        if if_missing:
            wanted = tuple(p for p in requested if not engine_up_to_date(name, p, weights, out))
            if wanted:  # an up-to-date engine on a read-only root is fine; a build is not
                check_writable_folder(out, "--engines", "engines root")
        try:
            if "fp32" in wanted:
                build_engine(
                    name, weights=weights, precision="fp32", out_root=out, chain=not no_chain
                )
            lower = [cast(Precision, p) for p in wanted if p != "fp32"]
            if lower:
                build_lower_precisions(name, lower, weights=weights, out_root=out)
        except ParityError as error:
            raise click.ClickException(
                f"{name}: {error}\nrejected engine kept in {out / name / 'fp32.partial'}"
            ) from None
        except ExportError as error:
            raise click.ClickException(f"{name}: {error}") from None


def engine_up_to_date(name: str, precision: str, weights: Path | None, out: Path) -> bool:
    """Whether `out/<name>/<precision>` is a valid engine of the checkpoint with every part."""
    from cvs_export.llava_next import part_specs
    from cvs_export.manifest import seal_if_unsealed
    from cvs_export.scoring_files import add_scoring_files
    from cvs_families.checkpoint import CheckpointError, checkpoint_fingerprint, ensure_checkpoint
    from cvs_families.scoring_files import SCORING_FILES
    from cvs_runtime.engine_manifest import ManifestError, check_engine

    folder = out / name / precision
    if not (folder / "manifest.json").is_file():
        return False
    spec = _family(name)
    try:
        seal_if_unsealed(folder)
        fingerprint = checkpoint_fingerprint(ensure_checkpoint(spec, weights))
        manifest = check_engine(
            folder,
            family=name,
            precision=precision,
            checkpoint_fingerprint=fingerprint,
            allow_failed_verdict=True,
        )
    except (ManifestError, CheckpointError) as error:
        click.echo(f"{name} {precision}: rebuilding ({error})")
        return False
    missing = sorted(set(part_specs(spec.config)) - set(manifest.parts))
    if missing:
        click.echo(f"{name} {precision}: rebuilding (no {', '.join(missing)} part)")
        return False
    if not set(SCORING_FILES) <= {record.name for record in manifest.files}:
        added = add_scoring_files(folder, spec, weights)
        click.echo(f"{name} {precision}: added {', '.join(added)} in place (no re-export)")
    click.echo(f"{name} {precision}: up to date in {folder}")
    return True


def build_lower_precisions(
    name: str,
    precisions: Sequence[Precision],
    *,
    weights: Path | None,
    out_root: Path,
    echo: Callable[[str], None] = click.echo,
) -> list[Any]:
    """Build each of `precisions` (not fp32) for one family, sharing its fp32 model and survey
    prompts; returns the `PrecisionBuild`s."""
    from cvs_evaluator.precision_compare import survey_requests
    from cvs_export.precision_build import (
        CALIBRATION_REQUESTS,
        VERDICT_REQUESTS,
        FamilyContext,
        SurveySet,
        build_precision_engine,
    )
    from cvs_families.checkpoint import CheckpointError, ensure_checkpoint, load_model

    spec = _family(name)
    try:
        loaded = load_model(spec, ensure_checkpoint(spec, weights))
    except CheckpointError as error:
        raise BuildError(str(error)) from None
    survey = SurveySet(
        verdict=tuple(survey_requests(spec, loaded.tokenizer, count=VERDICT_REQUESTS, half=0)),
        calibration=tuple(
            survey_requests(spec, loaded.tokenizer, count=CALIBRATION_REQUESTS, half=1)
        ),
    )
    context = FamilyContext(loaded=loaded, survey=survey)
    return [
        build_precision_engine(context, precision, out_root=out_root, echo=echo)
        for precision in precisions
    ]


@main.command()
@click.option("--model", required=True, callback=_known_models, help="Family name.")
@click.argument(
    "precisions", nargs=-1, required=True, type=click.Choice(PRECISIONS), metavar="PRECISION..."
)
@click.option(
    "--engines",
    "engines_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("engines"),
    show_default=True,
    help="Engines root (<root>/<model>/<precision>/).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the result stores go (resumable); default $CVS_CACHE/compare.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def compare(
    model: str,
    precisions: tuple[str, ...],
    engines_root: Path,
    out: Path | None,
    no_progress: bool,
) -> None:
    """Compare engines of MODEL on the survey: the first precision is the reference (e.g.
    `cvs-export compare --model smol fp32 int8-wo`). Scores all value questions × study
    countries (text) on each, then prints layers kept, size, items/s, mean JS, top-1 agreement
    and the largest section shift."""
    from cvs_evaluator.precision_compare import compare_engines
    from cvs_families.paths import cache_dir
    from cvs_runtime.engine_manifest import ManifestError

    if len(precisions) < 2:
        raise click.UsageError("name a reference precision and at least one to compare with it")
    out_dir = out or cache_dir() / "compare"
    check_writable_folder(out_dir, "--out", "folder for the result stores")
    try:
        table = compare_engines(
            model,
            precisions,
            engines_root=engines_root,
            out_dir=out_dir,
            progress=not no_progress,
        )
    except (ManifestError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(table)


@main.command(name="add-scoring-files")
@click.option("--model", required=True, callback=_known_models, help="Family name.")
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(PRECISIONS),
    multiple=True,
    help="Engine precision (repeatable); default every engine of MODEL under the root.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local checkpoint folder the engines were built from (real families).",
)
@click.option(
    "--engines",
    "engines_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("engines"),
    show_default=True,
    help="Engines root (<root>/<model>/<precision>/).",
)
def add_scoring_files_command(
    model: str, precisions: tuple[str, ...], weights: Path | None, engines_root: Path
) -> None:
    """Add the tokenizer, chat template and family facts to engines built before engines carried
    them, and record them in each manifest; nothing is re-exported. Needs the checkpoint the
    engines were built from (its fingerprint must match)."""
    from cvs_export.scoring_files import ScoringFilesError, add_scoring_files
    from cvs_families.checkpoint import CheckpointError
    from cvs_runtime.engine_manifest import ManifestError

    spec = _family(model)
    folders = [engines_root / model / p for p in precisions] or sorted(
        p.parent for p in (engines_root / model).glob("*/manifest.json")
    )
    if not folders:
        raise click.ClickException(f"no engines of {model} under {engines_root}")
    for folder in folders:
        try:
            added = add_scoring_files(folder, spec, weights)
        except (ManifestError, CheckpointError, ScoringFilesError) as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"{folder}: added {', '.join(added)}; manifest updated")


@main.command()
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "models",
    multiple=True,
    callback=_known_models,
    help="Verify <root>/<model>/<precision>/.",
)
@_precision
@click.option(
    "--engines",
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("engines"),
    show_default=True,
    help="Engines root, for --model (--out: the old name).",
)
def verify(folders: tuple[Path, ...], models: tuple[str, ...], precision: str, out: Path) -> None:
    """Re-hash every file of engines against their manifests and check each manifest's own
    hash; seal a manifest written before manifests carried one (only when every file matches)."""
    from cvs_export.manifest import verify_engine
    from cvs_runtime.engine_manifest import ManifestError

    targets = [*folders, *(out / name / precision for name in models)]
    if not targets:
        raise click.UsageError("name engine folders or --model")
    for folder in targets:
        try:
            result = verify_engine(folder)
        except ManifestError as error:
            raise click.ClickException(str(error)) from None
        refreshed = (
            f"; new mtimes recorded for {', '.join(result.mtimes_refreshed)}"
            if result.mtimes_refreshed
            else ""
        )
        sealed = (
            "; manifest sealed (it was written before manifests carried their own hash; "
            f"all {result.files} file hashes match)"
            if result.sealed
            else "; manifest seal ok"
        )
        click.echo(
            f"{folder}: ok, {result.files} files, {result.bytes_hashed / 2**20:.1f} MiB hashed "
            f"in {result.seconds:.2f} s ({result.bytes_per_second / 2**20:.0f} MiB/s)"
            + sealed
            + refreshed
        )


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Prompts per decoder run.",
)
@click.option(
    "--tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Tokens per prompt."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="onnxruntime threads per session.",
)
def sessions(folder: Path, batch: int, tokens: int, threads: int) -> None:
    """Two processes over one engine: resident memory (RSS/PSS/USS) and decoder time, with
    weight prepacking on (private copies) and off (shared pages)."""
    import json
    import subprocess
    import sys

    from cvs_runtime.ort_backend import process_memory

    click.echo(
        f"{'prepacking':<12} {'process':<8} {'load s':>7} {'run s':>7} "
        f"{'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8}"
    )
    for share in (False, True):
        command = [
            sys.executable,
            "-m",
            "cvs_export.cli",
            "session-worker",
            str(folder),
            "--batch",
            str(batch),
            "--tokens",
            str(tokens),
            "--threads",
            str(threads),
        ] + (["--share"] if share else [])
        workers = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            reports = [json.loads(w.stdout.readline()) for w in workers if w.stdout]
            memories = [process_memory(w.pid) for w in workers]  # both alive and loaded
        finally:
            for worker in workers:
                if worker.stdin:
                    worker.stdin.close()
                worker.wait(timeout=60)
        for index, (report, memory) in enumerate(zip(reports, memories, strict=True)):
            click.echo(
                f"{'off' if share else 'on':<12} {index:<8} {report['load_s']:>7.2f} "
                f"{report['run_s']:>7.3f} {memory.rss >> 20:>8} {memory.pss >> 20:>8} "
                f"{memory.uss >> 20:>8}"
            )


@main.command(name="session-worker", hidden=True)
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), required=True)
@click.option("--tokens", type=click.IntRange(min=1), required=True)
@click.option("--threads", type=click.IntRange(min=1), required=True)
@click.option("--share", is_flag=True)
def session_worker(folder: Path, batch: int, tokens: int, threads: int, share: bool) -> None:
    """Open the engine, time a decoder prefill, report, then hold until stdin closes."""
    import json
    import sys

    import numpy as np

    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig

    started = time.perf_counter()
    parts = OrtParts.open(folder, config=OrtSessionConfig(share, intra_op_threads=threads))
    load = time.perf_counter() - started
    assert parts.manifest is not None
    record = parts.manifest.parts["decoder"]
    vocab = int(record.outputs[0].shape[-1])
    cache = {t.name: t.shape for t in record.inputs if t.name.startswith("past.")}
    ids = np.random.default_rng(0).integers(0, vocab, (batch, tokens))
    feeds = {
        "inputs_embeds": parts.run("embedding", {"input_ids": ids})["inputs_embeds"],
        "position_ids": np.tile(np.arange(tokens), (batch, 1)),
        "attention_mask": np.ones((batch, tokens), dtype=np.int64),
        "logit_index": np.full((batch, 1), tokens - 1),
        **{
            name: np.zeros((batch, int(shape[1]), 0, int(shape[3])), dtype=np.float32)
            for name, shape in cache.items()
        },
    }
    parts.run("decoder", feeds)  # warm-up
    times = []
    for _ in range(3):
        began = time.perf_counter()
        parts.run("decoder", feeds)
        times.append(time.perf_counter() - began)
    print(json.dumps({"load_s": load, "run_s": min(times)}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()


def _register_build_trt() -> None:
    from cvs_export.cli_trt import build_trt

    main.add_command(build_trt)


_register_build_trt()
