"""Building engines: what `cvs-export build` and `cvs-doctor` run, as library functions.

- `build_engine`: checkpoint → ONNX parts with one shared weight file → parity validation
  against PyTorch (parts at untraced shapes, and the whole chain against the reference scorer) →
  `<root>/<model>/fp32/manifest.json`. A parity failure stops the build with the table of
  differences; the rejected engine stays in `<precision>.partial/` for inspection.
- `build_engines`: the `build` command's work for a `BuildSettings` — fp32 first, then the lower
  precisions of `cvs_export.precision`, each validated the same way and judged against its
  accuracy targets on the survey prompts of a request file (`--prompts`, written by `cvs-eval
  prompts`); `if_missing` keeps engines that are valid for the checkpoint.

Torch is imported only when a build starts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_export.parts import PRECISIONS, Precision

if TYPE_CHECKING:
    from cvs_export.onnx_export import ExportResult
    from cvs_export.planner import ExportPlan
    from cvs_export.validate import ValidationReport
    from cvs_families.checkpoint import LoadedModel
    from cvs_families.spec import FamilySpec
    from cvs_runtime.engine_manifest import EngineManifest
    from cvs_runtime.request_file import RequestFile

DEFAULT_BUILD_MODELS = ("tiny-vicuna", "tiny-yi", "tiny-qwen", "smol")
"""What `cvs-export build` (and `make engines`) builds without `--model`."""
SIZE_BOUND = 1.1
"""An engine folder may hold at most this many times one copy of the weights it reads."""


class BuildError(RuntimeError):
    """A build that cannot proceed; the message is one line (or a parity table)."""


@dataclass(frozen=True)
class BuildSummary:
    """What one build produced and measured."""

    folder: Path
    """The finished engine folder."""
    manifest: EngineManifest
    """Its manifest."""
    lines: tuple[str, ...]
    """Human-readable report lines."""


@dataclass(frozen=True)
class BuildSettings:
    """What `cvs-export build` was asked for."""

    models: tuple[str, ...] = DEFAULT_BUILD_MODELS
    """Family names (each checked by the registry)."""
    weights: Path | None = None
    """A local checkpoint folder (one model only)."""
    precisions: tuple[Precision, ...] = ("fp32",)
    """Precisions to build, fp32 first when asked."""
    out: Path = Path("engines")
    """Engines root: `<out>/<model>/<precision>/`."""
    chain: bool = True
    """Run the end-to-end chain check (else parts only)."""
    if_missing: bool = False
    """Build only engines that are missing or out of date."""
    prompts: tuple[Path, ...] = ()
    """Request files (`cvs-eval prompts`), one per model built below fp32."""


@dataclass
class _Memory:
    """Resident memory at each phase of a build (bytes)."""

    baseline: int = 0
    load_peak: int = 0
    loaded: int = 0
    export_peak: int = 0
    validation_peak: int = 0
    resettable: bool = False


@dataclass
class _Timing:
    """Seconds each phase of a build took."""

    export: float = 0.0
    validate: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)


def family(name: str) -> FamilySpec:
    """The registered family `name` (UnknownFamilyError lists the valid names)."""
    from cvs_families.registry import get_family

    return get_family(name)


def build_engine(
    name: str,
    *,
    weights: Path | None,
    precision: Precision,
    out_root: Path,
    chain: bool = True,
    echo: Callable[[str], None] = print,
) -> BuildSummary:
    """Export, validate and record one family's engine into `out_root/<name>/<precision>/`."""
    from cvs_export.llava_next import part_specs
    from cvs_export.manifest import build_manifest, publish_engine
    from cvs_export.onnx_export import EXPORTER, OPSET
    from cvs_export.planner import PeakMemory, plan_export
    from cvs_export.scoring_files import write_scoring_files

    spec = family(name)
    plan = plan_export(name, spec.config, precision)
    peaks = PeakMemory()
    memory = _Memory(baseline=peaks.start())
    loaded = _load(spec, weights, precision)
    memory.load_peak = peaks.peak()
    specs = part_specs(spec.config)
    staging = out_root / name / f"{precision}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    result, report, timing = _export_and_validate(
        loaded, specs, staging, precision, chain, peaks, memory
    )
    folder_bytes = _check_size(staging, plan)
    write_scoring_files(staging, spec, loaded.tokenizer)  # after the bound: they are no weights
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
        export=_export_info(result, plan, memory, timing, folder_bytes),
    )
    final = publish_engine(staging, out_root / name / precision, manifest)
    lines = _report_lines(name, precision, final, result, plan, memory, timing, folder_bytes)
    lines += tuple("  " + line for line in report.table().splitlines() if not _is_deep_cache(line))
    for line in lines:
        echo(line)
    return BuildSummary(folder=final, manifest=manifest, lines=lines)


def _load(spec: FamilySpec, weights: Path | None, precision: Precision) -> LoadedModel:
    from cvs_export.onnx_export import engine_dtype
    from cvs_families.checkpoint import CheckpointError, ensure_checkpoint, load_model

    try:
        return load_model(spec, ensure_checkpoint(spec, weights), dtype=engine_dtype(precision))
    except CheckpointError as error:
        raise BuildError(str(error)) from None


def _export_and_validate(
    loaded: LoadedModel,
    specs: Mapping[str, Any],
    staging: Path,
    precision: Precision,
    chain: bool,
    peaks: Any,
    memory: _Memory,
) -> tuple[ExportResult, ValidationReport, _Timing]:
    """Export the parts into `staging`, then validate them against PyTorch; ParityError (with
    the table, the rejected engine left in `staging`) unless every comparison passed."""
    import torch

    from cvs_export.onnx_export import OPSET, export_parts
    from cvs_export.validate import enforce, validate_engine
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig

    memory.loaded = peaks.start()
    started = time.perf_counter()
    with torch.no_grad():
        result = export_parts(loaded.model, specs, staging, precision=precision, opset=OPSET)
    timing = _Timing(export=time.perf_counter() - started)
    timing.parts = {p: e.seconds for p, e in result.parts.items()}
    memory.export_peak = peaks.peak()
    files = {part: staging / exported.file for part, exported in result.parts.items()}
    peaks.start()
    started = time.perf_counter()
    engine = OrtParts(files, OrtSessionConfig())
    report = validate_engine(loaded, engine, specs, precision, chain=chain)
    timing.validate = time.perf_counter() - started
    memory.validation_peak = peaks.peak()
    memory.resettable = peaks.resettable
    (staging / "validation.txt").write_text(report.table() + "\n")
    enforce(report)
    return result, report, timing


def _check_size(staging: Path, plan: ExportPlan) -> int:
    """The folder's bytes; BuildError when it holds more than `SIZE_BOUND` weight copies."""
    folder_bytes = sum(p.stat().st_size for p in staging.iterdir() if p.is_file())
    ratio = folder_bytes / plan.weights_file_bytes
    if ratio > SIZE_BOUND:
        raise BuildError(
            f"{staging}: engine folder is {ratio:.3f}× one weight copy (bound {SIZE_BOUND}×)"
        )
    return folder_bytes


def _export_info(
    result: ExportResult, plan: ExportPlan, memory: _Memory, timing: _Timing, folder_bytes: int
) -> dict[str, Any]:
    """The manifest's `export` record: times, sizes, memory per phase."""
    return {
        "seconds": round(timing.export, 2),
        "part_seconds": {p: round(s, 2) for p, s in timing.parts.items()},
        "validate_seconds": round(timing.validate, 2),
        "weights_file_bytes": result.weight_bytes,
        "folder_bytes_before_manifest": folder_bytes,
        "planned_weights_file_bytes": plan.weights_file_bytes,
        "baseline_rss_bytes": memory.baseline,
        "load_peak_rss_bytes": memory.load_peak,
        "loaded_rss_bytes": memory.loaded,
        "export_peak_rss_bytes": memory.export_peak,
        "validation_peak_rss_bytes": memory.validation_peak,
        "predicted_export_peak_above_baseline_bytes": plan.predicted_export_peak_bytes,
        "peak_reset_per_phase": memory.resettable,
    }


def _report_lines(
    name: str,
    precision: str,
    final: Path,
    result: ExportResult,
    plan: ExportPlan,
    memory: _Memory,
    timing: _Timing,
    folder_bytes: int,
) -> tuple[str, ...]:
    gib = 2**30
    measured = memory.export_peak - memory.baseline
    ratio = folder_bytes / plan.weights_file_bytes
    return (
        f"{name} {precision}: engine in {final}",
        f"  export {timing.export:.1f}s ("
        + ", ".join(f"{p} {s:.1f}s" for p, s in timing.parts.items())
        + f"), validation {timing.validate:.1f}s",
        f"  files: weights.bin {result.weight_bytes / 2**20:.1f} MiB, folder "
        f"{folder_bytes / 2**20:.1f} MiB = {ratio:.3f}× one weight copy (bound {SIZE_BOUND}×)",
        f"  memory above baseline {memory.baseline / gib:.2f} GiB: load peak "
        f"{(memory.load_peak - memory.baseline) / gib:.2f} GiB; export peak measured "
        f"{measured / gib:.2f} GiB ({measured / result.weight_bytes:.2f}× the weights), "
        f"predicted {plan.predicted_export_peak_bytes / gib:.2f} GiB; validation peak "
        f"{max(0, memory.validation_peak - memory.baseline) / gib:.2f} GiB",
    )


def _is_deep_cache(line: str) -> bool:
    """Table lines of cache layers past the first (kept in validation.txt, not on screen)."""
    words = line.split()
    return (
        len(words) > 1 and words[1].startswith("present.") and not words[1].startswith("present.0.")
    )


# The `build` command's work ---------------------------------------------------------------


def engine_up_to_date(
    name: str,
    precision: str,
    weights: Path | None,
    out: Path,
    echo: Callable[[str], None] = print,
) -> bool:
    """Whether `out/<name>/<precision>` is a valid engine of the checkpoint with every part;
    scoring files an older build lacks are added in place."""
    from cvs_export.llava_next import part_specs
    from cvs_export.manifest import seal_if_unsealed
    from cvs_export.scoring_files import add_scoring_files
    from cvs_families.checkpoint import CheckpointError, checkpoint_fingerprint, ensure_checkpoint
    from cvs_families.scoring_files import SCORING_FILES
    from cvs_runtime.engine_manifest import ManifestError, verified_engine

    folder = out / name / precision
    if not (folder / "manifest.json").is_file():
        return False
    spec = family(name)
    try:
        seal_if_unsealed(folder)
        fingerprint = checkpoint_fingerprint(ensure_checkpoint(spec, weights))
        manifest, _ = verified_engine(
            folder,
            family=name,
            precision=precision,
            checkpoint_fingerprint=fingerprint,
            allow_failed_verdict=True,
        )
    except (ManifestError, CheckpointError) as error:
        echo(f"{name} {precision}: rebuilding ({error})")
        return False
    missing = sorted(set(part_specs(spec.config)) - set(manifest.parts))
    if missing:
        echo(f"{name} {precision}: rebuilding (no {', '.join(missing)} part)")
        return False
    if not set(SCORING_FILES) <= {record.name for record in manifest.files}:
        added = add_scoring_files(folder, spec, weights)
        echo(f"{name} {precision}: added {', '.join(added)} in place (no re-export)")
    echo(f"{name} {precision}: up to date in {folder}")
    return True


def build_lower_precisions(
    name: str,
    precisions: Sequence[Precision],
    *,
    weights: Path | None,
    out_root: Path,
    prompts: RequestFile,
    echo: Callable[[str], None] = print,
) -> list[Any]:
    """Build each of `precisions` (not fp32) for one family, sharing its fp32 model and the
    survey prompts of `prompts`; returns the `PrecisionBuild`s."""
    from cvs_export.precision_build import FamilyContext, SurveySet, build_precision_engine
    from cvs_runtime.request_file import PRECISION_SETS

    loaded = _load(family(name), weights, "fp32")
    prompts.checked(family=name, checkpoint_fingerprint=loaded.fingerprint, sets=PRECISION_SETS)
    context = FamilyContext(loaded=loaded, survey=SurveySet.from_file(prompts))
    return [
        build_precision_engine(context, precision, out_root=out_root, echo=echo)
        for precision in precisions
    ]


def build_engines(settings: BuildSettings, echo: Callable[[str], None] = print) -> None:
    """Everything `cvs-export build` does: decide what to build (all of it, or with `if_missing`
    what is missing or stale), check that every model built below fp32 has its prompts, then
    build fp32 and the lower precisions model by model."""
    from cvs_families.paths import check_writable_folder

    if not settings.if_missing:
        check_writable_folder(settings.out, "--engines", "engines root")  # before slow work
    wanted = {
        name: tuple(
            p
            for p in settings.precisions
            if not settings.if_missing
            or not engine_up_to_date(name, p, settings.weights, settings.out, echo)
        )
        for name in settings.models
    }
    if settings.if_missing and any(wanted.values()):  # an up-to-date read-only root is fine
        check_writable_folder(settings.out, "--engines", "engines root")
    prompts = _prompts_for(
        [n for n, ps in wanted.items() if any(p != "fp32" for p in ps)], settings
    )
    for name, precisions in wanted.items():
        _build_model(name, precisions, settings, prompts.get(name), echo)


def _prompts_for(names: Sequence[str], settings: BuildSettings) -> dict[str, RequestFile]:
    """Each model's request file among `settings.prompts` (by the family in its header),
    checked against the checkpoint before anything is built; BuildError names what is missing."""
    from cvs_families.checkpoint import checkpoint_fingerprint, ensure_checkpoint
    from cvs_runtime.request_file import PRECISION_SETS, RequestFileError, read_request_file

    found: dict[str, RequestFile] = {}
    for path in settings.prompts:
        try:
            prompts = read_request_file(path)
        except RequestFileError as error:
            raise BuildError(f"--prompts {error}") from None
        if prompts.family in found:
            raise BuildError(f"--prompts: two files for {prompts.family}: {path}")
        found[prompts.family] = prompts
    for name in names:
        if name not in found:
            raise BuildError(
                f"--prompts: {name} is built below fp32 and needs its survey prompts: write them "
                f"with `cvs-eval prompts --model {name} --out FILE` and pass --prompts FILE"
            )
        fingerprint = checkpoint_fingerprint(ensure_checkpoint(family(name), settings.weights))
        try:
            found[name].checked(
                family=name, checkpoint_fingerprint=fingerprint, sets=PRECISION_SETS
            )
        except RequestFileError as error:
            raise BuildError(f"--prompts {error}") from None
    return found


def _build_model(
    name: str,
    precisions: Sequence[Precision],
    settings: BuildSettings,
    prompts: RequestFile | None,
    echo: Callable[[str], None],
) -> None:
    from cvs_export.onnx_export import ExportError
    from cvs_export.validate import ParityError

    try:
        if "fp32" in precisions:
            build_engine(
                name,
                weights=settings.weights,
                precision="fp32",
                out_root=settings.out,
                chain=settings.chain,
                echo=echo,
            )
        lower = [p for p in precisions if p != "fp32"]
        if lower and prompts is not None:
            build_lower_precisions(
                name,
                lower,
                weights=settings.weights,
                out_root=settings.out,
                prompts=prompts,
                echo=echo,
            )
    except ParityError as error:
        kept = settings.out / name / "fp32.partial"
        raise BuildError(f"{name}: {error}\nrejected engine kept in {kept}") from None
    except ExportError as error:
        raise BuildError(f"{name}: {error}") from None


def requested_precisions(precisions: Sequence[str], all_precisions: bool) -> tuple[Precision, ...]:
    """The precisions a build command asked for, in order, without repeats (default fp32)."""
    if all_precisions:
        return PRECISIONS
    chosen = tuple(dict.fromkeys(precisions or ("fp32",)))
    return tuple(p for p in PRECISIONS if p in chosen)
