"""Engines are checked by content before use, and the manifest protects itself.

Every tampering here keeps the file's size and restores its mtime (`os.utime`), so only the
bytes differ: exactly what the old size-and-mtime check let through (issue 15). The `cached`
mode's record is keyed by ctime too, which a restored mtime cannot set back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cvs_runtime import verification
from cvs_runtime.engine_manifest import (
    MANIFEST_FILE,
    EngineMismatch,
    check_file_stat,
    read_manifest,
    verified_engine,
)
from cvs_runtime.engines import open_engine
from cvs_runtime.verification import (
    read_record,
    record_path,
    sha256_files,
    verify_engine_files,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $CVS_CACHE: verification records of this test only."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CVS_CACHE", str(folder))
    return folder


def copy_engine(engine_shelf: Any, root: Path, precision: str = "fp32") -> Path:
    """A copy of tiny-yi's fp32 engine at `root/tiny-yi/<precision>` (copytree keeps mtimes)."""
    folder = root / "tiny-yi" / precision
    shutil.copytree(engine_shelf("tiny-yi").folder, folder)
    return folder


def flip_middle_byte(path: Path) -> None:
    """Invert one byte in the middle of `path`, then put its mtime back: same size, same
    mtime, other content."""
    before = path.stat()
    middle = before.st_size // 2
    with path.open("r+b") as stream:
        stream.seek(middle)
        byte = stream.read(1)[0]
        stream.seek(middle)
        stream.write(bytes([byte ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def total_bytes(folder: Path) -> int:
    return sum((folder / r.name).stat().st_size for r in read_manifest(folder).files)


def eval_args(root: Path, out: Path, precision: str = "fp32") -> list[str]:
    return [
        "--engine", "ort", "--engines", str(root), "--model", "tiny-yi", "--country", "DEU",
        "--question", "Q57", "--compare-to", "none", "--out", str(out), "--no-progress",
        "--precision", precision,
    ]  # fmt: skip


def error_line(output: str) -> str:
    """The one `Error:` line of a refused command (and no traceback)."""
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


# --- tampered files are refused at load ----------------------------------------------------------


@pytest.mark.parametrize("name", ["weights.bin", "decoder.onnx"])
def test_a_flipped_byte_is_refused_by_open_engine(
    engine_shelf: Any, tmp_path: Path, cache: Path, name: str
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    flip_middle_byte(folder / name)
    record = next(r for r in read_manifest(folder).files if r.name == name)
    check_file_stat(folder, record)  # the cheap check alone is blind to it
    with pytest.raises(EngineMismatch) as raised:
        open_engine("ort", folder, family="tiny-yi", precision="fp32")
    message = str(raised.value)
    assert raised.value.field == f"files.{name}.sha256"
    assert "\n" not in message and name in message and str(folder) in message
    assert record.sha256[:12] in message  # the recorded hash, next to the one found
    assert "cvs-export verify" in message
    assert not record_path(folder, cache / "verified").exists()  # a failure is never recorded


def test_an_untouched_copy_opens_after_every_file_is_hashed(
    engine_shelf: Any, tmp_path: Path, cache: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    parts = open_engine("ort", folder, family="tiny-yi", precision="fp32")
    report = parts.verification  # type: ignore[attr-defined]
    files = len(read_manifest(folder).files)
    assert files == 10  # four graphs, weights, validation, four scoring files
    assert (report.mode, report.files_hashed, report.files_from_record) == ("cached", files, 0)
    assert report.bytes_hashed == total_bytes(folder)
    assert report.line().startswith(f"verified {files} files, ")


@pytest.mark.parametrize("name", ["weights.bin", "decoder.onnx"])
def test_cvs_eval_refuses_a_flipped_byte_in_one_line_and_stores_nothing(
    engine_shelf: Any, tmp_path: Path, name: str
) -> None:
    from cvs_evaluator.cli_eval import main

    folder = copy_engine(engine_shelf, tmp_path / "engines")
    flip_middle_byte(folder / name)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, eval_args(tmp_path / "engines", out))
    assert result.exit_code == 1, result.output
    line = error_line(result.output)
    assert name in line and "sha256" in line and "content differs" in line
    assert not (out / "store.jsonl").exists()


# --- the cached, always and off modes ------------------------------------------------------------


def test_cached_mode_hashes_once_then_trusts_the_record_until_a_byte_changes(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    records = tmp_path / "records"
    manifest = read_manifest(folder)
    files, size = len(manifest.files), total_bytes(folder)

    first = verify_engine_files(folder, manifest, "cached", cache_dir=records)
    assert (first.files_hashed, first.files_from_record, first.bytes_hashed) == (files, 0, size)
    assert first.record_written and record_path(folder, records).is_file()

    second = verify_engine_files(folder, manifest, "cached", cache_dir=records)
    assert (second.files_hashed, second.files_from_record, second.bytes_hashed) == (0, files, 0)
    assert "nothing hashed" in second.line()

    flip_middle_byte(folder / "weights.bin")  # mtime restored: only the ctime tells
    check_file_stat(folder, next(r for r in manifest.files if r.name == "weights.bin"))
    with pytest.raises(EngineMismatch) as raised:
        verify_engine_files(folder, manifest, "cached", cache_dir=records)
    assert raised.value.field == "files.weights.bin.sha256"


def test_cached_mode_rehashes_only_the_file_whose_ctime_changed(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    records = tmp_path / "records"
    manifest = read_manifest(folder)
    verify_engine_files(folder, manifest, "cached", cache_dir=records)
    path = folder / "vision.onnx"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same bytes and mtime, new ctime
    assert path.stat().st_ctime_ns != stat.st_ctime_ns
    again = verify_engine_files(folder, manifest, "cached", cache_dir=records)
    assert (again.files_hashed, again.bytes_hashed) == (1, stat.st_size)


def test_a_corrupt_record_is_ignored_and_everything_is_hashed_again(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    records = tmp_path / "records"
    manifest = read_manifest(folder)
    verify_engine_files(folder, manifest, "cached", cache_dir=records)
    path = record_path(folder, records)
    path.write_text('{"version": 1, "folder": "' + str(folder.resolve()) + '", "files": {"x"')
    assert read_record(path, folder) == {}
    again = verify_engine_files(folder, manifest, "cached", cache_dir=records)
    assert again.files_hashed == len(manifest.files)
    assert set(json.loads(path.read_text())["files"]) == {r.name for r in manifest.files}


def test_a_record_entry_of_the_wrong_type_spoils_the_whole_record(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    records = tmp_path / "records"
    manifest = read_manifest(folder)
    verify_engine_files(folder, manifest, "cached", cache_dir=records)
    path = record_path(folder, records)
    raw = json.loads(path.read_text())
    raw["files"]["weights.bin"]["ctime_ns"] = str(raw["files"]["weights.bin"]["ctime_ns"])
    path.write_text(json.dumps(raw))
    again = verify_engine_files(folder, manifest, "cached", cache_dir=records)
    assert again.files_hashed == len(manifest.files)


def test_off_mode_hashes_nothing_and_says_so(engine_shelf: Any, tmp_path: Path) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    flip_middle_byte(folder / "weights.bin")
    records = tmp_path / "records"
    report = verify_engine_files(folder, read_manifest(folder), "off", cache_dir=records)
    assert (report.mode, report.files_hashed, report.bytes_hashed) == ("off", 0, 0)
    assert "not verified" in report.line()
    assert not records.exists()


def test_always_mode_hashes_everything_every_time(engine_shelf: Any, tmp_path: Path) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    records = tmp_path / "records"
    manifest = read_manifest(folder)
    size = total_bytes(folder)
    for _ in range(2):
        report = verify_engine_files(folder, manifest, "always", cache_dir=records)
        assert (report.files_hashed, report.files_from_record) == (len(manifest.files), 0)
        assert report.bytes_hashed == size


def test_an_unknown_mode_is_refused_naming_the_valid_ones(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    with pytest.raises(ValueError, match=r"'sometimes'.*always, cached, off"):
        verified_engine(folder, verify="sometimes")


def test_progress_reaches_the_total_once_every_byte_is_hashed(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    calls: list[tuple[int, int]] = []
    verify_engine_files(
        folder,
        read_manifest(folder),
        "always",
        cache_dir=tmp_path / "records",
        progress=lambda done, total: calls.append((done, total)),
    )
    size = total_bytes(folder)
    assert calls[-1] == (size, size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_threaded_hashing_gives_hashlibs_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verification, "HASH_BLOCK", 1024)  # many blocks, cheap files
    sizes = {"empty": 0, "one": 1, "below": 1023, "block": 1024, "above": 1025, "many": 5000}
    paths: dict[str, Path] = {}
    for name, size in sizes.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(os.urandom(size))
    expected = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in paths.items()}
    assert sha256_files(paths, workers=4) == expected
    assert sha256_files(paths, workers=1) == expected


# --- the manifest's own hash ---------------------------------------------------------------------


def edit_precision(folder: Path, precision: str) -> dict[str, Any]:
    """Change the manifest's precision by hand; returns the edited JSON."""
    path = folder / MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw["precision"] = precision
    path.write_text(json.dumps(raw, indent=2))
    return dict(raw)


def canonical_sha256(raw: dict[str, Any]) -> str:
    """The seal's definition: sha256 of the sorted, compact JSON of every field but the seal."""
    content = {k: v for k, v in raw.items() if k != "self_sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_written_seal_is_the_hash_of_the_canonical_content(engine_shelf: Any) -> None:
    raw = json.loads((engine_shelf("tiny-yi").folder / MANIFEST_FILE).read_text())
    assert raw["schema_version"] == 2
    assert raw["self_sha256"] == canonical_sha256(raw)


def test_a_hand_edited_precision_is_refused_at_load_naming_the_seal(
    engine_shelf: Any, tmp_path: Path, cache: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines", precision="fp16")
    raw = edit_precision(folder, "fp16")
    with pytest.raises(EngineMismatch) as raised:
        open_engine("ort", folder, family="tiny-yi", precision="fp16")
    message = str(raised.value)
    assert raised.value.field == "self_sha256" and "\n" not in message
    assert str(folder / MANIFEST_FILE) in message and "edited" in message
    assert canonical_sha256(raw)[:12] in message and raw["self_sha256"][:12] in message


def test_a_hand_edited_precision_is_refused_by_cvs_eval_and_by_verify(
    engine_shelf: Any, tmp_path: Path
) -> None:
    from cvs_evaluator.cli_eval import main as eval_main
    from cvs_export.cli import main as export_main

    folder = copy_engine(engine_shelf, tmp_path / "engines", precision="fp16")
    edit_precision(folder, "fp16")
    written = (folder / MANIFEST_FILE).read_bytes()
    out = tmp_path / "run"
    result = CliRunner().invoke(eval_main, eval_args(tmp_path / "engines", out, "fp16"))
    assert result.exit_code == 1, result.output
    assert "self_sha256" in error_line(result.output)
    assert not (out / "store.jsonl").exists()

    verified = CliRunner().invoke(export_main, ["verify", str(folder)])
    assert verified.exit_code == 1, verified.output
    line = error_line(verified.output)
    assert "self_sha256" in line and MANIFEST_FILE in line
    assert (folder / MANIFEST_FILE).read_bytes() == written  # never re-sealed


def make_unsealed(folder: Path) -> None:
    """Turn the manifest into one written before the seal existed (schema_version 1)."""
    path = folder / MANIFEST_FILE
    raw = json.loads(path.read_text())
    del raw["self_sha256"]
    raw["schema_version"] = 1
    path.write_text(json.dumps(raw, indent=2))


def test_an_unsealed_manifest_is_refused_with_the_command_that_seals_it(
    engine_shelf: Any, tmp_path: Path, cache: Path
) -> None:
    from cvs_export.cli import main as export_main

    folder = copy_engine(engine_shelf, tmp_path / "engines")
    make_unsealed(folder)
    with pytest.raises(EngineMismatch) as raised:
        verified_engine(folder)
    assert raised.value.field == "schema_version"
    assert f"cvs-export verify {folder}" in str(raised.value)

    result = CliRunner().invoke(export_main, ["verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert "manifest sealed" in result.output and "all 10 file hashes match" in result.output
    assert verified_engine(folder, family="tiny-yi", precision="fp32")[0].schema_version == 2
    again = CliRunner().invoke(export_main, ["verify", str(folder)])
    assert again.exit_code == 0 and "manifest seal ok" in again.output


def test_verify_never_seals_an_unsealed_manifest_whose_files_differ(
    engine_shelf: Any, tmp_path: Path
) -> None:
    from cvs_export.cli import main as export_main

    folder = copy_engine(engine_shelf, tmp_path / "engines")
    make_unsealed(folder)
    flip_middle_byte(folder / "weights.bin")
    flip_middle_byte(folder / "vision.onnx")
    written = (folder / MANIFEST_FILE).read_bytes()
    result = CliRunner().invoke(export_main, ["verify", str(folder)])
    assert result.exit_code == 1
    line = error_line(result.output)
    assert "weights.bin content changed" in line and "vision.onnx content changed" in line
    assert "not sealed" in line
    assert (folder / MANIFEST_FILE).read_bytes() == written


def test_rewriting_through_write_manifest_keeps_the_seal_valid(
    engine_shelf: Any, tmp_path: Path
) -> None:
    from cvs_export.manifest import write_manifest

    folder = copy_engine(engine_shelf, tmp_path / "engines")
    manifest = read_manifest(folder)
    write_manifest(folder, replace(manifest, export={**manifest.export, "note": "rewritten"}))
    reread = read_manifest(folder)
    assert reread.export["note"] == "rewritten"
    assert reread.self_sha256 != manifest.self_sha256
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    assert raw["self_sha256"] == canonical_sha256(raw)


# --- reports -------------------------------------------------------------------------------------


def test_the_engine_scorer_carries_the_verification_report(
    engine_shelf: Any, tmp_path: Path, cache: Path
) -> None:
    from cvs_evaluator.scorers import engine_scorer
    from cvs_families.registry import get_family

    root = tmp_path / "engines"
    folder = copy_engine(engine_shelf, root)
    spec = get_family("tiny-yi")
    always = engine_scorer(spec, None, "ort", root, "fp32", verify="always")
    assert always.verification is not None
    assert always.verification.files_hashed == len(read_manifest(folder).files)
    assert always.verification.bytes_hashed == total_bytes(folder)
    cached = engine_scorer(spec, None, "ort", root, "fp32")  # default: the record just written
    assert cached.verification is not None and cached.verification.bytes_hashed == 0
    off = engine_scorer(spec, None, "ort", root, "fp32", verify="off")
    assert off.verification is not None and off.verification.mode == "off"


def test_the_doctor_reports_what_verifying_the_engine_cost(
    engine_shelf: Any, tmp_path: Path, cache: Path
) -> None:
    import re

    from cvs_export.doctor import DoctorReport, _engine, _Run

    folder = copy_engine(engine_shelf, tmp_path / "engines")
    run = _Run(DoctorReport(engine="ort", model="tiny-yi", precision="fp32"), print, False)
    run.state["onnx"] = folder  # what the doctor's export step leaves for the engine step
    detail = _engine(run, "ort", "fp32", tmp_path)
    mib = total_bytes(folder) / 2**20
    pattern = rf"verified 10 files, {mib:.1f} MiB hashed in \d+\.\d\d s \(\d+ MiB/s\)"
    assert re.search(pattern, detail), detail
