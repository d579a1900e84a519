"""`cvs-doctor`: every step it can run runs; a missing library is a named, one-line reason.

On this machine the onnxruntime CPU path runs end to end (family, export, engine, parity against
the PyTorch reference, timing) and must pass; the TensorRT and onnxruntime-CUDA paths must run
what they can, report the engine step unavailable with what to install, skip what needs it and
exit non-zero. The full TensorRT and CUDA runs are marked `trt` / `gpu`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from cvs_export.doctor import EXIT_FAILED, EXIT_UNAVAILABLE, DoctorReport, main, run_doctor

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def statuses(report: DoctorReport) -> dict[str, str]:
    return {step.name: step.status for step in report.steps}


def doctor(engine: str, out: Path, **options: object) -> tuple[DoctorReport, list[str]]:
    lines: list[str] = []
    report = run_doctor(engine, out=out, repeats=1, echo=lines.append, **options)  # type: ignore[arg-type]
    return report, lines


def test_the_cpu_path_runs_every_step_and_passes(tmp_path: Path) -> None:
    report, lines = doctor("ort", tmp_path)
    assert statuses(report) == {
        "libraries": "ok",
        "family": "ok",
        "export": "ok",
        "engine": "ok",
        "parity": "ok",
        "timing": "ok",
    }
    assert report.exit_code == 0
    assert "CPUExecutionProvider" in report.step("engine").detail
    parity = report.step("parity").detail
    worst = float(re.search(r"max\|Δ\| ([0-9.e+-]+)", parity).group(1))  # type: ignore[union-attr]
    assert 0 < worst <= 1e-4  # a real comparison, within the fp32 tolerance
    assert "chain: 7 requests" in parity and "top-1 agreement 100%" in parity
    timing = report.step("timing").detail
    assert re.search(r"engine \d+\.\d+ ms/request", timing)
    assert re.search(r"PyTorch reference \d+\.\d+ ms/request", timing)
    assert lines[-1] == "cvs-doctor: the ort path is verified on this machine"
    assert (tmp_path / "tiny-yi" / "fp32" / "manifest.json").is_file()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: the full run is test_trt_path")
def test_the_trt_path_without_tensorrt_runs_what_it_can(tmp_path: Path) -> None:
    report, lines = doctor("trt", tmp_path)
    assert statuses(report) == {
        "libraries": "ok",
        "family": "ok",
        "export": "ok",
        "op-check": "ok",
        "engine": "unavailable",
        "parity": "skipped",
        "timing": "skipped",
    }
    assert "pip install 'cvs-eval[trt]'" in report.step("engine").detail
    assert "TensorRT 10.15's operator list" in report.step("op-check").detail
    assert report.step("parity").detail == "needs the engine step"
    assert report.exit_code == EXIT_UNAVAILABLE
    assert lines[-1] == "cvs-doctor: 1 unavailable: the trt path is NOT verified on this machine"


@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="onnxruntime-gpu is installed here")
def test_the_cuda_path_on_the_cpu_build_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--engine", "ort-cuda", "--out", str(tmp_path)])
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "Traceback" not in result.output
    engine_line = next(line for line in result.output.splitlines() if "] engine" in line)
    assert engine_line.startswith("[unavailable]")
    assert "CUDAExecutionProvider not available" in engine_line
    assert "pip install 'cvs-eval[gpu]'" in engine_line
    assert re.search(r"^\[ok\]\s+export", result.output, re.MULTILINE)
    assert re.search(r"^\[skipped\]\s+parity\s+needs the engine step", result.output, re.MULTILINE)
    assert "op-check" not in result.output  # the CUDA provider takes any ONNX operator


def test_missing_survey_data_fails_the_family_step_and_skips_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVS_DATA", str(tmp_path / "nowhere"))
    report, _ = doctor("ort", tmp_path)
    assert statuses(report) == {
        "libraries": "ok",
        "family": "FAIL",
        "export": "skipped",
        "engine": "skipped",
        "parity": "skipped",
        "timing": "skipped",
    }
    assert "has no wvs7/ folder" in report.step("family").detail
    assert report.exit_code == EXIT_FAILED


def test_missing_torch_is_named_with_its_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    report, _ = doctor("ort", tmp_path)
    libraries = report.step("libraries")
    assert libraries.status == "unavailable"
    assert "pip install 'cvs-eval[export]'" in libraries.detail
    assert {s.status for s in report.steps[1:]} == {"skipped"}
    assert report.exit_code == EXIT_UNAVAILABLE


def test_fp16_needs_a_tensorrt_path() -> None:
    result = CliRunner().invoke(main, ["--engine", "ort", "--precision", "fp16"])
    assert result.exit_code == 2
    line = next(x for x in result.output.splitlines() if "--precision fp16" in x)
    assert "--engine" in line and "trt" in line and "ort-trt" in line


def test_an_unknown_engine_is_refused() -> None:
    result = CliRunner().invoke(main, ["--engine", "tensorrt"])
    assert result.exit_code == 2 and "'tensorrt' is not one of" in result.output


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_path(tmp_path: Path, precision: str) -> None:
    report, lines = doctor("trt", tmp_path, precision=precision)
    assert report.exit_code == 0, "\n".join(lines)
    assert (tmp_path / "tiny-yi" / f"trt-{precision}" / "manifest.json").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_PROVIDER, reason="needs onnxruntime-gpu (this is the CPU build)")
def test_ort_cuda_path(tmp_path: Path) -> None:
    report, lines = doctor("ort-cuda", tmp_path)
    assert report.exit_code == 0, "\n".join(lines)
    assert "CUDAExecutionProvider" in report.step("engine").detail


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_PROVIDER, reason="needs onnxruntime-gpu (this is the CPU build)")
def test_ort_trt_path(tmp_path: Path) -> None:
    report, lines = doctor("ort-trt", tmp_path)
    assert report.exit_code == 0, "\n".join(lines)
    assert "TensorrtExecutionProvider" in report.step("engine").detail
