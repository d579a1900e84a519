"""ONNX parts → serialized TensorRT engines, with profiles derived from the part specs.

TensorRT needs, for every dynamic input, an optimization profile: the smallest, the typical
(`opt`, what kernels are timed for) and the largest shape. They are derived here from each
`PartSpec`'s declared axes, never written per model:

- `axis_ranges`: min from the axis vocabulary (`AXES`: 0 for an empty cache, 1 otherwise), max
  from flags, opt from flags or half the max. `total` is not a free axis: at each of the three
  points it is `past + seq` (the vocabulary's definition), so every profile point is a shape the
  graph can really run, which TensorRT checks when it builds.
- A part may have several profiles (`TrtBuildOptions.profiles`, e.g. a decoder's prefill and
  continuation); the runtime picks the first that holds a call's shapes.

`build_trt_engine` then checks every graph against TensorRT's operator list (`trt_ops`), parses
it, builds with the precision's flags (fp16, bf16, int8 from a symmetric Q/DQ export) and a
shared timing cache, validates the engines against the PyTorch model through the same parity
checks as the ONNX export, and records them in the manifest with the TensorRT version and the
GPU model, which the runtime compares at load (`cvs_runtime.trt_backend`).

TensorRT and cuda-python are imported only inside the build; everything else here is numpy/onnx.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import onnx

from cvs_export.parts import AXES, PartSpec, Precision
from cvs_export.trt_ops import check_graph_file, enforce_supported
from cvs_runtime.engine_manifest import EngineManifest, verified_engine
from cvs_runtime.trt_backend import (
    MANIFEST_KEY,
    CudaRuntime,
    Shape,
    TensorRTRecord,
    TrtParts,
    import_tensorrt,
)

if TYPE_CHECKING:
    from cvs_families.checkpoint import LoadedModel

TrtPrecision = Literal["fp32", "fp16", "bf16", "int8"]
TRT_PRECISIONS: tuple[TrtPrecision, ...] = ("fp32", "fp16", "bf16", "int8")
SOURCE_PRECISION: dict[TrtPrecision, str] = {
    "fp32": "fp32",
    "fp16": "fp32",
    "bf16": "fp32",
    "int8": "int8-qdq",
}
"""The ONNX engine each TensorRT precision is built from: the fp32 export (TensorRT lowers it),
or for int8 the symmetric Q/DQ export."""
VALIDATION_PRECISION: dict[TrtPrecision, Precision] = {
    "fp32": "fp32",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8-qdq",
}
"""Whose tolerances a TensorRT precision is validated with (int8: the Q/DQ recipe's)."""
DERIVED_AXES: dict[str, tuple[str, str]] = {"total": ("past", "seq")}
"""Axes that are sums of others at every point (the vocabulary's `total` = past + seq)."""
DEFAULT_MAXIMA: dict[str, int] = {
    "batch": 8,
    "tiles": 5,
    "seq": 4096,
    "past": 4096,
    "prefix": 4096,
    "k": 1,
}
"""Profile maxima when no flag gives them: 5 anyres tiles, a 4k context."""


class ProfileError(ValueError):
    """Profile limits that contradict the axis vocabulary or a graph's inputs."""


class TrtBuildError(RuntimeError):
    """TensorRT could not parse or build a part; the message carries its errors."""


@dataclass(frozen=True)
class AxisRange:
    """Smallest, typical and largest size of one axis in a profile."""

    min: int
    """Smallest size the engine accepts."""
    opt: int
    """Size the kernels are timed for."""
    max: int
    """Largest size the engine accepts."""

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise ProfileError(f"need 0 ≤ min ≤ opt ≤ max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class Profile:
    """One optimization profile of one part: the three points and the input shapes at them."""

    part: str
    """Part name."""
    points: tuple[dict[str, int], dict[str, int], dict[str, int]]
    """Axis sizes at min, opt and max (derived axes included)."""
    shapes: dict[str, tuple[Shape, Shape, Shape]]
    """Input name → (min, opt, max) shape."""

    def to_json(self) -> dict[str, list[list[int]]]:
        """Input → [min, opt, max] as lists (the manifest's form)."""
        return {name: [list(s) for s in shapes] for name, shapes in self.shapes.items()}


def free_axes(spec: PartSpec) -> list[str]:
    """The axes of `spec`'s inputs that a profile sets directly (derived ones excluded)."""
    used = list(dict.fromkeys(a for t in spec.inputs for a in t.dynamic_axes.values()))
    derived = {a for a, parts in DERIVED_AXES.items() if a in used and set(parts) <= set(used)}
    return [a for a in used if a not in derived]


def axis_ranges(
    spec: PartSpec, maxima: Mapping[str, int], optima: Mapping[str, int] | None = None
) -> dict[str, AxisRange]:
    """Per free axis of `spec`: min from the vocabulary, max from `maxima`, opt from `optima`
    (default half the max). Keys `spec` does not use are ignored, so one set of flags serves
    every part; a derived axis (`total`) may not be given."""
    optima = optima or {}
    axes = free_axes(spec)
    given_derived = sorted(set(maxima) & {a for a in DERIVED_AXES if a not in axes})
    if given_derived:
        raise ProfileError(
            f"part {spec.name}: {given_derived} is derived (total = past + seq); give past and seq"
        )
    missing = [a for a in axes if a not in maxima]
    if missing:
        raise ProfileError(f"part {spec.name}: no maximum for axes {missing}")
    ranges = {}
    for axis in axes:
        low, high = AXES[axis].min, int(maxima[axis])
        if high < low:
            raise ProfileError(
                f"part {spec.name}: max {axis} {high} is below the axis minimum {low}"
            )
        opt = int(optima.get(axis, max(low, high // 2)))
        if not low <= opt <= high:
            raise ProfileError(f"part {spec.name}: opt {axis} {opt} outside {low}..{high}")
        ranges[axis] = AxisRange(low, opt, high)
    return ranges


def profile_for(spec: PartSpec, ranges: Mapping[str, AxisRange]) -> Profile:
    """The input shapes of `spec` at the min, opt and max points of `ranges`."""
    if set(ranges) != set(free_axes(spec)):
        raise ProfileError(
            f"part {spec.name}: ranges name {sorted(ranges)}, the part's axes are "
            f"{sorted(free_axes(spec))}"
        )
    points = []
    for pick in ("min", "opt", "max"):
        point = {axis: getattr(r, pick) for axis, r in ranges.items()}
        for axis, (a, b) in DERIVED_AXES.items():
            if a in point and b in point:
                point[axis] = point[a] + point[b]
        points.append(point)
    low, opt, high = points
    shapes = {
        t.name: (t.concrete_shape(low), t.concrete_shape(opt), t.concrete_shape(high))
        for t in spec.inputs
    }
    return Profile(spec.name, (low, opt, high), shapes)


def graph_input_dims(path: Path) -> dict[str, tuple[int | None, ...]]:
    """Input name → dims of an ONNX graph (None where the dimension is symbolic)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return {
        value.name: tuple(
            d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim
        )
        for value in model.graph.input
        if value.name not in initializers
    }


def check_profile_dims(profile: Profile, dims: Mapping[str, Sequence[int | None]]) -> None:
    """Raise ProfileError unless `profile` gives every graph input a shape of the right rank
    whose static dimensions equal the graph's (None or -1 marks a dynamic dimension)."""
    if set(profile.shapes) != set(dims):
        raise ProfileError(
            f"part {profile.part}: profile inputs {sorted(profile.shapes)} differ from the "
            f"graph's {sorted(dims)}"
        )
    for name, graph_dims in dims.items():
        for label, shape in zip(("min", "opt", "max"), profile.shapes[name], strict=True):
            if len(shape) != len(graph_dims):
                raise ProfileError(
                    f"part {profile.part}: {name} has rank {len(graph_dims)} in the graph, "
                    f"{len(shape)} in the profile"
                )
            for i, (want, got) in enumerate(zip(graph_dims, shape, strict=True)):
                if want is not None and want >= 0 and want != got:
                    raise ProfileError(
                        f"part {profile.part}: {name} dimension {i} is {want} in the graph, "
                        f"{got} at the profile's {label} point"
                    )


# ----------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class TrtBuildOptions:
    """How the engines of one model are built."""

    precision: TrtPrecision = "fp32"
    """Builder precision (fp16/bf16 from the fp32 export, int8 from the Q/DQ export)."""
    profiles: Mapping[str, Sequence[Mapping[str, AxisRange]]] = field(default_factory=dict)
    """Per part, the ranges of each optimization profile (default: `DEFAULT_MAXIMA`)."""
    workspace_bytes: int | None = None
    """TensorRT's workspace pool limit (None: TensorRT's default, the device memory)."""
    timing_cache: Path | None = None
    """Timing cache file, read if present and written back (None: no timing cache)."""
    optimization_level: int | None = None
    """Builder optimisation level 0–5 (None: TensorRT's default, 3)."""
    device: int = 0
    """CUDA device to build on."""


@dataclass(frozen=True)
class TrtBuildSummary:
    """What `build_trt_engine` produced."""

    folder: Path
    """The finished engine folder."""
    manifest: EngineManifest
    """Its manifest."""
    lines: tuple[str, ...]
    """Report lines."""


def profiles_for(
    specs: Mapping[str, PartSpec], options: TrtBuildOptions
) -> dict[str, list[Profile]]:
    """Every part's profiles from the options (parts without ranges: `DEFAULT_MAXIMA`)."""
    chosen: dict[str, list[Profile]] = {}
    for name, spec in specs.items():
        ranges = options.profiles.get(name) or [axis_ranges(spec, DEFAULT_MAXIMA)]
        chosen[name] = [profile_for(spec, r) for r in ranges]
    return chosen


def _build_plan(
    trt: Any,
    logger: Any,
    path: Path,
    profiles: Sequence[Profile],
    options: TrtBuildOptions,
    cache: list[Any],
) -> bytes:
    """Parse one graph and build its serialized engine (`cache` holds the shared timing cache)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TrtBuildError(f"{path.name}: TensorRT's ONNX parser failed: {errors}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dims = {t.name: tuple(None if int(d) < 0 else int(d) for d in t.shape) for t in inputs}
    for profile in profiles:
        check_profile_dims(profile, dims)
    config = builder.create_builder_config()
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    flag = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}.get(options.precision)
    if flag is not None:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    if options.timing_cache is not None:
        if not cache:
            stored = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
            cache.append(config.create_timing_cache(stored))
        config.set_timing_cache(cache[0], False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"{path.name}: TensorRT could not build the engine (see its log)")
    return bytes(serialized)


def _build_plans(
    trt: Any,
    files: Mapping[str, Path],
    profiles: Mapping[str, Sequence[Profile]],
    options: TrtBuildOptions,
    staging: Path,
) -> dict[str, float]:
    """Build every part into `staging/<part>.plan`, sharing one timing cache; seconds per part."""
    logger = trt.Logger(trt.Logger.WARNING)
    cache: list[Any] = []
    seconds: dict[str, float] = {}
    for part, path in files.items():
        began = time.perf_counter()
        plan = _build_plan(trt, logger, path, profiles[part], options, cache)
        (staging / f"{part}.plan").write_bytes(plan)
        seconds[part] = round(time.perf_counter() - began, 2)
    if options.timing_cache is not None and cache:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        options.timing_cache.write_bytes(bytes(cache[0].serialize()))
    return seconds


def build_trt_engine(
    source: Path,
    specs: Mapping[str, PartSpec],
    out_root: Path,
    options: TrtBuildOptions,
    loaded: LoadedModel,
    *,
    echo: Callable[[str], None] = print,
) -> TrtBuildSummary:
    """Build, validate and record TensorRT engines of the ONNX engine in `source` into
    `out_root/<family>/trt-<precision>/` (staged in `<name>.partial/`, kept there on failure)."""
    from cvs_export.validate import enforce, validate_engine

    if options.precision not in VALIDATION_PRECISION:
        raise TrtBuildError(
            f"{options.precision} engines can be built but not validated yet: the part specs "
            "state no tolerance for it"
        )
    manifest, _ = verified_engine(source, precision=SOURCE_PRECISION[options.precision])
    if manifest.checkpoint_fingerprint != loaded.fingerprint:
        raise TrtBuildError(f"{source}: exported from another checkpoint than the one loaded")
    files = {part: Path(source) / record.file for part, record in manifest.parts.items()}
    for path in files.values():
        enforce_supported(check_graph_file(path))
    profiles = profiles_for(specs, options)
    trt = import_tensorrt()
    gpu = CudaRuntime(options.device).gpu()
    version = str(trt.__version__)
    final = Path(out_root) / manifest.family / f"trt-{options.precision}"
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    seconds = _build_plans(trt, files, profiles, options, staging)
    runner = TrtParts({p: staging / f"{p}.plan" for p in files}, device=options.device)
    try:
        memory = runner.activation_bytes()
        report = validate_engine(loaded, runner, specs, VALIDATION_PRECISION[options.precision])
    finally:
        runner.close()
    (staging / "validation.txt").write_text(report.table() + "\n")
    enforce(report)
    record = TensorRTRecord(
        version=version,
        gpu=gpu,
        precision=options.precision,
        profiles={part: [p.to_json() for p in chosen] for part, chosen in profiles.items()},
        device_memory_bytes=memory,
        builder={
            "workspace_bytes": options.workspace_bytes,
            "optimization_level": options.optimization_level,
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            "flags": [] if options.precision == "fp32" else [options.precision.upper()],
        },
    )
    trt_manifest = record_trt_engine(
        staging,
        source=manifest,
        source_folder=Path(source),
        specs=specs,
        record=record,
        validation=report.to_json(),
        part_seconds=seconds,
    )
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    lines = (
        f"{manifest.family} TensorRT {version} {options.precision} on {gpu.name}: {final}",
        "  build " + ", ".join(f"{p} {s:.1f}s" for p, s in seconds.items()),
        "  activation memory " + ", ".join(f"{p} {m / 2**20:.1f} MiB" for p, m in memory.items()),
        *("  " + line for line in report.table().splitlines()),
    )
    for line in lines:
        echo(line)
    return TrtBuildSummary(folder=final, manifest=trt_manifest, lines=lines)


def record_trt_engine(
    folder: Path,
    *,
    source: EngineManifest,
    source_folder: Path,
    specs: Mapping[str, PartSpec],
    record: TensorRTRecord,
    validation: Mapping[str, Any],
    part_seconds: Mapping[str, float] | None = None,
) -> EngineManifest:
    """Write the manifest of the TensorRT engine in `folder` (`<part>.plan` per part): the
    source engine's family, checkpoint and opset, every file hashed, the validation, and the
    TensorRT record (version, GPU model, profiles) the runtime checks at load."""
    from cvs_export.manifest import build_manifest, write_manifest
    from cvs_export.scoring_files import copy_scoring_files

    missing = [p for p in specs if not (Path(folder) / f"{p}.plan").is_file()]
    if missing:
        raise TrtBuildError(f"{folder}: no serialized engine for parts {missing}")
    copy_scoring_files(source_folder, folder)
    manifest = build_manifest(
        folder,
        family=source.family,
        checkpoint_fingerprint=source.checkpoint_fingerprint,
        precision=record.precision,
        opset=source.opset,
        exporter=f"{source.exporter} → TensorRT {record.version} builder",
        specs=specs,
        part_files={part: f"{part}.plan" for part in specs},
        validation=validation,
        export={
            "source_engine": str(source_folder),
            "part_seconds": dict(part_seconds or {}),
            MANIFEST_KEY: record.to_json(),
        },
    )
    write_manifest(folder, manifest)
    return manifest
