"""What the benchmark machine is and what it can do at best: CPU model, kernel flags, GEMM ceilings.

Why this module exists: a speed figure means little alone. "40 items/s" on a laptop and on a
128-core server say different things; beside the machine's own measured dense GEMM throughput at
the same thread count it says how close the scorer gets to the hardware. The CPU flags say which
kernels that hardware offers (an int8 engine without VNNI or AMX has no fast dot product to
use), so every report names them.

The ceilings are measured, never taken from a datasheet: square products of `n`×`n` matrices
(2·n³ flops each), median of a few timed runs after a warm-up, with exactly the thread count the
benchmark itself uses. fp32 and bf16 run through `torch.matmul` (oneDNN/MKL); int8 through
onnxruntime's `MatMulInteger` (u8 × s8 → s32, B a constant initializer so it is prepacked, as in
the int8 engines). Importing this module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
"""Where Linux describes the CPU: model name and feature flags."""

KERNEL_FLAGS: tuple[str, ...] = (
    "fma",
    "f16c",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
"""The CPU flags that decide which GEMM kernels exist here, in the order reports list them."""

BF16_PROBE_SIZE = 256
"""Side of the small product timed first to find out whether bf16 has a usable kernel."""
BF16_MAX_SLOWDOWN = 10.0
"""bf16 slower than fp32 by more than this on the probe: a fallback path, not a kernel; the
bf16 ceiling is then None (a native kernel runs at 0.5–2× fp32; AVX2's fallback at ~1/48)."""


def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpuinfo_field(cpuinfo: str, names: Iterable[str]) -> str | None:
    """The value of the first line whose key is one of `names` ("key<tabs>: value")."""
    wanted = set(names)
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in wanted:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (or `cpuinfo` text), else platform.processor()."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    name = _cpuinfo_field(text, ("model name",))
    if name:
        return name
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The `KERNEL_FLAGS` this CPU has, in `KERNEL_FLAGS` order (from /proc/cpuinfo or text)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    line = _cpuinfo_field(text, ("flags", "Features")) or ""
    present = set(line.split())
    return [flag for flag in KERNEL_FLAGS if flag in present]


def int8_dot_product(flags: Iterable[str]) -> str:
    """The best int8 dot-product instruction set among `flags`: "amx", "avx512_vnni",
    "avx_vnni" or "none" (AVX2 alone multiplies int8 through 16-bit intermediates)."""
    present = set(flags)
    if {"amx_tile", "amx_int8"} <= present:
        return "amx"
    if "avx512_vnni" in present:
        return "avx512_vnni"
    if "avx_vnni" in present:
        return "avx_vnni"
    return "none"


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` calls of `run`, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gflops(n: int, seconds: float) -> float:
    return 2.0 * n**3 / seconds / 1e9


def _torch_ceilings(
    threads: int, n: int, repeats: int
) -> tuple[dict[str, float | None], dict[str, str]]:
    """fp32 and bf16 `torch.matmul` GFLOP/s with `threads` threads (restored afterwards)."""
    import torch

    ceilings: dict[str, float | None] = {}
    sources: dict[str, str] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator)  # (n, n) float32
        b = torch.randn(n, n, generator=generator)
        fp32_seconds = _median_seconds(lambda: torch.matmul(a, b), repeats)
        ceilings["fp32"] = _gflops(n, fp32_seconds)
        sources["fp32"] = f"torch.matmul float32 n={n}"

        try:
            # A small probe first: without a native bf16 kernel a full-size product takes
            # minutes (measured: 48× slower than float32 on an AVX2-only EPYC).
            probe = min(n, BF16_PROBE_SIZE)
            small_a, small_b = a[:probe, :probe].contiguous(), b[:probe, :probe].contiguous()
            probe_fp32 = _median_seconds(lambda: torch.matmul(small_a, small_b), 3)
            small_a16, small_b16 = small_a.bfloat16(), small_b.bfloat16()
            probe_bf16 = _median_seconds(lambda: torch.matmul(small_a16, small_b16), 3)
            slowdown = probe_bf16 / max(probe_fp32, 1e-9)
            if slowdown > BF16_MAX_SLOWDOWN:
                ceilings["bf16"] = None
                sources["bf16"] = (
                    f"not measured at n={n}: torch.matmul bfloat16 ran at "
                    f"{_gflops(probe, probe_bf16):.3g} GFLOP/s at n={probe}, {slowdown:.0f}× "
                    "slower than float32 (no native bf16 kernel)"
                )
            else:
                a16, b16 = a.bfloat16(), b.bfloat16()
                bf16_seconds = _median_seconds(lambda: torch.matmul(a16, b16), repeats)
                ceilings["bf16"] = _gflops(n, bf16_seconds)
                sources["bf16"] = f"torch.matmul bfloat16 n={n}"
        except RuntimeError as error:  # no bf16 matmul kernel on this build or CPU
            ceilings["bf16"] = None
            sources["bf16"] = f"not measured: torch.matmul bfloat16 failed: {error}"
    finally:
        torch.set_num_threads(previous_threads)
    return ceilings, sources


def _int8_matmul_model(b: Any) -> bytes:
    """A one-node ONNX model: MatMulInteger(A uint8 [n, n], B int8 initializer) → int32."""
    from onnx import TensorProto, helper, numpy_helper

    n = int(b.shape[0])
    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    graph = helper.make_graph(
        [node],
        "int8_gemm_ceiling",
        inputs=[helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
        outputs=[helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
        initializer=[numpy_helper.from_array(b, name="B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # opset 18's IR version; any onnxruntime ≥ 1.15 reads it
    serialized: bytes = model.SerializeToString()
    return serialized


def _int8_ceiling(threads: int, n: int, repeats: int) -> tuple[float, str]:
    """onnxruntime MatMulInteger GFLOP/s (multiply-adds counted as 2 ops, as for floats)."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    b = rng.integers(-128, 128, size=(n, n), dtype=np.int8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        _int8_matmul_model(b), options, providers=["CPUExecutionProvider"]
    )
    seconds = _median_seconds(lambda: session.run(None, {"A": a}), repeats)
    return _gflops(n, seconds), f"onnxruntime MatMulInteger u8×s8→i32 n={n} (prepacked B)"


def gemm_ceilings(
    threads: int, n: int = 2048, repeats: int = 5
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Measured dense GEMM GFLOP/s at `threads` threads: ({"fp32", "bf16", "int8"}, sources).

    Each figure is 2·n³ over the median of `repeats` timed products after one warm-up. A value
    is None where it could not be measured; its source then says why.
    """
    if threads < 1 or n < 1 or repeats < 1:
        raise ValueError(f"threads, n and repeats must be ≥ 1, got {threads}, {n}, {repeats}")
    ceilings, sources = _torch_ceilings(threads, n, repeats)
    # Every onnxruntime CPU build has MatMulInteger: a failure here is a bug, so it propagates.
    ceilings["int8"], sources["int8"] = _int8_ceiling(threads, n, repeats)
    return ceilings, sources
