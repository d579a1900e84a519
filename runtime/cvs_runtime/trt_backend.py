"""TensorRT engines behind the part interface, and the load-time refusal of a foreign engine.

A serialized TensorRT engine (`<part>.plan`) is tied to the TensorRT version that built it and to
the GPU model it was tuned on; loading it elsewhere fails or silently runs kernels timed for
another chip. The export stage records both in the engine's manifest (`TensorRTRecord`, stored
under `manifest.export["tensorrt"]` until the manifest gains its own field), and `TrtParts.open`
refuses an engine whose TensorRT version or GPU model differs from this machine's, naming the
field, before deserializing anything.

Running a part uses TensorRT 10's name-based API: `set_input_shape` for every input (dynamic
batch, sequence and cache lengths), `get_tensor_shape` for the outputs, `set_tensor_address` for
every tensor (the key/value cache tensors bound by their names), `execute_async_v3` on a stream.
When an engine has several optimization profiles (e.g. prefill and continuation), the first one
whose [min, max] range holds every input shape is selected.

Device memory: cuda-python's runtime bindings (`cudaMalloc`, `cudaMemcpyAsync`, streams), not
torch (the runtime never imports torch) and not pycuda (unmaintained, builds from source).
Buffers are kept per tensor and grown when a larger shape comes; inputs and outputs cross as
numpy arrays, as the part interface demands (the cache therefore round-trips through host memory
between calls: correct, not the fastest; a device-resident cache is a runtime-issue optimization).

`tensorrt` and `cuda-python` are imported only when an engine is opened; a missing one raises
`TensorRTUnavailable` naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cvs_runtime.engine_manifest import EngineManifest, EngineMismatch, verified_engine
from cvs_runtime.errors import TensorRTUnavailable
from cvs_runtime.parts import PartError, check_feeds, check_part, select_outputs
from cvs_runtime.verification import VerificationReport, verify_engine_files

TRT_EXTRA = "pip install 'cvs-eval[trt]'"
"""What installs TensorRT and cuda-python."""
MANIFEST_KEY = "tensorrt"
"""Key of the TensorRT record in `EngineManifest.export`."""
EMPTY_BINDING_BYTES = 256
"""Bytes allocated for a tensor of zero elements (an empty cache): TensorRT wants a non-null
address for every output and accepts one for empty inputs."""

Shape = tuple[int, ...]
ProfileShapes = Mapping[str, tuple[Shape, Shape, Shape]]
"""One optimization profile: input name → (min, opt, max) shape."""


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU an engine was built on, or the one it is about to run on."""

    name: str
    """Device name as CUDA reports it, e.g. `NVIDIA H200`."""
    compute_capability: str
    """`major.minor`, e.g. `9.0`."""


@dataclass(frozen=True)
class TensorRTRecord:
    """What the manifest of a TensorRT engine adds: where it may be loaded, how it was built."""

    version: str
    """`tensorrt.__version__` of the builder; loading needs exactly this version."""
    gpu: GpuIdentity
    """GPU the engine was built and tuned on; loading needs the same model."""
    precision: str
    """Builder precision: fp32, fp16, bf16 or int8 (explicit Q/DQ)."""
    profiles: dict[str, list[dict[str, list[list[int]]]]]
    """Per part, its optimization profiles: input → [min, opt, max] shapes."""
    device_memory_bytes: dict[str, int] = field(default_factory=dict)
    """Per part, the activation memory TensorRT reserves per execution context."""
    builder: dict[str, Any] = field(default_factory=dict)
    """Builder settings: flags, workspace limit, optimisation level, timing cache."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for `manifest.export["tensorrt"]`."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TensorRTRecord:
        """Parse the record; EngineMismatch('tensorrt', …) when a field is missing."""
        try:
            return cls(
                version=str(raw["version"]),
                gpu=GpuIdentity(**raw["gpu"]),
                precision=str(raw["precision"]),
                profiles={k: list(v) for k, v in raw["profiles"].items()},
                device_memory_bytes=dict(raw.get("device_memory_bytes", {})),
                builder=dict(raw.get("builder", {})),
            )
        except (KeyError, TypeError) as error:
            raise EngineMismatch(MANIFEST_KEY, f"TensorRT record is malformed: {error}") from None


def tensorrt_record(manifest: EngineManifest, folder: Path | str = "engine") -> TensorRTRecord:
    """The TensorRT record of a manifest; EngineMismatch when the engine is no TensorRT engine."""
    raw = manifest.export.get(MANIFEST_KEY)
    if not isinstance(raw, Mapping):
        raise EngineMismatch(
            MANIFEST_KEY,
            f"{folder}: not a TensorRT engine (its manifest has no TensorRT record); build one "
            "with cvs_export.trt_build",
        )
    return TensorRTRecord.from_json(raw)


def check_tensorrt_record(
    record: TensorRTRecord, *, tensorrt_version: str, gpu: GpuIdentity, folder: Path | str
) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU model."""
    if record.version != tensorrt_version:
        raise EngineMismatch(
            f"{MANIFEST_KEY}.version",
            f"{folder}: engine refused: built with TensorRT {record.version}, this machine has "
            f"{tensorrt_version}; rebuild the engine here",
        )
    if record.gpu.name != gpu.name:
        raise EngineMismatch(
            f"{MANIFEST_KEY}.gpu.name",
            f"{folder}: engine refused: built for {record.gpu.name}, this GPU is {gpu.name}; "
            "rebuild the engine here",
        )
    if record.gpu.compute_capability != gpu.compute_capability:
        raise EngineMismatch(
            f"{MANIFEST_KEY}.gpu.compute_capability",
            f"{folder}: engine refused: built for compute capability "
            f"{record.gpu.compute_capability}, this GPU has {gpu.compute_capability}",
        )


def check_trt_engine(
    folder: Path,
    *,
    tensorrt_version: str,
    gpu: GpuIdentity,
    family: str | None = None,
    precision: str | None = None,
    checkpoint_fingerprint: str | None = None,
    allow_failed_verdict: bool = False,
    verify: str = "cached",
) -> tuple[EngineManifest, TensorRTRecord]:
    """The load-time check of a TensorRT engine folder (no TensorRT needed): the manifest's
    own check (family, precision, checkpoint, file sizes and mtimes, validation), then the
    TensorRT version and GPU model, then every file's content as `verify` says (all cheap
    checks first). `TrtParts.open` keeps the content check's report."""
    manifest, record, _ = _checked_trt_engine(
        folder,
        tensorrt_version=tensorrt_version,
        gpu=gpu,
        family=family,
        precision=precision,
        checkpoint_fingerprint=checkpoint_fingerprint,
        allow_failed_verdict=allow_failed_verdict,
        verify=verify,
    )
    return manifest, record


def _checked_trt_engine(
    folder: Path,
    *,
    tensorrt_version: str,
    gpu: GpuIdentity,
    verify: str,
    **checks: Any,
) -> tuple[EngineManifest, TensorRTRecord, VerificationReport]:
    manifest, _ = verified_engine(folder, verify="off", **checks)
    record = tensorrt_record(manifest, folder)
    check_tensorrt_record(record, tensorrt_version=tensorrt_version, gpu=gpu, folder=folder)
    return manifest, record, verify_engine_files(Path(folder), manifest, verify)


def choose_profile(
    part: str, shapes: Mapping[str, Shape], profiles: Sequence[ProfileShapes]
) -> int:
    """Index of the first profile whose [min, max] holds every input shape in `shapes`."""
    reasons = []
    for index, profile in enumerate(profiles):
        misfit = []
        for name, shape in shapes.items():
            low, _, high = profile[name]
            if len(shape) != len(low) or any(
                not lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)
            ):
                misfit.append(f"{name} {tuple(shape)} not within {tuple(low)}..{tuple(high)}")
        if not misfit:
            return index
        reasons.append(f"profile {index}: " + "; ".join(misfit[:3]))
    raise PartError(
        f"part {part}: input shapes fit no optimization profile of the engine ("
        + " | ".join(reasons)
        + "); rebuild it with larger limits"
    )


# ----------------------------------------------------------------------------- libraries


def import_tensorrt() -> Any:
    """The `tensorrt` module, or TensorRTUnavailable naming the extra."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({error}): {TRT_EXTRA} on a machine with an NVIDIA GPU "
            "and CUDA 12"
        ) from None
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime bindings (`cuda.bindings.runtime`, or the older `cuda.cudart`)."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError as error:
            raise TensorRTUnavailable(
                f"cuda-python is not installed ({error}): {TRT_EXTRA} (TensorRT engines get "
                "their device memory through cuda-python)"
            ) from None
    return runtime


class CudaRuntime:
    """The few CUDA runtime calls the TensorRT runner needs, each checked."""

    def __init__(self, device: int = 0) -> None:
        self.cudart = import_cudart()
        """cuda-python's runtime module."""
        count = self._call(self.cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device >= count:
            raise TensorRTUnavailable(f"no CUDA device {device}: this machine has {count}")
        self._call(self.cudart.cudaSetDevice(device), "cudaSetDevice")
        self.device = device
        """The device used."""

    def _call(self, result: Any, what: str) -> Any:
        status, *values = result if isinstance(result, tuple) else (result,)
        if status != self.cudart.cudaError_t.cudaSuccess:
            if what in ("cudaGetDeviceCount", "cudaSetDevice"):
                raise TensorRTUnavailable(f"{what} failed ({status}): no usable CUDA device/driver")
            raise RuntimeError(f"CUDA {what} failed: {status}")
        return values[0] if len(values) == 1 else tuple(values)

    def gpu(self) -> GpuIdentity:
        """Name and compute capability of the current device."""
        props = self._call(self.cudart.cudaGetDeviceProperties(self.device), "properties")
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode()
        return GpuIdentity(name=str(name), compute_capability=f"{props.major}.{props.minor}")

    def malloc(self, nbytes: int) -> int:
        """Device allocation of `nbytes` (at least 1) → address."""
        return int(self._call(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, address: int) -> None:
        """Release a device allocation."""
        self._call(self.cudart.cudaFree(address), "cudaFree")

    def stream(self) -> Any:
        """A new CUDA stream."""
        return self._call(self.cudart.cudaStreamCreate(), "cudaStreamCreate")

    def to_device(self, address: int, array: NDArray[Any], stream: Any) -> None:
        """Copy a C-contiguous host array to `address`."""
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(
            self.cudart.cudaMemcpyAsync(address, array.ctypes.data, array.nbytes, kind, stream),
            "cudaMemcpyAsync (to device)",
        )

    def to_host(self, array: NDArray[Any], address: int, stream: Any) -> None:
        """Copy from `address` into a C-contiguous host array."""
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(
            self.cudart.cudaMemcpyAsync(array.ctypes.data, address, array.nbytes, kind, stream),
            "cudaMemcpyAsync (to host)",
        )

    def synchronize(self, stream: Any) -> None:
        """Wait for everything queued on `stream`."""
        self._call(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


@dataclass
class _DeviceBuffer:
    address: int
    capacity: int


@dataclass
class _Plan:
    """One deserialized part engine and its execution context."""

    engine: Any
    context: Any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dtypes: dict[str, np.dtype[Any]]
    profiles: list[dict[str, tuple[Shape, Shape, Shape]]]
    profile: int = 0
    buffers: dict[str, _DeviceBuffer] = field(default_factory=dict)


def _profile_shapes(
    engine: Any, inputs: Sequence[str], index: int
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Input name → (min, opt, max) of profile `index` of a deserialized engine."""
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name in inputs:
        low, opt, high = (
            tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name, index)
        )
        shapes[name] = (low, opt, high)
    return shapes


class TrtParts:
    """The parts of one TensorRT engine (implements `PartRunner`)."""

    def __init__(
        self,
        plan_files: Mapping[str, Path],
        *,
        device: int = 0,
        manifest: EngineManifest | None = None,
    ) -> None:
        self.trt = import_tensorrt()
        self.cuda = CudaRuntime(device)
        self.manifest = manifest
        """The checked manifest, when opened from an engine folder."""
        self.verification: VerificationReport | None = None
        """What the content check did (`open`); None when built from plan files directly."""
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self._stream = self.cuda.stream()
        self._plans = {part: self._load(part, Path(path)) for part, path in plan_files.items()}

    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        family: str | None = None,
        precision: str | None = None,
        checkpoint_fingerprint: str | None = None,
        allow_failed_verdict: bool = False,
        device: int = 0,
        verify: str = "cached",
    ) -> TrtParts:
        """The engine in `folder`, after the manifest check, the TensorRT/GPU refusal and the
        content check `verify` (`always`, `cached`, `off`; its report in `.verification`)."""
        trt = import_tensorrt()
        gpu = CudaRuntime(device).gpu()
        manifest, _, report = _checked_trt_engine(
            folder,
            tensorrt_version=str(trt.__version__),
            gpu=gpu,
            family=family,
            precision=precision,
            checkpoint_fingerprint=checkpoint_fingerprint,
            allow_failed_verdict=allow_failed_verdict,
            verify=verify,
        )
        files = {part: Path(folder) / record.file for part, record in manifest.parts.items()}
        parts = cls(files, device=device, manifest=manifest)
        parts.verification = report
        return parts

    def _load(self, part: str, path: Path) -> _Plan:
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize part {part}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = self.trt.TensorIOMode.INPUT
        inputs = tuple(n for n in names if engine.get_tensor_mode(n) == mode)
        outputs = tuple(n for n in names if engine.get_tensor_mode(n) != mode)
        dtypes = {n: np.dtype(self.trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        profiles = [
            _profile_shapes(engine, inputs, i) for i in range(engine.num_optimization_profiles)
        ]
        context = engine.create_execution_context()
        return _Plan(engine, context, inputs, outputs, dtypes, profiles)

    @property
    def part_names(self) -> tuple[str, ...]:
        """The parts this engine holds."""
        return tuple(self._plans)

    def input_names(self, part: str) -> tuple[str, ...]:
        """Input names of `part` (engine order)."""
        check_part(part, self.part_names)
        return self._plans[part].inputs

    def output_names(self, part: str) -> tuple[str, ...]:
        """Output names of `part` (engine order)."""
        check_part(part, self.part_names)
        return self._plans[part].outputs

    def activation_bytes(self) -> dict[str, int]:
        """Per part, the device memory TensorRT reserves for its execution context."""
        return {
            part: int(
                getattr(plan.engine, "device_memory_size_v2", None)
                or plan.engine.device_memory_size
            )
            for part, plan in self._plans.items()
        }

    def _bind(self, plan: _Plan, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name`, bound to the context."""
        need = max(nbytes, EMPTY_BINDING_BYTES)
        buffer = plan.buffers.get(name)
        if buffer is None or buffer.capacity < need:
            if buffer is not None:
                self.cuda.free(buffer.address)
            buffer = _DeviceBuffer(self.cuda.malloc(need), need)
            plan.buffers[name] = buffer
        if not plan.context.set_tensor_address(name, buffer.address):
            raise RuntimeError(f"TensorRT refused the address of {name}")
        return buffer.address

    def run(
        self,
        part: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Run `part` on exactly its named inputs; return the named outputs (all by default)."""
        check_part(part, self.part_names)
        plan = self._plans[part]
        check_feeds(part, plan.inputs, inputs)
        names = select_outputs(part, plan.outputs, outputs)
        feeds = {n: np.ascontiguousarray(inputs[n], dtype=plan.dtypes[n]) for n in plan.inputs}
        profile = choose_profile(part, {n: a.shape for n, a in feeds.items()}, plan.profiles)
        if profile != plan.profile:
            plan.context.set_optimization_profile_async(profile, int(self._stream))
            self.cuda.synchronize(self._stream)
            plan.profile = profile
        for name, array in feeds.items():  # inputs: shapes first, then the copies
            if not plan.context.set_input_shape(name, array.shape):
                raise PartError(f"part {part}: TensorRT refused shape {array.shape} for {name}")
            address = self._bind(plan, name, array.nbytes)
            if array.nbytes:
                self.cuda.to_device(address, array, self._stream)
        results: dict[str, NDArray[Any]] = {}
        for name in plan.outputs:
            shape = tuple(int(d) for d in plan.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise PartError(f"part {part}: output {name} has an unresolved shape {shape}")
            host = np.empty(shape, dtype=plan.dtypes[name])
            self._bind(plan, name, host.nbytes)
            if name in names:
                results[name] = host
        if not plan.context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT failed to run part {part}")
        for name, host in results.items():
            if host.size:
                self.cuda.to_host(host, plan.buffers[name].address, self._stream)
        self.cuda.synchronize(self._stream)
        return {name: results[name] for name in names}

    def close(self) -> None:
        """Free every device buffer and drop the engines."""
        for plan in self._plans.values():
            for buffer in plan.buffers.values():
                self.cuda.free(buffer.address)
            plan.buffers.clear()
        self._plans.clear()
        self.cuda._call(self.cuda.cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")

    def __enter__(self) -> TrtParts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
