"""An engine's manifest, and the check that refuses an engine at load time.

`engines/<model>/<precision>/manifest.json` says what an engine is: model family, checkpoint
fingerprint, precision, opset, exporter, library versions, each file's size, modification time
and sha256, and the validation results. The export stage writes it (cvs_export.manifest); the
runtime reads and checks it here, because the runtime may not import the export package.

At load the runtime refuses an engine whose manifest does not match what was asked (family,
precision, checkpoint) or whose files changed, naming the field that differs, and a
lower-precision engine whose accuracy verdict failed unless the caller allows it. Hashing a 145 GB
engine on every load is not acceptable, so the load-time check compares size and modification
time; full sha256 hashes are computed at build time and by `cvs-export verify`. Stdlib only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
"""The manifest's file name inside an engine folder."""
SCHEMA_VERSION = 1
"""Version of the manifest layout; a reader refuses any other."""


class ManifestError(ValueError):
    """An engine folder has no readable manifest, or the manifest is malformed."""


class EngineMismatch(ManifestError):
    """The engine is not the one asked for, or its files changed; `field` names what differs."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        """The manifest field (or `files.<name>.<attribute>`) that differs."""


@dataclass(frozen=True)
class FileRecord:
    """One file of the engine as built."""

    name: str
    """Path relative to the engine folder."""
    size: int
    """Bytes."""
    mtime_ns: int
    """Modification time (ns) when recorded: the cheap load-time check."""
    sha256: str
    """Full content hash, checked at build and by `cvs-export verify`."""


@dataclass(frozen=True)
class TensorRecord:
    """One input or output of a part."""

    name: str
    """Tensor name."""
    dtype: str
    """`float` (the precision's activation type) or `int64`."""
    shape: list[int | str]
    """Static sizes as ints, dynamic ones as axis names."""


@dataclass(frozen=True)
class PartRecord:
    """One graph of the engine."""

    file: str
    """Graph file, relative to the engine folder."""
    inputs: list[TensorRecord]
    """Inputs in graph order."""
    outputs: list[TensorRecord]
    """Outputs in graph order."""


@dataclass(frozen=True)
class EngineManifest:
    """What an engine folder holds and how it was made."""

    family: str
    """Model family name (registry name)."""
    checkpoint_fingerprint: str
    """sha256 over the checkpoint's config, weights and tokenizer it was exported from."""
    precision: str
    """fp32, fp16, bf16 or an int8 recipe (`int8-wo`, `int8-qdq`, …: cvs_export.precision)."""
    opset: int
    """ONNX opset of every graph."""
    exporter: str
    """What wrote the graphs."""
    library_versions: dict[str, str]
    """torch, transformers, onnx, onnxruntime, onnxscript, numpy … at build time."""
    parts: dict[str, PartRecord]
    """Part name → its graph."""
    files: list[FileRecord]
    """Every file of the engine except the manifest itself."""
    validation: dict[str, Any]
    """Parity results at build time (tables, chain check). `passed` must be true; below fp32,
    `verdict` holds the accuracy figures against fp32 and their targets, and `passed` is the
    verdict (a failing one is loaded only when explicitly allowed)."""
    export: dict[str, Any] = field(default_factory=dict)
    """Export time, memory peaks and sizes, for the record."""
    schema_version: int = SCHEMA_VERSION
    """Layout version of this manifest."""

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineManifest:
        """Parse a manifest; raise ManifestError on any missing, unknown or mistyped field."""
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise ManifestError(f"manifest is not JSON: {error}") from error
        if not isinstance(raw, dict):
            raise ManifestError("manifest is not a JSON object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise EngineMismatch(
                "schema_version",
                f"manifest schema_version is {version!r}, this runtime reads {SCHEMA_VERSION}",
            )
        try:
            return cls(
                family=_typed(raw, "family", str),
                checkpoint_fingerprint=_typed(raw, "checkpoint_fingerprint", str),
                precision=_typed(raw, "precision", str),
                opset=_typed(raw, "opset", int),
                exporter=_typed(raw, "exporter", str),
                library_versions=dict(_typed(raw, "library_versions", dict)),
                parts={
                    name: PartRecord(
                        file=_typed(part, "file", str),
                        inputs=[TensorRecord(**t) for t in _typed(part, "inputs", list)],
                        outputs=[TensorRecord(**t) for t in _typed(part, "outputs", list)],
                    )
                    for name, part in _typed(raw, "parts", dict).items()
                },
                files=[FileRecord(**f) for f in _typed(raw, "files", list)],
                validation=dict(_typed(raw, "validation", dict)),
                export=dict(_typed(raw, "export", dict)),
                schema_version=version,
            )
        except TypeError as error:  # a record with missing or unknown keys
            raise ManifestError(f"manifest is malformed: {error}") from error


def _typed(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in raw:
        raise ManifestError(f"manifest has no {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"manifest field {key!r} is not a {kind.__name__}")
    return value


def read_manifest(folder: Path) -> EngineManifest:
    """The manifest of the engine in `folder` (not yet checked against anything)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{folder}: no {MANIFEST_FILE}: not an engine folder (build it first)")
    return EngineManifest.from_json(path.read_text())


def check_engine(
    folder: Path,
    *,
    family: str | None = None,
    precision: str | None = None,
    checkpoint_fingerprint: str | None = None,
    allow_failed_verdict: bool = False,
) -> EngineManifest:
    """Load-time check: the manifest matches what is asked and no file changed (size, mtime).

    Raises EngineMismatch naming the first field that differs. A lower-precision engine whose
    accuracy verdict failed (or that could not be run where it was built) is refused unless
    `allow_failed_verdict`; an engine whose validation failed without a verdict (fp32) always is.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, wanted, found in (
        ("family", family, manifest.family),
        ("precision", precision, manifest.precision),
        ("checkpoint_fingerprint", checkpoint_fingerprint, manifest.checkpoint_fingerprint),
    ):
        if wanted is not None and wanted != found:
            raise EngineMismatch(
                name, f"{folder}: engine refused: {name} is {found!r}, {wanted!r} was asked for"
            )
    if manifest.validation.get("passed") is not True:
        verdict = manifest.validation.get("verdict")
        if not isinstance(verdict, dict):
            raise EngineMismatch(
                "validation.passed", f"{folder}: engine refused: its build validation did not pass"
            )
        if not allow_failed_verdict:
            failures = "; ".join(str(f) for f in verdict.get("failures", [])) or "failed"
            raise EngineMismatch(
                "validation.verdict",
                f"{folder}: engine refused: its {manifest.precision} accuracy verdict against "
                f"fp32 failed ({failures}); to use it anyway pass allow_failed_verdict=True "
                "(cvs-eval --allow-failed-engine)",
            )
    recorded = {f.name for f in manifest.files}
    for part, part_record in manifest.parts.items():
        if part_record.file not in recorded:
            raise EngineMismatch(
                f"parts.{part}.file",
                f"{folder}: part {part}'s file {part_record.file} is not recorded",
            )
    for record in manifest.files:
        check_file_stat(folder, record)
    return manifest


def check_file_stat(folder: Path, record: FileRecord) -> None:
    """Raise EngineMismatch if the file is missing or its size or mtime differs from the record."""
    path = Path(folder) / record.name
    if not path.is_file():
        raise EngineMismatch(
            f"files.{record.name}", f"{folder}: engine file {record.name} is missing"
        )
    stat = path.stat()
    if stat.st_size != record.size:
        raise EngineMismatch(
            f"files.{record.name}.size",
            f"{folder}: engine file {record.name} changed since build: size {stat.st_size} "
            f"bytes, {record.size} recorded",
        )
    if stat.st_mtime_ns != record.mtime_ns:
        raise EngineMismatch(
            f"files.{record.name}.mtime_ns",
            f"{folder}: engine file {record.name} was modified since build (mtime differs); "
            "run `cvs-export verify` to re-hash it",
        )


def checked_part_files(
    folder: Path,
    *,
    family: str | None = None,
    precision: str | None = None,
    checkpoint_fingerprint: str | None = None,
    allow_failed_verdict: bool = False,
) -> tuple[EngineManifest, dict[str, Path]]:
    """`check_engine`, then each part's graph file: what every ONNX backend opens."""
    manifest = check_engine(
        folder,
        family=family,
        precision=precision,
        checkpoint_fingerprint=checkpoint_fingerprint,
        allow_failed_verdict=allow_failed_verdict,
    )
    return manifest, {part: Path(folder) / rec.file for part, rec in manifest.parts.items()}
