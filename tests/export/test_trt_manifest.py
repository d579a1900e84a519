"""The TensorRT fields of an engine manifest, and the refusals they drive at load.

A TensorRT engine folder is recorded by the same code the builder uses (`record_trt_engine`), on
plan files written here (TensorRT itself cannot run on this machine); the load-time check then
refuses it for another TensorRT version, another GPU model, a changed file, a failed validation
or a folder that is no TensorRT engine. Profile selection is checked on profiles derived from a
real decoder spec.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cvs_export.trt_build import (
    TrtBuildError,
    axis_ranges,
    profile_for,
    record_trt_engine,
)
from cvs_runtime.engine_manifest import EngineMismatch, read_manifest
from cvs_runtime.parts import PartError
from cvs_runtime.trt_backend import (
    GpuIdentity,
    TensorRTRecord,
    TensorRTUnavailable,
    TrtParts,
    check_trt_engine,
    choose_profile,
    tensorrt_record,
)
from tests.export.manifest_tools import reseal
from tests.export.profile_tools import two_phase_ranges

H200 = GpuIdentity(name="NVIDIA H200", compute_capability="9.0")
VERSION = "10.15.1.29"
PASSED = {"precision": "fp16", "passed": True, "parts": [], "chain": None}


@pytest.fixture(scope="module")
def source(engine_shelf: Any) -> Any:
    return engine_shelf("tiny-yi")


def make_record(source: Any, **changes: Any) -> TensorRTRecord:
    specs = source.specs
    profiles = {
        name: [
            profile_for(
                spec,
                axis_ranges(
                    spec, {"batch": 2, "tiles": 2, "seq": 8, "past": 8, "prefix": 8, "k": 1}
                ),
            ).to_json()
        ]
        for name, spec in specs.items()
    }
    record = TensorRTRecord(
        version=VERSION,
        gpu=H200,
        precision="fp16",
        profiles=profiles,
        device_memory_bytes={name: 1 << 20 for name in specs},
        builder={"flags": ["FP16"], "workspace_bytes": None},
    )
    return dataclasses.replace(record, **changes)


def write_engine(folder: Path, source: Any, validation: dict[str, Any] = PASSED) -> TensorRTRecord:
    folder.mkdir(parents=True, exist_ok=True)
    for part in source.specs:
        (folder / f"{part}.plan").write_bytes(os.urandom(64) + part.encode())
    record = make_record(source)
    record_trt_engine(
        folder,
        source=source.manifest,
        source_folder=source.folder,
        specs=source.specs,
        record=record,
        validation=validation,
        part_seconds={p: 1.0 for p in source.specs},
    )
    return record


def test_the_record_round_trips_through_the_manifest(tmp_path: Path, source: Any) -> None:
    record = write_engine(tmp_path / "trt-fp16", source)
    manifest = read_manifest(tmp_path / "trt-fp16")
    assert tensorrt_record(manifest) == record
    assert manifest.precision == "fp16"
    assert manifest.family == "tiny-yi"
    assert manifest.checkpoint_fingerprint == source.manifest.checkpoint_fingerprint
    assert {p: r.file for p, r in manifest.parts.items()} == {
        "vision": "vision.plan",
        "embedding": "embedding.plan",
        "decoder": "decoder.plan",
        "suffix": "suffix.plan",
    }
    raw = json.loads((tmp_path / "trt-fp16" / "manifest.json").read_text())
    assert raw["export"]["tensorrt"]["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert raw["export"]["tensorrt"]["profiles"]["decoder"][0]["past.0.key"][0] == [1, 1, 0, 16]


def test_the_same_version_and_gpu_load(tmp_path: Path, source: Any) -> None:
    record = write_engine(tmp_path / "e", source)
    manifest, found = check_trt_engine(
        tmp_path / "e", tensorrt_version=VERSION, gpu=H200, family="tiny-yi", precision="fp16"
    )
    assert found == record and manifest.family == "tiny-yi"


def test_another_tensorrt_version_is_refused(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source)
    with pytest.raises(
        EngineMismatch, match=r"TensorRT 10\.15\.1\.29, this machine has 10\.16"
    ) as e:
        check_trt_engine(tmp_path / "e", tensorrt_version="10.16.0.1", gpu=H200)
    assert e.value.field == "tensorrt.version"


def test_another_gpu_model_is_refused(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source)
    a100 = GpuIdentity(name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    with pytest.raises(EngineMismatch, match="built for NVIDIA H200, this GPU is NVIDIA A100") as e:
        check_trt_engine(tmp_path / "e", tensorrt_version=VERSION, gpu=a100)
    assert e.value.field == "tensorrt.gpu.name"


def test_another_compute_capability_is_refused(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source)
    other = GpuIdentity(name="NVIDIA H200", compute_capability="9.1")
    with pytest.raises(EngineMismatch) as e:
        check_trt_engine(tmp_path / "e", tensorrt_version=VERSION, gpu=other)
    assert e.value.field == "tensorrt.gpu.compute_capability"


def test_an_onnx_engine_is_no_tensorrt_engine(source: Any) -> None:
    with pytest.raises(EngineMismatch, match="not a TensorRT engine") as e:
        check_trt_engine(source.folder, tensorrt_version=VERSION, gpu=H200)
    assert e.value.field == "tensorrt"


def test_a_plan_changed_after_the_build_is_refused(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source)
    with (tmp_path / "e" / "decoder.plan").open("ab") as plan:
        plan.write(b"tampered")
    with pytest.raises(EngineMismatch) as e:
        check_trt_engine(tmp_path / "e", tensorrt_version=VERSION, gpu=H200)
    assert e.value.field == "files.decoder.plan.size"


def test_an_engine_that_failed_validation_is_refused(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source, validation={**PASSED, "passed": False})
    with pytest.raises(EngineMismatch) as e:
        check_trt_engine(tmp_path / "e", tensorrt_version=VERSION, gpu=H200)
    assert e.value.field == "validation.passed"


def test_the_wrong_precision_is_refused(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source)
    with pytest.raises(EngineMismatch) as e:
        check_trt_engine(tmp_path / "e", tensorrt_version=VERSION, gpu=H200, precision="fp32")
    assert e.value.field == "precision"


def test_a_malformed_record_is_refused(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source)
    path = tmp_path / "e" / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["export"]["tensorrt"]["gpu"]
    path.write_text(json.dumps(raw))
    reseal(tmp_path / "e")
    with pytest.raises(EngineMismatch, match="malformed"):
        tensorrt_record(read_manifest(tmp_path / "e"))


def test_recording_without_every_plan_is_refused(tmp_path: Path, source: Any) -> None:
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "vision.plan").write_bytes(b"x")
    with pytest.raises(
        TrtBuildError, match=r"no serialized engine for parts \['embedding', 'decoder', 'suffix'\]"
    ):
        record_trt_engine(
            tmp_path / "e",
            source=source.manifest,
            source_folder=source.folder,
            specs=source.specs,
            record=make_record(source),
            validation=PASSED,
        )


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_opening_without_tensorrt_names_the_extra(tmp_path: Path, source: Any) -> None:
    write_engine(tmp_path / "e", source)
    with pytest.raises(TensorRTUnavailable, match=r"pip install 'cvs-eval\[trt\]'"):
        TrtParts.open(tmp_path / "e")


# Profile selection --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phase_profiles(source: Any) -> list[Any]:
    spec = source.specs["decoder"]
    ranges = two_phase_ranges(spec, max_batch=4, max_context=64, max_suffix=8)
    return [profile_for(spec, r).shapes for r in ranges]


def decoder_shapes(source: Any, batch: int, seq: int, past: int) -> dict[str, tuple[int, ...]]:
    sizes = {"batch": batch, "seq": seq, "past": past, "total": past + seq, "k": 1}
    return {t.name: t.concrete_shape(sizes) for t in source.specs["decoder"].inputs}


def test_a_prefill_selects_the_first_profile(source: Any, phase_profiles: list[Any]) -> None:
    assert choose_profile("decoder", decoder_shapes(source, 1, 40, 0), phase_profiles) == 0


def test_a_continuation_selects_the_second_profile(source: Any, phase_profiles: list[Any]) -> None:
    assert choose_profile("decoder", decoder_shapes(source, 3, 5, 40), phase_profiles) == 1


def test_shapes_beyond_every_profile_are_refused_naming_the_input(
    source: Any, phase_profiles: list[Any]
) -> None:
    with pytest.raises(PartError, match=r"past\.0\.key \(3, 1, 70, 16\) not within"):
        choose_profile("decoder", decoder_shapes(source, 3, 5, 70), phase_profiles)
