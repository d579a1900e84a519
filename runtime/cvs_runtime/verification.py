"""Engine files checked by content before use, cheaply enough for a 145 GB engine.

A size and mtime check does not notice a flipped byte whose file got its mtime back, and an
engine with one wrong weight runs without a word and scores garbage. So before an engine is used
every file's sha256 is compared with its manifest (`verify_engine_files`), in one of three modes:

- `always`: hash every file.
- `cached` (the default): a successful check is remembered in a small verification record under
  the cache folder (`$CVS_CACHE/verified/<hash of the folder path>.json`), keyed per file by
  device, inode, size, mtime_ns and ctime_ns and the sha256 it was checked against. A file whose
  key is unchanged is taken from the record; any difference re-hashes it. Restoring a file's
  mtime does not fool it: writing the bytes or setting the times changes the ctime, which no
  unprivileged call can set back. The record is written atomically and only after every file
  matched; a record that cannot be read or parsed is ignored (everything re-hashed), never
  trusted. It guards against accidents and hand edits, not against someone who can rewrite both
  the engine and the cache.
- `off`: no hashing (the report says so); the caller's size and mtime check still runs.

Hashing streams fixed-size blocks (flat memory on any file size) and spreads the files over a
few threads: hashlib and file reads release the GIL on large blocks, so files hash in parallel
(one file is sequential: sha256 has no parallel form). Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvs_runtime.engine_manifest import (
    EngineManifest,
    EngineMismatch,
    present_file_stat,
)

VERIFY_MODES = ("always", "cached", "off")
"""What `--verify-engine` accepts; `cached` is the default."""
DEFAULT_VERIFY = "cached"
"""The mode used when none is given."""
HASH_BLOCK = 1 << 24
"""Bytes read per step while hashing (16 MiB: flat memory, large enough to release the GIL)."""
MAX_WORKERS = 8
"""Most files hashed at once (fewer on a machine with fewer cores)."""
RECORD_FOLDER = "verified"
"""Sub-folder of the cache folder holding verification records."""
RECORD_VERSION = 1
"""Layout version of a verification record; any other is ignored."""
_STAT_KEYS = ("device", "inode", "size", "mtime_ns", "ctime_ns")

Progress = Callable[[int, int], None]
"""Called as blocks are hashed with (bytes hashed so far, bytes to hash in all), from the hashing
threads one call at a time (e.g. set a tqdm bar's `n` and refresh it)."""


@dataclass(frozen=True)
class VerificationReport:
    """What one content check of an engine folder did and how long it took."""

    folder: Path
    """The engine folder."""
    mode: str
    """`always`, `cached` or `off`."""
    files: int
    """Files the manifest lists."""
    files_hashed: int
    """Files whose bytes were read and hashed now."""
    files_from_record: int
    """Files taken from the verification record (unchanged since a successful check)."""
    bytes_hashed: int
    """Bytes read and hashed now."""
    seconds: float
    """Wall time of the whole check (stat, record, hashing)."""
    record_written: bool = False
    """Whether the verification record was (re)written after this check."""

    @property
    def bytes_per_second(self) -> float:
        """Hashing throughput; 0 when nothing was hashed."""
        return self.bytes_hashed / self.seconds if self.bytes_hashed and self.seconds > 0 else 0.0

    def line(self) -> str:
        """One line for a report: `verified N files, X MiB hashed in Y s (Z MiB/s)`, and how
        many came from the verification record."""
        if self.mode == "off":
            return f"engine content not verified ({self.files} files; verification is off)"
        if not self.files_hashed:
            return (
                f"verified {self.files} files in {self.seconds:.2f} s: all unchanged since their "
                "last check (nothing hashed)"
            )
        text = (
            f"verified {self.files} files, {self.bytes_hashed / 2**20:.1f} MiB hashed in "
            f"{self.seconds:.2f} s ({self.bytes_per_second / 2**20:.0f} MiB/s)"
        )
        if self.files_from_record:
            text += f"; {self.files_from_record} unchanged since their last check"
        return text

    def to_json(self) -> dict[str, Any]:
        """Plain data for a report file."""
        return {
            "mode": self.mode,
            "files": self.files,
            "files_hashed": self.files_hashed,
            "files_from_record": self.files_from_record,
            "bytes_hashed": self.bytes_hashed,
            "seconds": self.seconds,
            "bytes_per_second": self.bytes_per_second,
        }


def check_mode(mode: str) -> str:
    """`mode` if it is one of `VERIFY_MODES`, else ValueError listing them."""
    if mode not in VERIFY_MODES:
        raise ValueError(
            f"unknown engine verification mode {mode!r} (valid: {', '.join(VERIFY_MODES)})"
        )
    return mode


def default_record_dir() -> Path:
    """`$CVS_CACHE/verified`: where verification records live."""
    from cvs_families.paths import cache_dir

    return cache_dir() / RECORD_FOLDER


class _Counter:
    """Bytes hashed across threads, reported to an optional progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self._progress is not None:
                self._progress(self.done, self.total)


def _sha256_stream(path: Path, counter: _Counter | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(min(HASH_BLOCK, max(path.stat().st_size, 1)))
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            digest.update(view[:count])  # releases the GIL for blocks over 2 KiB
            if counter is not None:
                counter.add(count)
    return digest.hexdigest()


def sha256_files(
    paths: Mapping[str, Path], *, progress: Progress | None = None, workers: int | None = None
) -> dict[str, str]:
    """sha256 of each file (name → hex digest), streamed, several files at once."""
    sizes = {name: Path(path).stat().st_size for name, path in paths.items()}
    counter = _Counter(sum(sizes.values()), progress)
    if workers is None:
        workers = min(MAX_WORKERS, os.cpu_count() or 1)
    workers = max(1, min(workers, len(paths)))
    order = sorted(paths, key=lambda name: -sizes[name])  # largest first: balanced threads
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
        hashed = pool.map(lambda name: _sha256_stream(Path(paths[name]), counter), order)
        digests = dict(zip(order, hashed, strict=True))
    return {name: digests[name] for name in paths}


def _stat_key(stat: os.stat_result) -> dict[str, int]:
    return {
        "device": stat.st_dev,
        "inode": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def record_path(folder: Path, record_dir: Path) -> Path:
    """The verification record of the engine in `folder`: one small file per engine folder,
    named by a hash of its resolved path (concurrent runs on other engines never collide)."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]
    return Path(record_dir) / f"{key}.json"


def read_record(path: Path, folder: Path) -> dict[str, dict[str, Any]]:
    """The entries of a verification record; {} for a record that is missing, unreadable,
    malformed or about another folder (it is then re-hashed, never trusted)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(raw, dict)
        or raw.get("version") != RECORD_VERSION
        or raw.get("folder") != str(Path(folder).resolve())
        or not isinstance(raw.get("files"), dict)
    ):
        return {}
    entries: dict[str, dict[str, Any]] = {}
    for name, entry in raw["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return {}
        if not all(type(entry.get(key)) is int for key in _STAT_KEYS):
            return {}
        entries[name] = entry
    return entries


def write_record(path: Path, folder: Path, entries: Mapping[str, Mapping[str, Any]]) -> bool:
    """Write a verification record atomically (temporary file, then rename); False when the
    cache folder is not writable (the next check then hashes again: slower, never wrong)."""
    path = Path(path)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    data = {"version": RECORD_VERSION, "folder": str(Path(folder).resolve()), "files": entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        scratch.replace(path)
    except OSError:
        scratch.unlink(missing_ok=True)
        return False
    return True


def verify_engine_files(
    folder: Path,
    manifest: EngineManifest,
    mode: str = DEFAULT_VERIFY,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> VerificationReport:
    """Check every file of the engine in `folder` against its manifest's sha256.

    `cache_dir` holds the verification records (default `$CVS_CACHE/verified`); `progress` is
    called as blocks are hashed. Raises EngineMismatch (`files.<name>.sha256`) for the first
    file, in manifest order, whose content differs; a missing file or another size is refused
    too. The record is written only after every file matched.
    """
    began = time.perf_counter()
    folder = Path(folder)
    check_mode(mode)
    if mode == "off":
        return VerificationReport(folder, mode, len(manifest.files), 0, 0, 0, 0.0)
    stats = {record.name: present_file_stat(folder, record) for record in manifest.files}
    record_file = record_path(folder, cache_dir or default_record_dir())
    known = read_record(record_file, folder) if mode == "cached" else {}
    todo: dict[str, Path] = {}
    for record in manifest.files:
        entry = known.get(record.name)
        unchanged = (
            entry is not None
            and entry["sha256"] == record.sha256
            and all(entry[k] == v for k, v in _stat_key(stats[record.name]).items())
        )
        if not unchanged:
            todo[record.name] = folder / record.name
    digests = sha256_files(todo, progress=progress)
    for record in manifest.files:
        digest = digests.get(record.name)
        if digest is not None and digest != record.sha256:
            raise EngineMismatch(
                f"files.{record.name}.sha256",
                f"{folder}: engine refused: {record.name} content differs from the one recorded "
                f"in its manifest (sha256 {digest[:12]}…, {record.sha256[:12]}… recorded); "
                f"rebuild it or run `cvs-export verify {folder}` to see every file",
            )
    entries: dict[str, dict[str, Any]] = {}
    for record in manifest.files:
        now = (folder / record.name).stat()
        if _stat_key(now) == _stat_key(stats[record.name]):  # not changed while hashed
            entries[record.name] = {**_stat_key(now), "sha256": record.sha256}
    written = write_record(record_file, folder, entries)
    return VerificationReport(
        folder=folder,
        mode=mode,
        files=len(manifest.files),
        files_hashed=len(todo),
        files_from_record=len(manifest.files) - len(todo),
        bytes_hashed=sum(stats[name].st_size for name in todo),
        seconds=time.perf_counter() - began,
        record_written=written,
    )
