"""Writing and verifying an engine's manifest.json.

The manifest says what an engine is and was checked to be: family, checkpoint fingerprint,
precision, opset, exporter, library versions, every file's size, mtime and sha256, and the
validation results. The runtime reads it with a cheap load-time check (cvs_runtime.
engine_manifest: size and mtime, never a full hash of a 145 GB engine); this module computes the
full hashes at build time and again in `cvs-export verify`, which is also how an engine copied
to a new place (new mtimes, same bytes) is accepted again.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from cvs_export.parts import PartSpec
from cvs_runtime.engine_manifest import (
    MANIFEST_FILE,
    EngineManifest,
    EngineMismatch,
    FileRecord,
    PartRecord,
    TensorRecord,
    read_manifest,
)

LIBRARIES = (
    "torch",
    "transformers",
    "onnx",
    "onnx-ir",
    "onnxruntime",
    "onnxscript",
    "numpy",
    "tokenizers",
    "safetensors",
)
"""Distributions whose versions every manifest records."""
HASH_BLOCK = 1 << 24
"""Bytes read per step while hashing (16 MiB: a flat memory profile on any file size)."""


def library_versions() -> dict[str, str]:
    """Installed versions of `LIBRARIES` (and Python), "absent" for one not installed."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(folder: Path, name: str) -> FileRecord:
    """Size, mtime and full sha256 of `folder/name`."""
    path = Path(folder) / name
    stat = path.stat()
    return FileRecord(
        name=name, size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256_file(path)
    )


def part_record(spec: PartSpec, file: str) -> PartRecord:
    """The manifest entry of one part, from its spec."""

    def tensors(items: tuple[Any, ...]) -> list[TensorRecord]:
        return [TensorRecord(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in items]

    return PartRecord(file=file, inputs=tensors(spec.inputs), outputs=tensors(spec.outputs))


def build_manifest(
    folder: Path,
    *,
    family: str,
    checkpoint_fingerprint: str,
    precision: str,
    opset: int,
    exporter: str,
    specs: Mapping[str, PartSpec],
    part_files: Mapping[str, str],
    validation: Mapping[str, Any],
    export: Mapping[str, Any],
) -> EngineManifest:
    """A manifest for the engine in `folder`, hashing every file in it (but the manifest)."""
    names = sorted(
        p.relative_to(folder).as_posix()
        for p in Path(folder).rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    )
    return EngineManifest(
        family=family,
        checkpoint_fingerprint=checkpoint_fingerprint,
        precision=precision,
        opset=opset,
        exporter=exporter,
        library_versions=library_versions(),
        parts={name: part_record(specs[name], part_files[name]) for name in specs},
        files=[file_record(folder, name) for name in names],
        validation=dict(validation),
        export=dict(export),
    )


def write_manifest(folder: Path, manifest: EngineManifest) -> Path:
    """Write `folder/manifest.json` atomically (temporary file, then rename)."""
    path = Path(folder) / MANIFEST_FILE
    scratch = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}")
    scratch.write_text(manifest.to_json())
    scratch.replace(path)
    return path


@dataclass(frozen=True)
class VerifyResult:
    """What `verify_engine` checked."""

    folder: Path
    """The engine folder."""
    files: int
    """Files hashed."""
    bytes_hashed: int
    """Bytes read."""
    mtimes_refreshed: tuple[str, ...]
    """Files whose content matched but whose mtime had changed (now recorded anew)."""


def verify_engine(folder: Path) -> VerifyResult:
    """Re-hash every file of the engine against its manifest.

    Raises EngineMismatch naming the first file whose presence, size or sha256 differs. Files
    whose bytes match but whose mtime changed (the engine was copied) get their new mtime
    recorded, so that the load-time check accepts them again.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    refreshed: list[str] = []
    records: list[FileRecord] = []
    total = 0
    on_disk = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(f".{MANIFEST_FILE}")
    }
    unrecorded = sorted(on_disk - {r.name for r in manifest.files})
    if unrecorded:
        raise EngineMismatch("files", f"{folder}: files not in the manifest: {unrecorded}")
    for record in manifest.files:
        path = folder / record.name
        if not path.is_file():
            raise EngineMismatch(f"files.{record.name}", f"{folder}: {record.name} is missing")
        stat = path.stat()
        if stat.st_size != record.size:
            raise EngineMismatch(
                f"files.{record.name}.size",
                f"{folder}: {record.name} is {stat.st_size} bytes, {record.size} recorded",
            )
        digest = sha256_file(path)
        total += stat.st_size
        if digest != record.sha256:
            raise EngineMismatch(
                f"files.{record.name}.sha256",
                f"{folder}: {record.name} content changed (sha256 {digest[:12]}…, "
                f"{record.sha256[:12]}… recorded)",
            )
        if stat.st_mtime_ns != record.mtime_ns:
            refreshed.append(record.name)
            record = replace(record, mtime_ns=stat.st_mtime_ns)
        records.append(record)
    if refreshed:
        write_manifest(folder, replace(manifest, files=records))
    return VerifyResult(
        folder=folder,
        files=len(records),
        bytes_hashed=total,
        mtimes_refreshed=tuple(refreshed),
    )


def python_command() -> str:
    """The interpreter and arguments of this process (recorded with each build)."""
    return " ".join([Path(sys.executable).name, *sys.argv[1:]])
