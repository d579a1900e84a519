"""The manifest: every load-time refusal names its field; `verify` catches what mtimes cannot."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from cvs_export.llava_next import part_specs
from cvs_export.manifest import build_manifest, verify_engine, write_manifest
from cvs_families.registry import get_family
from cvs_runtime.engine_manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    EngineManifest,
    EngineMismatch,
    ManifestError,
    read_manifest,
    verified_engine,
)
from tests.export.manifest_tools import reseal

FINGERPRINT = "ab" * 32


def make_engine(folder: Path, *, passed: bool = True) -> EngineManifest:
    """A small engine folder (fake graph bytes) with a real manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = part_specs(get_family("tiny-yi").config)
    for part in specs:
        (folder / f"{part}.onnx").write_bytes(part.encode() * 100)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 64)
    manifest = build_manifest(
        folder,
        family="tiny-yi",
        checkpoint_fingerprint=FINGERPRINT,
        precision="fp32",
        opset=18,
        exporter="test",
        specs=specs,
        part_files={p: f"{p}.onnx" for p in specs},
        validation={"passed": passed},
        export={"seconds": 1.0},
    )
    write_manifest(folder, manifest)
    return manifest


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    make_engine(tmp_path / "engine")
    return tmp_path / "engine"


def refused(folder: Path, **asked: Any) -> EngineMismatch:
    with pytest.raises(EngineMismatch) as raised:
        verified_engine(folder, **asked)
    return raised.value


def test_a_matching_engine_loads(engine: Path) -> None:
    manifest, _ = verified_engine(
        engine, family="tiny-yi", precision="fp32", checkpoint_fingerprint=FINGERPRINT
    )
    assert manifest.parts["decoder"].file == "decoder.onnx"
    assert {f.name for f in manifest.files} == {
        "decoder.onnx",
        "embedding.onnx",
        "suffix.onnx",
        "vision.onnx",
        "weights.bin",
    }
    assert manifest.library_versions["onnxruntime"] != "absent"


def test_the_manifest_round_trips_through_json(engine: Path) -> None:
    manifest = read_manifest(engine)
    assert EngineManifest.from_json(manifest.to_json()) == manifest


def test_another_family_is_refused(engine: Path) -> None:
    error = refused(engine, family="tiny-qwen")
    assert error.field == "family" and "'tiny-yi'" in str(error) and "'tiny-qwen'" in str(error)


def test_another_precision_is_refused(engine: Path) -> None:
    error = refused(engine, precision="fp16")
    assert error.field == "precision" and "'fp16' was asked for" in str(error)


def test_another_checkpoint_is_refused(engine: Path) -> None:
    assert refused(engine, checkpoint_fingerprint="cd" * 32).field == "checkpoint_fingerprint"


def test_a_file_of_another_size_is_refused(engine: Path) -> None:
    with (engine / "weights.bin").open("ab") as stream:
        stream.write(b"\0")
    error = refused(engine)
    assert error.field == "files.weights.bin.size" and "changed since build" in str(error)


def test_a_touched_file_is_refused(engine: Path) -> None:
    stat = (engine / "vision.onnx").stat()
    os.utime(engine / "vision.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    error = refused(engine)
    assert error.field == "files.vision.onnx.mtime_ns" and "cvs-export verify" in str(error)


def test_a_missing_file_is_refused(engine: Path) -> None:
    (engine / "embedding.onnx").unlink()
    assert refused(engine).field == "files.embedding.onnx"


def test_an_engine_whose_validation_failed_is_refused(tmp_path: Path) -> None:
    make_engine(tmp_path / "bad", passed=False)
    assert refused(tmp_path / "bad").field == "validation.passed"


def _rewrite(folder: Path, change: dict[str, object], drop: str | None = None) -> None:
    path = folder / MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw.update(change)
    if drop:
        del raw[drop]
    path.write_text(json.dumps(raw))


def test_another_schema_version_is_refused(engine: Path) -> None:
    _rewrite(engine, {"schema_version": SCHEMA_VERSION + 1})
    assert refused(engine).field == "schema_version"


def test_a_part_whose_file_is_not_recorded_is_refused(engine: Path) -> None:
    raw = json.loads((engine / MANIFEST_FILE).read_text())
    raw["parts"]["vision"]["file"] = "elsewhere.onnx"
    (engine / MANIFEST_FILE).write_text(json.dumps(raw))
    reseal(engine)  # a consistent manifest: only the part's file is wrong
    assert refused(engine).field == "parts.vision.file"


def test_a_manifest_missing_a_field_is_malformed(engine: Path) -> None:
    _rewrite(engine, {}, drop="precision")
    with pytest.raises(ManifestError, match="no 'precision'"):
        verified_engine(engine)


def test_a_manifest_with_a_mistyped_field_is_malformed(engine: Path) -> None:
    _rewrite(engine, {"opset": "18"})
    with pytest.raises(ManifestError, match="'opset' is not a int"):
        verified_engine(engine)


def test_a_manifest_that_is_not_json_is_malformed(engine: Path) -> None:
    (engine / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ManifestError, match="not JSON"):
        verified_engine(engine)


def test_a_folder_without_manifest_is_not_an_engine(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not an engine folder"):
        verified_engine(tmp_path)


def test_verify_catches_same_size_content_changes_the_load_check_cannot(engine: Path) -> None:
    path = engine / "weights.bin"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as recorded
    # With content verification off (`--verify-engine off`), the cheap check is blind to this …
    verified_engine(engine, verify="off")
    with pytest.raises(EngineMismatch) as raised:
        verify_engine(engine)  # … the full hash is not
    assert raised.value.field == "files.weights.bin.sha256"
    with pytest.raises(EngineMismatch) as at_load:
        verified_engine(engine)  # nor is the load check by default (`--verify-engine cached`)
    assert at_load.value.field == "files.weights.bin.sha256"


def test_verify_accepts_a_copied_engine_and_records_its_new_mtimes(tmp_path: Path) -> None:
    make_engine(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copyfile)  # new mtimes
    with pytest.raises(EngineMismatch):
        verified_engine(tmp_path / "b")
    result = verify_engine(tmp_path / "b")
    assert set(result.mtimes_refreshed) == {f.name for f in read_manifest(tmp_path / "a").files}
    verified_engine(tmp_path / "b")  # accepted now
    assert verify_engine(tmp_path / "b").mtimes_refreshed == ()


def test_verify_refuses_a_file_the_manifest_does_not_list(engine: Path) -> None:
    (engine / "extra.onnx").write_bytes(b"x")
    with pytest.raises(EngineMismatch) as raised:
        verify_engine(engine)
    assert raised.value.field == "files" and "extra.onnx" in str(raised.value)


def test_verify_refuses_a_missing_file(engine: Path) -> None:
    (engine / "weights.bin").unlink()
    with pytest.raises(EngineMismatch) as raised:
        verify_engine(engine)
    assert raised.value.field == "files.weights.bin"


def test_records_hash_the_bytes(engine: Path) -> None:
    import hashlib

    manifest = read_manifest(engine)
    record = next(f for f in manifest.files if f.name == "weights.bin")
    data = (engine / "weights.bin").read_bytes()
    assert record.sha256 == hashlib.sha256(data).hexdigest() and record.size == len(data)
    assert dataclasses.asdict(record)["mtime_ns"] == (engine / "weights.bin").stat().st_mtime_ns


def test_allowing_failed_verdicts_never_admits_a_failed_fp32_validation(tmp_path: Path) -> None:
    make_engine(tmp_path / "bad", passed=False)  # no verdict: an fp32 parity failure
    with pytest.raises(EngineMismatch) as raised:
        verified_engine(tmp_path / "bad", allow_failed_verdict=True)
    assert raised.value.field == "validation.passed"


def test_a_failed_verdict_names_its_failures_and_the_way_round(tmp_path: Path) -> None:
    folder = tmp_path / "int8"
    manifest = make_engine(folder, passed=False)
    verdict = {"passed": False, "ran": True, "failures": ["mean JS 0.2 > 0.02"]}
    write_manifest(
        folder,
        dataclasses.replace(
            manifest, precision="int8-dyn", validation={"passed": False, "verdict": verdict}
        ),
    )
    error = refused(folder)
    assert error.field == "validation.verdict"
    assert "int8-dyn accuracy verdict" in str(error) and "mean JS 0.2 > 0.02" in str(error)
    assert "allow_failed_verdict=True" in str(error) and "--allow-failed-engine" in str(error)
    assert verified_engine(folder, allow_failed_verdict=True)[0].precision == "int8-dyn"
