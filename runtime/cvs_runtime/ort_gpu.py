"""onnxruntime sessions on the CUDA and TensorRT execution providers, refusing silent CPU runs.

onnxruntime treats the provider list as a wish: a provider the installed build lacks is dropped
with a warning, and a provider whose libraries fail to load (CUDA, cuDNN, TensorRT) leaves a
session that runs on the CPU while `get_device()` still says GPU (NOTES.md §3). A GPU run that is
really a CPU run would make every timing and every "verified on GPU" claim false, so
`OrtGpuParts` checks, for every session, that each provider asked for is the one the session
has (`session.get_providers()`), and raises `GpuProviderError` naming what is missing:

- the provider is not in `onnxruntime.get_available_providers()`: the installed onnxruntime is
  the CPU build (or a GPU build without TensorRT) → which extra to install;
- it is available but the session did not get it: its CUDA or TensorRT libraries are missing or
  do not match the build.

Run-time fallback (onnxruntime re-creating the session on the CPU after a provider error) is
disabled too. Provider options are typed: device id, CUDA memory limit, TensorRT engine cache
folder and timing cache, fp16, and explicit TensorRT optimization profiles (the same min/opt/max
shapes the TensorRT builder derives from the part specs). Numpy and onnxruntime only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from cvs_runtime.engine_manifest import EngineManifest, checked_part_files
from cvs_runtime.errors import GpuProviderError
from cvs_runtime.ort_backend import OrtSessionConfig, SessionParts, session_options

OrtEngine = Literal["ort", "ort-cuda", "ort-trt"]
"""onnxruntime on the CPU, on the CUDA provider, or on the TensorRT provider (CUDA beside it)."""
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_EXTRA = "pip install 'cvs-eval[gpu]'"
"""What installs onnxruntime-gpu (it provides the same `onnxruntime` module as the CPU wheel:
uninstall `onnxruntime` first)."""
TRT_EXTRA = "pip install 'cvs-eval[gpu,trt]'"
"""What adds the TensorRT libraries the TensorRT provider loads."""

Shape = tuple[int, ...]


@dataclass(frozen=True)
class CudaOptions:
    """CUDAExecutionProvider options."""

    device_id: int = 0
    """CUDA device."""
    gpu_mem_limit: int | None = None
    """Bytes the provider's memory arena may hold (None: no limit)."""
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kSameAsRequested"
    """How the arena grows; `kSameAsRequested` keeps it tight under a memory limit."""

    def provider_options(self) -> dict[str, str]:
        """The options as onnxruntime takes them (strings)."""
        options = {
            "device_id": str(self.device_id),
            "arena_extend_strategy": self.arena_extend_strategy,
        }
        if self.gpu_mem_limit is not None:
            options["gpu_mem_limit"] = str(self.gpu_mem_limit)
        return options


@dataclass(frozen=True)
class TensorrtOptions:
    """TensorrtExecutionProvider options."""

    device_id: int = 0
    """CUDA device."""
    fp16: bool = False
    """Let TensorRT run layers in fp16 (`trt_fp16_enable`)."""
    engine_cache_path: Path | None = None
    """Folder where built TensorRT engines are kept and reused (None: rebuild every session)."""
    timing_cache: bool = True
    """Keep TensorRT's kernel timing cache beside the engine cache."""
    max_workspace_size: int | None = None
    """TensorRT workspace bytes (None: onnxruntime's default)."""
    profiles: Mapping[str, Mapping[str, tuple[Shape, Shape, Shape]]] = field(default_factory=dict)
    """Per part: input → (min, opt, max) shape; without one the provider rebuilds its engine
    whenever a larger shape arrives."""

    def provider_options(self, part: str) -> dict[str, str]:
        """The options for the session of `part`, as onnxruntime takes them."""
        options = {"device_id": str(self.device_id), "trt_fp16_enable": str(int(self.fp16))}
        if self.engine_cache_path is not None:
            options["trt_engine_cache_enable"] = "1"
            options["trt_engine_cache_path"] = str(self.engine_cache_path)
            if self.timing_cache:
                options["trt_timing_cache_enable"] = "1"
                options["trt_timing_cache_path"] = str(self.engine_cache_path)
        if self.max_workspace_size is not None:
            options["trt_max_workspace_size"] = str(self.max_workspace_size)
        profile = self.profiles.get(part)
        if profile:
            for index, key in enumerate(("min", "opt", "max")):
                options[f"trt_profile_{key}_shapes"] = ",".join(
                    f"{name}:{'x'.join(str(d) for d in shapes[index])}"
                    for name, shapes in profile.items()
                )
        return options


def provider_chain(
    engine: OrtEngine,
    part: str,
    cuda: CudaOptions | None = None,
    tensorrt: TensorrtOptions | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """The providers (with options) a session of `part` is created with for `engine`; the CPU
    provider last, for the nodes a GPU provider does not take (shape arithmetic)."""
    cuda = cuda or CudaOptions()
    chain: list[tuple[str, dict[str, str]]] = []
    if engine == "ort-trt":
        chain.append((TENSORRT, (tensorrt or TensorrtOptions()).provider_options(part)))
    if engine in ("ort-trt", "ort-cuda"):
        chain.append((CUDA, cuda.provider_options()))
    return [*chain, (CPU, {})]


def installed_onnxruntime() -> str:
    """`onnxruntime-gpu <version>` or `onnxruntime <version>`: which wheel provides the module."""
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"onnxruntime {ort.__version__}"


def unavailable_reason(
    requested: Sequence[str], available: Sequence[str], installed: str
) -> str | None:
    """Why a requested provider cannot even be asked for (not in this onnxruntime build)."""
    missing = [p for p in requested if p not in available]
    if not missing:
        return None
    if CUDA not in available:
        return (
            f"{', '.join(missing)} not available: {installed} is a CPU build (providers: "
            f"{', '.join(available)}); install onnxruntime-gpu: pip uninstall onnxruntime && "
            f"{GPU_EXTRA}"
        )
    return (
        f"{', '.join(missing)} not available in {installed} (providers: {', '.join(available)}); "
        f"install an onnxruntime-gpu build with TensorRT: {TRT_EXTRA}"
    )


def fallback_reason(requested: Sequence[str], granted: Sequence[str], part: str) -> str | None:
    """Why a session that asked for GPU providers does not have them (silent CPU fallback)."""
    lost = [p for p in requested if p != CPU and p not in granted]
    if not lost:
        return None
    if TENSORRT in lost and CUDA in granted:
        cause = (
            "the TensorRT libraries (libnvinfer 10) are missing or do not match this "
            f"onnxruntime-gpu build: {TRT_EXTRA}, and put them on the library path"
        )
    else:
        cause = (
            "the CUDA libraries are missing or do not match this onnxruntime-gpu build (CUDA 12 "
            "runtime, cuBLAS, cuDNN 9), or no GPU is visible: install them (e.g. pip install "
            "'onnxruntime-gpu[cuda,cudnn]') and check `nvidia-smi`"
        )
    return (
        f"part {part}: asked for {', '.join(lost)} but the session runs on "
        f"{', '.join(granted)}: {cause}"
    )


def gpu_session(
    path: Path,
    engine: OrtEngine,
    part: str,
    *,
    config: OrtSessionConfig | None = None,
    cuda: CudaOptions | None = None,
    tensorrt: TensorrtOptions | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session of `path` on `engine`'s providers, or GpuProviderError."""
    chain = provider_chain(engine, part, cuda, tensorrt)
    names = [name for name, _ in chain]
    reason = unavailable_reason(names, ort.get_available_providers(), installed_onnxruntime())
    if reason is not None:
        raise GpuProviderError(reason)
    try:
        # enable_fallback=0: a provider that fails while the session is created raises here
        # instead of onnxruntime quietly re-creating the session on the CPU.
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(config or OrtSessionConfig(), part),
            providers=chain,
            enable_fallback=0,
        )
    except (RuntimeError, ValueError) as error:
        if engine == "ort":
            raise
        raise GpuProviderError(f"part {part}: {engine} session failed: {error}") from None
    session.disable_fallback()  # and no re-run on the CPU after a provider error at run time
    reason = fallback_reason(names, session.get_providers(), part)
    if reason is not None:
        raise GpuProviderError(reason)
    return session


class OrtGpuParts(SessionParts):
    """The parts of one engine as onnxruntime sessions on CPU, CUDA or TensorRT providers
    (implements `PartRunner`); creation fails unless every session got its providers."""

    def __init__(
        self,
        part_files: Mapping[str, Path],
        engine: OrtEngine,
        *,
        config: OrtSessionConfig | None = None,
        cuda: CudaOptions | None = None,
        tensorrt: TensorrtOptions | None = None,
        manifest: EngineManifest | None = None,
    ) -> None:
        self.engine = engine
        """Which providers the sessions run on."""
        sessions = {
            part: gpu_session(Path(path), engine, part, config=config, cuda=cuda, tensorrt=tensorrt)
            for part, path in part_files.items()
        }
        super().__init__(sessions, manifest)

    @classmethod
    def open(
        cls,
        folder: Path,
        engine: OrtEngine,
        *,
        family: str | None = None,
        precision: str | None = None,
        checkpoint_fingerprint: str | None = None,
        allow_failed_verdict: bool = False,
        config: OrtSessionConfig | None = None,
        cuda: CudaOptions | None = None,
        tensorrt: TensorrtOptions | None = None,
        verify: str = "cached",
    ) -> OrtGpuParts:
        """Sessions for the engine in `folder`, after the load-time manifest check and the
        content check `verify` (`always`, `cached`, `off`; its report in `.verification`)."""
        manifest, files, report = checked_part_files(
            folder,
            family=family,
            precision=precision,
            checkpoint_fingerprint=checkpoint_fingerprint,
            allow_failed_verdict=allow_failed_verdict,
            verify=verify,
        )
        parts = cls(files, engine, config=config, cuda=cuda, tensorrt=tensorrt, manifest=manifest)
        parts.verification = report
        return parts
