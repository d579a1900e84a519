"""TensorRT engines built from a tiny family's ONNX parts, run and compared with PyTorch.

Needs TensorRT, cuda-python and a CUDA GPU (marked `trt` and `gpu`; skipped with the reason
elsewhere). Not run where this project is developed: TensorRT cannot be installed there (no
GPU); `cvs-doctor --engine trt` runs the same path on a user's machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvs_export.doctor import doctor_maxima
from cvs_export.trt_build import (
    TrtBuildOptions,
    axis_ranges,
    build_trt_engine,
)
from cvs_export.validate import validate_engine
from cvs_runtime.engine_manifest import EngineMismatch
from cvs_runtime.parts import PartError
from cvs_runtime.trt_backend import CudaRuntime, TrtParts, tensorrt_record
from tests.export.manifest_tools import reseal
from tests.export.profile_tools import two_phase_ranges

pytestmark = [pytest.mark.trt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def source(engine_shelf: Any) -> Any:
    return engine_shelf("tiny-yi")


@pytest.fixture(scope="module")
def fp32_engine(source: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    maxima = doctor_maxima(source.loaded, source.specs)
    root = tmp_path_factory.mktemp("trt")
    options = TrtBuildOptions(
        precision="fp32",
        profiles={n: [axis_ranges(s, maxima)] for n, s in source.specs.items()},
        timing_cache=root / "timing.cache",
    )
    summary = build_trt_engine(source.folder, source.specs, root, options, source.loaded)
    assert (root / "timing.cache").stat().st_size > 0
    return summary.folder


def test_the_engine_records_this_tensorrt_and_this_gpu(fp32_engine: Path) -> None:
    import tensorrt

    from cvs_runtime.engine_manifest import read_manifest

    record = tensorrt_record(read_manifest(fp32_engine))
    assert record.version == tensorrt.__version__
    assert record.gpu == CudaRuntime().gpu()
    assert set(record.device_memory_bytes) == {"vision", "embedding", "decoder"}


def test_the_fp32_engine_matches_pytorch(source: Any, fp32_engine: Path) -> None:
    with TrtParts.open(fp32_engine, family="tiny-yi", precision="fp32") as parts:
        report = validate_engine(source.loaded, parts, source.specs, "fp32")
    assert report.passed, report.table()
    assert report.chain is not None and report.chain.top1_agreement == 1.0


def test_shapes_outside_the_profile_are_refused(source: Any, fp32_engine: Path) -> None:
    with TrtParts.open(fp32_engine) as parts:
        too_many = np.zeros((64, 3, 42, 42), np.float32)
        with pytest.raises(PartError, match="fit no optimization profile"):
            parts.run("vision", {"pixel_values": too_many})


def test_an_engine_of_another_tensorrt_version_is_refused(
    fp32_engine: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(fp32_engine, copy)  # copies keep mtimes
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["export"]["tensorrt"]["version"] = "9.0.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    reseal(copy)
    with pytest.raises(EngineMismatch) as raised:
        TrtParts.open(copy)
    assert raised.value.field == "tensorrt.version"


def test_a_decoder_with_prefill_and_continuation_profiles_matches_pytorch(
    source: Any, tmp_path: Path
) -> None:
    maxima = doctor_maxima(source.loaded, source.specs)
    decoder = source.specs["decoder"]
    profiles = {n: [axis_ranges(s, maxima)] for n, s in source.specs.items()}
    profiles["decoder"] = two_phase_ranges(
        decoder,
        max_batch=maxima["batch"],
        max_context=maxima["seq"] + maxima["past"],
        max_suffix=maxima["seq"],
        max_k=maxima["k"],
        prefill_batch=maxima["batch"],
    )
    options = TrtBuildOptions(precision="fp32", profiles=profiles)
    summary = build_trt_engine(source.folder, source.specs, tmp_path, options, source.loaded)
    with TrtParts.open(summary.folder) as parts:
        report = validate_engine(source.loaded, parts, source.specs, "fp32")
    assert report.passed, report.table()
