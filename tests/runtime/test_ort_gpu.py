"""onnxruntime provider selection and the detection of a silent fallback to the CPU.

On this machine onnxruntime is the CPU build: asking for the CUDA or TensorRT provider must fail
with the named error (and which extra to install), asking for the CPU must run. The second way a
GPU session goes wrong — onnxruntime-gpu lists the provider but the session ends up on the CPU
because CUDA or TensorRT libraries are missing — is checked on the provider lists onnxruntime-gpu
reports in that situation. Tests that need a GPU are marked `gpu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cvs_runtime.ort_gpu import (
    CPU,
    CUDA,
    TENSORRT,
    CudaOptions,
    GpuProviderError,
    OrtGpuParts,
    TensorrtOptions,
    fallback_reason,
    provider_chain,
    unavailable_reason,
)
from cvs_runtime.parts import PartError

WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
BIAS = np.array([0.5, -1.0, 2.0], dtype=np.float32)
HAS_CUDA_PROVIDER = CUDA in ort.get_available_providers()
GPU_LISTS = [TENSORRT, CUDA, CPU]
"""What onnxruntime-gpu's `get_available_providers()` lists (TensorRT build)."""


@pytest.fixture(scope="module")
def affine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = x @ W + b with a dynamic batch axis."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path_factory.mktemp("ort_gpu") / "affine.onnx"
    onnx.save(model, str(path))
    return path


# This machine: CPU onnxruntime --------------------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="onnxruntime-gpu is installed here")
def test_asking_for_cuda_on_the_cpu_build_names_the_gpu_extra(affine: Path) -> None:
    with pytest.raises(GpuProviderError) as raised:
        OrtGpuParts({"affine": affine}, "ort-cuda")
    message = str(raised.value)
    assert "CUDAExecutionProvider not available" in message
    assert "CPU build" in message
    assert "pip install 'cvs-eval[gpu]'" in message


@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="onnxruntime-gpu is installed here")
def test_asking_for_tensorrt_on_the_cpu_build_names_both_providers(affine: Path) -> None:
    with pytest.raises(GpuProviderError, match="TensorrtExecutionProvider, CUDAExecutionProvider"):
        OrtGpuParts({"affine": affine}, "ort-trt")


def test_asking_for_the_cpu_runs_and_computes_the_graph(affine: Path) -> None:
    parts = OrtGpuParts({"affine": affine}, "ort")
    x = np.array([[1, 2, 3, 4], [0, -1, 0.5, 2]], dtype=np.float32)
    out = parts.run("affine", {"x": x})
    np.testing.assert_allclose(out["y"], x @ WEIGHT + BIAS, rtol=1e-6, atol=1e-6)
    assert parts.providers("affine") == [CPU]
    assert parts.input_names("affine") == ("x",) and parts.output_names("affine") == ("y",)


def test_the_cpu_runner_refuses_unknown_parts_and_inputs(affine: Path) -> None:
    parts = OrtGpuParts({"affine": affine}, "ort")
    with pytest.raises(PartError, match="no part 'decoder'"):
        parts.run("decoder", {})
    with pytest.raises(PartError, match=r"unexpected inputs \['z'\]"):
        parts.run("affine", {"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)})
    with pytest.raises(PartError, match=r"no outputs \['logits'\]"):
        parts.run("affine", {"x": np.zeros((1, 4), np.float32)}, outputs=["logits"])


# Fallback detection on onnxruntime-gpu's provider lists -------------------------------------------


def test_a_provider_missing_from_a_cpu_build_is_named_with_the_extra() -> None:
    reason = unavailable_reason([CUDA, CPU], [CPU], "onnxruntime 1.32.0")
    assert reason is not None
    assert reason.startswith("CUDAExecutionProvider not available: onnxruntime 1.32.0 is a CPU")
    assert "pip uninstall onnxruntime && pip install 'cvs-eval[gpu]'" in reason


def test_tensorrt_missing_from_a_gpu_build_names_the_trt_extra() -> None:
    reason = unavailable_reason([TENSORRT, CUDA, CPU], [CUDA, CPU], "onnxruntime-gpu 1.31.1")
    assert reason is not None and "TensorrtExecutionProvider not available" in reason
    assert "pip install 'cvs-eval[gpu,trt]'" in reason


def test_available_providers_need_no_install() -> None:
    assert unavailable_reason([TENSORRT, CUDA, CPU], GPU_LISTS, "onnxruntime-gpu 1.31.1") is None


def test_a_session_that_fell_back_to_the_cpu_blames_the_cuda_libraries() -> None:
    # onnxruntime-gpu lists CUDA, but without libcudart/cuDNN the session holds only the CPU.
    reason = fallback_reason([CUDA, CPU], [CPU], "decoder")
    assert reason is not None
    assert reason.startswith("part decoder: asked for CUDAExecutionProvider but the session runs")
    assert "CUDA libraries are missing" in reason


def test_a_session_without_tensorrt_but_with_cuda_blames_the_tensorrt_libraries() -> None:
    reason = fallback_reason([TENSORRT, CUDA, CPU], [CUDA, CPU], "vision")
    assert reason is not None and "TensorrtExecutionProvider" in reason
    assert "TensorRT libraries (libnvinfer 10)" in reason


def test_a_session_that_got_every_provider_passes() -> None:
    assert fallback_reason([TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], "decoder") is None
    assert fallback_reason([CPU], [CPU], "decoder") is None


# Provider options ---------------------------------------------------------------------------------


def test_cuda_options_are_rendered_as_onnxruntime_takes_them() -> None:
    options = CudaOptions(device_id=1, gpu_mem_limit=2 * 2**30).provider_options()
    assert options == {
        "device_id": "1",
        "gpu_mem_limit": "2147483648",
        "arena_extend_strategy": "kSameAsRequested",
    }


def test_tensorrt_options_carry_the_cache_folder_and_the_profile(tmp_path: Path) -> None:
    profile = {
        "input_ids": ((1, 1), (2, 64), (8, 512)),
        "past.0.key": ((1, 2, 0, 16), (2, 2, 64, 16), (8, 2, 512, 16)),
    }
    options = TensorrtOptions(
        device_id=0, fp16=True, engine_cache_path=tmp_path, profiles={"decoder": profile}
    )
    rendered = options.provider_options("decoder")
    assert rendered["trt_fp16_enable"] == "1"
    assert rendered["trt_engine_cache_enable"] == "1"
    assert rendered["trt_engine_cache_path"] == str(tmp_path)
    assert rendered["trt_timing_cache_path"] == str(tmp_path)
    assert rendered["trt_profile_min_shapes"] == "input_ids:1x1,past.0.key:1x2x0x16"
    assert rendered["trt_profile_opt_shapes"] == "input_ids:2x64,past.0.key:2x2x64x16"
    assert rendered["trt_profile_max_shapes"] == "input_ids:8x512,past.0.key:8x2x512x16"
    assert "trt_profile_min_shapes" not in options.provider_options("vision")


def test_the_provider_chains_put_the_gpu_first_and_the_cpu_last() -> None:
    assert [p for p, _ in provider_chain("ort", "decoder")] == [CPU]
    assert [p for p, _ in provider_chain("ort-cuda", "decoder")] == [CUDA, CPU]
    assert [p for p, _ in provider_chain("ort-trt", "decoder")] == [TENSORRT, CUDA, CPU]


# A real GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_PROVIDER, reason="needs onnxruntime-gpu (this is the CPU build)")
def test_a_cuda_session_runs_on_the_gpu_and_computes_the_graph(affine: Path) -> None:
    parts = OrtGpuParts({"affine": affine}, "ort-cuda", cuda=CudaOptions(gpu_mem_limit=2**30))
    assert parts.providers("affine")[0] == CUDA
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(parts.run("affine", {"x": x})["y"], x @ WEIGHT + BIAS, atol=1e-5)
