"""An engine's manifest, and the check that refuses an engine at load time.

`engines/<model>/<precision>/manifest.json` says what an engine is: model family, checkpoint
fingerprint, precision, opset, exporter, library versions, each file's size, modification time
and sha256, and the validation results. The export stage writes it (cvs_export.manifest); the
runtime reads and checks it here, because the runtime may not import the export package.

The manifest protects itself: `self_sha256` is the sha256 of its canonical content (every other
field, files' mtimes included, as sorted compact JSON), computed whenever it is written
(`to_json`) and checked whenever it is read, so a hand-edited manifest is refused naming the
mismatch. Mtimes are sealed too: `cvs-export verify` rewrites a copied engine's manifest through
the same writer, which seals it again, and an unsealed mtime could otherwise be edited to pass
the cheap check when content verification is off. The seal is an integrity check against
accidents and hand edits, not a signature. A manifest written before the seal existed
(schema_version 1) is refused with the command that re-seals it (`cvs-export verify FOLDER`,
which seals only when every file's hash matches).

At load the runtime refuses an engine whose manifest does not match what was asked (family,
precision, checkpoint) or whose files changed, naming the field that differs, and a
lower-precision engine whose accuracy verdict failed unless the caller allows it. The cheap
size and mtime check runs first; then every file's content is checked against its sha256
(cvs_runtime.verification: `cached` by default, remembering a successful check keyed by each
file's device, inode, size, mtime and ctime, so a 145 GB engine is hashed once, not per load).
Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvs_runtime.verification import Progress, VerificationReport

MANIFEST_FILE = "manifest.json"
"""The manifest's file name inside an engine folder."""
SCHEMA_VERSION = 2
"""Version of the manifest layout; a reader refuses any other (2: sealed by `self_sha256`)."""
UNSEALED_SCHEMA_VERSION = 1
"""The layout before manifests carried their own hash: refused with the command re-sealing it."""
SEAL_FIELD = "self_sha256"
"""The manifest field holding the hash of the manifest's own content."""


class ManifestError(ValueError):
    """An engine folder has no readable manifest, or the manifest is malformed."""


class EngineMismatch(ManifestError):
    """The engine is not the one asked for, or its files changed; `field` names what differs."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        """The manifest field (or `files.<name>.<attribute>`) that differs."""


class UnsealedManifest(EngineMismatch):
    """A manifest written before manifests carried their own hash (schema_version 1)."""


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
    """Layout version of this manifest (what was read; `to_json` always writes the current)."""
    self_sha256: str = field(default="", compare=False)
    """sha256 of the manifest's canonical content (`content_sha256`) as read from its file; ""
    for a manifest built in memory. Never trusted on write: `to_json` computes it afresh."""

    def sealed_content(self) -> dict[str, Any]:
        """The manifest as written: plain JSON data at the current schema version, with
        `self_sha256` set to the hash of everything else."""
        data = json.loads(json.dumps(asdict(self)))  # JSON's own types, as a reader sees them
        data["schema_version"] = SCHEMA_VERSION
        data.pop(SEAL_FIELD, None)
        data[SEAL_FIELD] = content_sha256(data)
        return data

    def to_json(self) -> str:
        """The manifest as indented JSON, sealed (its `self_sha256` computed now)."""
        return json.dumps(self.sealed_content(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(
        cls, text: str, *, source: Path | None = None, require_seal: bool = True
    ) -> EngineManifest:
        """Parse a manifest; raise ManifestError on any missing, unknown or mistyped field and
        EngineMismatch (`self_sha256`) when its content does not hash to its seal.

        `source` (the manifest's path) is named in the messages. `require_seal=False` also
        reads an unsealed (schema_version 1) or edited manifest: only for `cvs-export verify`,
        which re-seals an old manifest after every file's hash matched, and for tests."""
        where = str(source) if source is not None else MANIFEST_FILE
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise ManifestError(f"{where} is not JSON: {error}") from error
        if not isinstance(raw, dict):
            raise ManifestError(f"{where} is not a JSON object")
        version = raw.get("schema_version")
        readable = (SCHEMA_VERSION,) if require_seal else (SCHEMA_VERSION, UNSEALED_SCHEMA_VERSION)
        if type(version) is int and version == UNSEALED_SCHEMA_VERSION and require_seal:
            folder = source.parent if source is not None else "FOLDER"
            raise UnsealedManifest(
                "schema_version",
                f"{where} was written before manifests carried their own hash (schema_version "
                f"1): run `cvs-export verify {folder}` to re-hash every file and seal it (it "
                "seals only when every file matches), or rebuild the engine",
            )
        if version not in readable or isinstance(version, bool):
            raise EngineMismatch(
                "schema_version",
                f"{where}: manifest schema_version is {version!r}, this runtime reads "
                f"{SCHEMA_VERSION}",
            )
        read = SCHEMA_VERSION if version == SCHEMA_VERSION else UNSEALED_SCHEMA_VERSION
        manifest = cls._parse(raw, read)
        recorded = raw.get(SEAL_FIELD)
        if require_seal:
            found = content_sha256({k: v for k, v in raw.items() if k != SEAL_FIELD})
            if not isinstance(recorded, str):
                raise EngineMismatch(
                    SEAL_FIELD,
                    f"{where} has no {SEAL_FIELD}: it was edited after it was written (its "
                    f"content hash is {found[:12]}…); rebuild the engine",
                )
            if found != recorded:
                raise EngineMismatch(
                    SEAL_FIELD,
                    f"{where} was edited after it was written: its content hash {found[:12]}… "
                    f"differs from the recorded {SEAL_FIELD} {recorded[:12]}…; rebuild the "
                    "engine (only cvs-export writes manifests)",
                )
        return replace(manifest, self_sha256=recorded if isinstance(recorded, str) else "")

    @classmethod
    def _parse(cls, raw: Mapping[str, Any], version: int) -> EngineManifest:
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


def content_sha256(data: Mapping[str, Any]) -> str:
    """sha256 of manifest data as canonical JSON (sorted keys, compact separators, ASCII): the
    same bytes for the same content whatever the file's indentation or key order."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _typed(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in raw:
        raise ManifestError(f"manifest has no {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"manifest field {key!r} is not a {kind.__name__}")
    return value


def read_manifest(folder: Path, *, require_seal: bool = True) -> EngineManifest:
    """The manifest of the engine in `folder`, its seal checked (nothing else yet).

    `require_seal=False`: see `EngineManifest.from_json` (cvs-export verify only)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{folder}: no {MANIFEST_FILE}: not an engine folder (build it first)")
    return EngineManifest.from_json(path.read_text(), source=path, require_seal=require_seal)


def verified_engine(
    folder: Path,
    *,
    family: str | None = None,
    precision: str | None = None,
    checkpoint_fingerprint: str | None = None,
    allow_failed_verdict: bool = False,
    verify: str = "cached",
    verify_progress: Progress | None = None,
) -> tuple[EngineManifest, VerificationReport]:
    """The load-time check, returning the manifest and the content check's report (files hashed,
    taken from the verification record, bytes, seconds). The cheap checks (manifest seal,
    fields, sizes, mtimes) all run before any file is hashed; `verify_progress` is called with
    (bytes hashed, bytes to hash) while hashing."""
    from cvs_runtime.verification import check_mode, verify_engine_files

    check_mode(verify)
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
    report = verify_engine_files(folder, manifest, verify, progress=verify_progress)
    return manifest, report


def present_file_stat(folder: Path, record: FileRecord) -> os.stat_result:
    """The file's stat; EngineMismatch if it is missing or its size differs from the record."""
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
    return stat


def check_file_stat(folder: Path, record: FileRecord) -> None:
    """Raise EngineMismatch if the file is missing or its size or mtime differs from the record."""
    stat = present_file_stat(folder, record)
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
    verify: str = "cached",
) -> tuple[EngineManifest, dict[str, Path], VerificationReport]:
    """`verified_engine`, then each part's graph file: what every ONNX backend opens."""
    manifest, report = verified_engine(
        folder,
        family=family,
        precision=precision,
        checkpoint_fingerprint=checkpoint_fingerprint,
        allow_failed_verdict=allow_failed_verdict,
        verify=verify,
    )
    files = {part: Path(folder) / rec.file for part, rec in manifest.parts.items()}
    return manifest, files, report
