"""`cvs-doctor`: prove one engine path on this machine, end to end, with a tiny model.

TensorRT and onnxruntime-gpu cannot be installed where this project is developed (no GPU), so
the server paths are verified where they run: on the user's GPU machine, by this command. It
builds a tiny family (seeded random weights, peaked outputs), exports it to ONNX (the same
`cvs-export build` code, validated on the onnxruntime CPU provider), builds or opens the engine
asked for (checking every file's sha256 and reporting what that costs), and compares it with the
PyTorch reference scorer (part outputs at untraced shapes and option scores through the whole
chain), then times both.

Every step is reported as `ok`, `FAIL`, `unavailable` (a library, provider or GPU missing: the
message names what to install) or `skipped` (an earlier step it needs did not pass); steps that
can run still run. Exit status: 0 when every step passed, 1 when one failed, 3 when none failed
but one was unavailable — the path is then not verified on this machine.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, cast

import click

from cvs_export.cli_options import engines_option
from cvs_runtime.engines import ENGINE_KINDS

ENGINES = tuple(ENGINE_KINDS)
"""Engine paths the doctor checks: every registered engine kind."""
DEFAULT_MODEL = "tiny-yi"
"""Llama text model with grouped key/value heads (7:1): the case most likely to break."""
TORCH_EXTRA = "pip install 'cvs-eval[export]'"
StepStatus = Literal["ok", "FAIL", "unavailable", "skipped"]
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3


class StepUnavailable(Exception):
    """A step cannot run on this machine; the message names what is missing."""


class StepFailed(Exception):
    """A step ran and its check failed; the message says how."""


@dataclass(frozen=True)
class Step:
    """One reported step."""

    name: str
    """libraries, family, export, op-check, engine, parity or timing."""
    status: StepStatus
    """Outcome."""
    detail: str
    """What was found or why it failed (several lines allowed)."""
    seconds: float = 0.0
    """Time the step took."""

    def line(self) -> str:
        """`[status] name  detail`, continuation lines indented."""
        head, *rest = self.detail.splitlines() or [""]
        lines = [f"[{self.status}]".ljust(14) + f"{self.name:<9} {head}"]
        lines += [" " * 24 + more for more in rest]
        return "\n".join(lines)


@dataclass
class DoctorReport:
    """All steps of one doctor run."""

    engine: str
    """Engine path checked."""
    model: str
    """Family used."""
    precision: str
    """Precision checked."""
    steps: list[Step] = field(default_factory=list)
    """Steps in order."""

    def step(self, name: str) -> Step:
        """The step called `name`."""
        return next(s for s in self.steps if s.name == name)

    @property
    def exit_code(self) -> int:
        """0: all passed; 1: a step failed; 3: nothing failed but a step was unavailable."""
        statuses = {s.status for s in self.steps}
        if "FAIL" in statuses:
            return EXIT_FAILED
        if statuses - {"ok"}:
            return EXIT_UNAVAILABLE
        return 0

    def verdict(self) -> str:
        """The closing line."""
        if self.exit_code == 0:
            return f"cvs-doctor: the {self.engine} path is verified on this machine"
        counts = {s: sum(x.status == s for x in self.steps) for s in ("FAIL", "unavailable")}
        said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return f"cvs-doctor: {said}: the {self.engine} path is NOT verified on this machine"


class _Run:
    """Runs steps in order, keeping what later steps need."""

    def __init__(self, report: DoctorReport, echo: Callable[[str], None], debug: bool) -> None:
        self.report = report
        self.echo = echo
        self.debug = debug
        self.state: dict[str, Any] = {}

    def step(self, name: str, needs: tuple[str, ...], body: Callable[[], str]) -> bool:
        missing = [n for n in needs if self._status(n) != "ok"]
        began = time.perf_counter()
        if missing:
            result = Step(name, "skipped", f"needs the {', '.join(missing)} step")
        else:
            try:
                result = Step(name, "ok", body())
            except StepUnavailable as error:
                result = Step(name, "unavailable", str(error))
            except StepFailed as error:
                result = Step(name, "FAIL", str(error))
            except Exception as error:  # a bug or an unforeseen library error: report, go on
                detail = f"{type(error).__name__}: {error}"
                if self.debug:
                    detail += "\n" + traceback.format_exc()
                result = Step(name, "FAIL", detail)
        result = Step(result.name, result.status, result.detail, time.perf_counter() - began)
        self.report.steps.append(result)
        self.echo(result.line())
        return result.status == "ok"

    def _status(self, name: str) -> str:
        return next((s.status for s in self.report.steps if s.name == name), "skipped")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _libraries() -> str:
    """Versions of what the paths need; unavailable only when the export itself cannot run."""
    try:
        import torch
    except ImportError as error:
        raise StepUnavailable(
            f"torch is not installed ({error}): {TORCH_EXTRA} (it builds the tiny model and "
            "the reference)"
        ) from None
    try:
        import onnxruntime as ort
    except ImportError:
        raise StepUnavailable(
            "onnxruntime is not installed: pip install 'cvs-eval[cpu]' (or '[gpu]' on a GPU "
            "machine; not both)"
        ) from None
    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
    found = [
        f"torch {torch.__version__} ({cuda if torch.cuda.is_available() else 'no CUDA'})",
        f"onnxruntime {ort.__version__} [{', '.join(ort.get_available_providers())}]",
        f"tensorrt {_version('tensorrt') or 'absent'}",
        f"cuda-python {_version('cuda-python') or 'absent'}",
    ]
    return "; ".join(found)


def run_doctor(
    engine: str,
    *,
    model: str = DEFAULT_MODEL,
    precision: str = "fp32",
    out: Path,
    repeats: int = 3,
    echo: Callable[[str], None] = click.echo,
    debug: bool = False,
) -> DoctorReport:
    """Run every step for `engine` and return the report (each step echoed as it ends)."""
    if engine not in ENGINES:
        raise click.BadParameter(f"engine {engine!r}; choose from {', '.join(ENGINES)}")
    report = DoctorReport(engine=engine, model=model, precision=precision)
    run = _Run(report, echo, debug)
    echo(f"cvs-doctor: engine {engine}, model {model}, precision {precision}, work in {out}")
    run.step("libraries", (), _libraries)
    run.step("family", ("libraries",), lambda: _family(run, model))
    run.step("export", ("family",), lambda: _export(run, model, Path(out)))
    needs_engine: tuple[str, ...] = ("export",)
    if engine in ("trt", "ort-trt"):
        run.step("op-check", ("export",), lambda: _op_check(run))
        needs_engine = ("export", "op-check")
    run.step("engine", needs_engine, lambda: _engine(run, engine, precision, Path(out)))
    run.step("parity", ("engine",), lambda: _parity(run, precision))
    run.step("timing", ("parity",), lambda: _timing(run, repeats))
    echo(report.verdict())
    return report


def _family(run: _Run, name: str) -> str:
    from cvs_families.checkpoint import CheckpointError, ensure_checkpoint, load_model
    from cvs_families.paths import DataDirMissing
    from cvs_families.registry import UnknownFamilyError, get_family

    try:
        spec = get_family(name)
        loaded = load_model(spec, ensure_checkpoint(spec))
    except (UnknownFamilyError, CheckpointError, DataDirMissing) as error:
        raise StepFailed(str(error)) from None
    run.state["loaded"] = loaded
    parameters = sum(p.numel() for p in loaded.model.parameters())
    return f"{name}: {parameters / 1e6:.2f}M parameters, {loaded.path} ({loaded.fingerprint[:12]})"


def _export(run: _Run, name: str, out: Path) -> str:
    from cvs_export.build import BuildError, build_engine
    from cvs_export.llava_next import part_specs
    from cvs_export.onnx_export import ExportError
    from cvs_export.validate import ParityError

    lines: list[str] = []
    try:
        summary = build_engine(
            name, weights=None, precision="fp32", out_root=out, echo=lines.append
        )
    except (ExportError, ParityError, BuildError) as error:
        raise StepFailed(str(error)) from None
    run.state["onnx"] = summary.folder
    run.state["specs"] = part_specs(run.state["loaded"].spec.config)
    chain = next((line.strip() for line in lines if line.strip().startswith("chain:")), "")
    return f"ONNX engine {summary.folder} (onnxruntime CPU parity passed)\n{chain}"


def _op_check(run: _Run) -> str:
    import onnx

    from cvs_export.trt_ops import check_graph_file, count_nodes, load_op_support

    support = load_op_support()
    folder: Path = run.state["onnx"]
    nodes, problems = 0, []
    for path in sorted(folder.glob("*.onnx")):
        nodes += count_nodes(onnx.load(str(path), load_external_data=False))
        problems += check_graph_file(path, support)
    if problems:
        shown = "\n".join(str(p) for p in problems[:10])
        raise StepFailed(f"{len(problems)} node(s) TensorRT would refuse:\n{shown}")
    return (
        f"{nodes} nodes of {len(list(folder.glob('*.onnx')))} graphs: all in TensorRT "
        f"{support.tensorrt_version}'s operator list (opset {support.opset_min}–"
        f"{support.opset_max})"
    )


def doctor_maxima(loaded: Any, specs: dict[str, Any]) -> dict[str, int]:
    """Profile maxima covering every shape the parity step runs: the specs' check sizes and the
    chain's prompts (longest expanded prompt, rounded up to 64), batch ≥ 8, tiles ≥ the
    family's most tiles."""
    from cvs_export.validate import validation_set
    from cvs_families.reference import ReferenceScorer

    requests = validation_set(loaded).requests
    scorer = ReferenceScorer(loaded)
    longest = max(scorer.expanded_length(r) for r in requests)
    context = -(-longest // 64) * 64
    maxima = {
        "batch": 8,
        "tiles": loaded.spec.max_tiles,
        "seq": context,
        "past": context,
        "prefix": context,
        "k": 4,
    }
    for spec in specs.values():
        for sizes in spec.check_sizes:
            for axis, size in sizes.items():
                if axis in maxima:
                    maxima[axis] = max(maxima[axis], int(size))
    return maxima


def _profiles(run: _Run) -> dict[str, Any]:
    from cvs_export.trt_build import axis_ranges, profile_for

    specs = run.state["specs"]
    maxima = doctor_maxima(run.state["loaded"], specs)
    return {name: [profile_for(spec, axis_ranges(spec, maxima))] for name, spec in specs.items()}


def _engine(run: _Run, engine: str, precision: str, out: Path) -> str:
    from cvs_runtime.ort_gpu import (
        CudaOptions,
        GpuProviderError,
        OrtGpuParts,
        TensorrtOptions,
    )

    folder: Path = run.state["onnx"]
    if engine == "trt":
        return _trt_engine(run, precision, out)
    options = None
    if engine == "ort-trt":
        profiles = {p: chosen[0].shapes for p, chosen in _profiles(run).items()}
        options = TensorrtOptions(
            fp16=precision == "fp16", engine_cache_path=out / "ort-trt-cache", profiles=profiles
        )
    try:
        runner = OrtGpuParts.open(
            folder, cast(Any, engine), cuda=CudaOptions(), tensorrt=options, verify="always"
        )
    except GpuProviderError as error:
        raise StepUnavailable(str(error)) from None
    run.state["runner"] = runner
    used = {part: runner.providers(part)[0] for part in runner.part_names}
    sessions = "sessions on " + ", ".join(f"{part}: {p}" for part, p in used.items())
    return f"{sessions}\n{_verified(runner)}"


def _verified(runner: Any) -> str:
    """The content check's line (`verified N files, X MiB in Y s (Z MiB/s)`): what checking
    every file's sha256 costs before each load on this machine."""
    report = getattr(runner, "verification", None)
    return report.line() if report is not None else "engine content not verified"


def _trt_engine(run: _Run, precision: str, out: Path) -> str:
    from cvs_export.trt_build import (
        TrtBuildError,
        TrtBuildOptions,
        axis_ranges,
        build_trt_engine,
    )
    from cvs_export.trt_ops import UnsupportedOpsError
    from cvs_export.validate import ParityError
    from cvs_runtime.trt_backend import TensorRTUnavailable, TrtParts

    specs = run.state["specs"]
    maxima = doctor_maxima(run.state["loaded"], specs)
    options = TrtBuildOptions(
        precision=cast(Any, precision),
        profiles={name: [axis_ranges(spec, maxima)] for name, spec in specs.items()},
        timing_cache=out / "trt-timing.cache",
    )
    lines: list[str] = []
    try:
        summary = build_trt_engine(
            run.state["onnx"], specs, out, options, run.state["loaded"], echo=lines.append
        )
        run.state["runner"] = TrtParts.open(summary.folder, verify="always")
    except TensorRTUnavailable as error:
        raise StepUnavailable(str(error)) from None
    except (TrtBuildError, UnsupportedOpsError, ParityError) as error:
        raise StepFailed(str(error)) from None
    return "\n".join([*lines[:3], _verified(run.state["runner"])])


def _parity(run: _Run, precision: str) -> str:
    from cvs_export.validate import validate_engine

    loaded, specs = run.state["loaded"], run.state["specs"]
    report = validate_engine(loaded, run.state["runner"], specs, cast(Any, precision))
    worst = max(report.parts, key=lambda c: c.max_abs)
    summary = (
        f"{len(report.parts)} part comparisons, worst {worst.part}.{worst.output} max|Δ| "
        f"{worst.max_abs:.3g} (atol {worst.atol:g}, rtol {worst.rtol:g})"
    )
    chain = report.table().splitlines()[-1]
    if not report.passed:
        failed = [line for line in report.table().splitlines() if "FAIL" in line]
        raise StepFailed("\n".join([summary, *failed[:10]]))
    return f"{summary}\n{chain}"


def _timing(run: _Run, repeats: int) -> str:
    from cvs_export.validate import validation_set
    from cvs_families.reference import ReferenceScorer, pad_token_for
    from cvs_runtime.scheduler import score_with_parts

    loaded = run.state["loaded"]
    requests = validation_set(loaded).requests
    scorer = ReferenceScorer(loaded)
    pad = pad_token_for(loaded)

    def median_ms(call: Callable[[], object]) -> float:
        call()  # warm-up: engine builds, caches, allocations
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            call()
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1000 / len(requests)

    engine = median_ms(
        lambda: score_with_parts(run.state["runner"], loaded.spec, requests, pad_token_id=pad)
    )
    reference = median_ms(lambda: scorer.score(requests))
    return (
        f"{len(requests)} requests × {repeats}: engine {engine:.2f} ms/request (prefix cache), "
        f"PyTorch reference {reference:.2f} ms/request (tiny model: proves the path, not speed)"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="ort",
    show_default=True,
    help="ort: onnxruntime on the CPU; ort-cuda / ort-trt: onnxruntime's CUDA / TensorRT "
    "provider; trt: TensorRT engines.",
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Tiny family to use.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp16: TensorRT builder flag (trt, ort-trt only).",
)
@engines_option(
    "Engines root the doctor builds into: <root>/<model>/fp32/, <root>/<model>/trt-<precision>/ "
    "(default $CVS_CACHE/doctor/<engine>)",
    default=None,
    dest="out",
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timing repeats."
)
@click.option("--debug", is_flag=True, help="Add tracebacks to unexpected failures.")
def main(
    engine: str, model: str, precision: str, out: Path | None, repeats: int, debug: bool
) -> None:
    """Build a tiny model, export it, run ENGINE and report parity with PyTorch and timing.

    Exit status 0: verified; 1: a step failed; 3: a library, provider or GPU is missing.
    """
    from cvs_families.paths import cache_dir, check_writable_folder
    from cvs_families.registry import UnknownFamilyError, get_family

    if precision == "fp16" and engine not in ("trt", "ort-trt"):
        raise click.UsageError("--precision fp16 needs --engine trt or ort-trt")
    try:
        get_family(model)
    except UnknownFamilyError as error:
        raise click.BadParameter(str(error), param_hint="--model") from None
    if out is None:
        out = cache_dir() / "doctor" / engine
    check_writable_folder(out, "--engines", "engines folder")
    report = run_doctor(
        engine, model=model, precision=precision, out=out, repeats=repeats, debug=debug
    )
    raise SystemExit(report.exit_code)
