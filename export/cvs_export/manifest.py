"""Writing and verifying an engine's manifest.json.

The manifest says what an engine is and was checked to be: family, checkpoint fingerprint,
precision, opset, exporter, library versions, every file's size, mtime and sha256, and the
validation results, sealed by `self_sha256` (the hash of its own canonical content, computed by
`EngineManifest.to_json` whenever `write_manifest` writes it: every writer seals). The runtime
checks it at load (cvs_runtime.engine_manifest: the seal, sizes and mtimes, then every file's
content, remembered per file in a verification record so a 145 GB engine is not re-hashed on
every load); this module computes the full hashes at build time and again in `cvs-export
verify`, which is also how an engine copied to a new place (new mtimes, same bytes) is accepted
again, and how a manifest written before the seal existed is sealed: only when every file's hash
matches. A sealed manifest whose seal does not match (edited by hand) is refused, never
re-sealed.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
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
    UnsealedManifest,
    read_manifest,
)
from cvs_runtime.verification import sha256_files

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


def library_versions() -> dict[str, str]:
    """Installed versions of `LIBRARIES` (and Python), "absent" for one not installed."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def file_record(folder: Path, name: str) -> FileRecord:
    """Size, mtime and full sha256 of `folder/name`."""
    return file_records(folder, [name])[0]


def file_records(folder: Path, names: list[str]) -> list[FileRecord]:
    """Size, mtime and full sha256 of each of `folder/names`, the files hashed in parallel."""
    folder = Path(folder)
    stats = {name: (folder / name).stat() for name in names}
    digests = sha256_files({name: folder / name for name in names})
    return [
        FileRecord(
            name=name,
            size=stats[name].st_size,
            mtime_ns=stats[name].st_mtime_ns,
            sha256=digests[name],
        )
        for name in names
    ]


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
        files=file_records(folder, names),
        validation=dict(validation),
        export=dict(export),
    )


def write_manifest(folder: Path, manifest: EngineManifest) -> Path:
    """Write `folder/manifest.json` atomically (temporary file, then rename), sealed: its
    `self_sha256` is computed from the content written (`EngineManifest.to_json`)."""
    path = Path(folder) / MANIFEST_FILE
    scratch = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}")
    scratch.write_text(manifest.to_json())
    scratch.replace(path)
    return path


def publish_engine(staging: Path, final: Path, manifest: EngineManifest) -> Path:
    """Record `manifest` in the finished `staging` folder, then put it in place of `final` (an
    older engine there is removed first); returns `final`."""
    write_manifest(staging, manifest)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


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
    seconds: float = 0.0
    """Wall time of the check, hashing included."""
    sealed: bool = False
    """The manifest was written before manifests carried their own hash and has been sealed
    now, every file's hash having matched."""

    @property
    def bytes_per_second(self) -> float:
        """Hashing throughput; 0 when nothing was hashed."""
        return self.bytes_hashed / self.seconds if self.bytes_hashed and self.seconds > 0 else 0.0

    def line(self) -> str:
        """`ok, N files, X MiB hashed in Y s (Z MiB/s); …`: what `cvs-export verify` prints."""
        sealed = (
            "; manifest sealed (it was written before manifests carried their own hash; "
            f"all {self.files} file hashes match)"
            if self.sealed
            else "; manifest seal ok"
        )
        refreshed = (
            f"; new mtimes recorded for {', '.join(self.mtimes_refreshed)}"
            if self.mtimes_refreshed
            else ""
        )
        return (
            f"ok, {self.files} files, {self.bytes_hashed / 2**20:.1f} MiB hashed in "
            f"{self.seconds:.2f} s ({self.bytes_per_second / 2**20:.0f} MiB/s){sealed}{refreshed}"
        )


def verify_engine(folder: Path) -> VerifyResult:
    """Re-hash every file of the engine against its manifest, and check the manifest's seal.

    Raises EngineMismatch for an edited manifest (`self_sha256`), a file not listed, a missing
    file or one of another size (the first one), and for content that differs, naming every
    such file in one line. Files whose bytes match but whose mtime changed (the engine was
    copied) get their new mtime recorded, so that the load-time check accepts them again. A
    manifest written before manifests carried their own hash is sealed, only when every file
    matched; an edited sealed manifest is refused, never re-sealed.
    """
    began = time.perf_counter()
    folder = Path(folder)
    try:
        manifest, unsealed = read_manifest(folder), False
    except UnsealedManifest:
        manifest, unsealed = read_manifest(folder, require_seal=False), True
    on_disk = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(f".{MANIFEST_FILE}")
    }
    not_sealed = " (manifest not sealed)" if unsealed else ""
    unrecorded = sorted(on_disk - {r.name for r in manifest.files})
    if unrecorded:
        raise EngineMismatch(
            "files", f"{folder}: files not in the manifest: {unrecorded}{not_sealed}"
        )
    stats: dict[str, os.stat_result] = {}
    for record in manifest.files:
        path = folder / record.name
        if not path.is_file():
            raise EngineMismatch(
                f"files.{record.name}", f"{folder}: {record.name} is missing{not_sealed}"
            )
        stats[record.name] = path.stat()
        if stats[record.name].st_size != record.size:
            raise EngineMismatch(
                f"files.{record.name}.size",
                f"{folder}: {record.name} is {stats[record.name].st_size} bytes, {record.size} "
                f"recorded{not_sealed}",
            )
    digests = sha256_files({record.name: folder / record.name for record in manifest.files})
    differing = [r for r in manifest.files if digests[r.name] != r.sha256]
    if differing:
        raise EngineMismatch(
            f"files.{differing[0].name}.sha256",
            f"{folder}: "
            + "; ".join(
                f"{r.name} content changed (sha256 {digests[r.name][:12]}…, {r.sha256[:12]}… "
                "recorded)"
                for r in differing
            )
            + not_sealed,
        )
    refreshed: list[str] = []
    records: list[FileRecord] = []
    for record in manifest.files:
        mtime = stats[record.name].st_mtime_ns
        if mtime != record.mtime_ns:
            refreshed.append(record.name)
            record = replace(record, mtime_ns=mtime)
        records.append(record)
    if refreshed or unsealed:
        write_manifest(folder, replace(manifest, files=records))
    return VerifyResult(
        folder=folder,
        files=len(records),
        bytes_hashed=sum(stats[r.name].st_size for r in records),
        mtimes_refreshed=tuple(refreshed),
        seconds=time.perf_counter() - began,
        sealed=unsealed,
    )


def seal_if_unsealed(folder: Path) -> bool:
    """Seal the manifest of an engine built before manifests carried their own hash, after
    `verify_engine` found every file's content equal to its record (it refuses otherwise).
    Returns whether it sealed; a sealed manifest is left as it is."""
    try:
        read_manifest(folder)
    except UnsealedManifest:
        return verify_engine(folder).sealed
    return False
