"""A run folder: one run (model × engine × precision) whose results cannot be mixed up.

`cvs-eval … --out RUN` makes RUN hold exactly one run:

    RUN/.lock            kernel lock (fcntl.flock) held by the one cvs-eval using RUN
    RUN/run.json         the run's identity (`RunIdentity`)
    RUN/store.jsonl      resumable rows (`cvs_evaluator.results.ResultStore`)
    RUN/results.parquet  one row per item (`write_parquet_atomic`), and the other reports
    RUN/compare/         the comparison engine's own run folder (same layout, own lock)

A stored row is reused only when everything that determines it is equal: the identity fields
(model, engine, precision, checkpoint fingerprint, engine manifest hash, template hash, scoring
variant), checked against `run.json` and against every stored row when the folder is opened,
and the row's image hash, checked per image by `RunFolder.resume`. A mismatch is refused with
one line naming the first differing field and how to start afresh; nothing is silently reused.

The lock is an flock on an open descriptor, so the kernel drops it when the process dies
(SIGKILL included): no stale lock survives. The pid and start time written into the lock file
only serve the refusal message.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cvs_evaluator.durable import durable_path
from cvs_evaluator.results import (
    DAMAGED_SUFFIX,
    ROW_SCHEMA,
    RepairReport,
    ResultStore,
    repair_store,
)

STORE_NAME = "store.jsonl"
RUN_JSON = "run.json"
LOCK_NAME = ".lock"
COMPARE_DIR = "compare"
RESULTS_NAME = "results.parquet"
REPORT_FILES: tuple[str, ...] = (
    RESULTS_NAME,
    "alignment.html",
    "alignment.csv",
    "alignment.md",
    "parity.html",
    "parity.json",
    "latency.json",
    "provenance.json",
    "settings.json",
    "timings.json",
    "screening.csv",
    "skipped_images.json",
)
"""Reports and records cvs-eval writes into a run folder; `--fresh` deletes these and nothing
the user put there. A new one must be added here (`RunFolder.output` refuses a name that is
not), or it would survive `--fresh` and be read as the new run's (a stale `screening.csv`)."""
OWNED_FILES: tuple[str, ...] = (STORE_NAME, STORE_NAME + DAMAGED_SUFFIX, RUN_JSON, *REPORT_FILES)
"""Every file of a run folder that `--fresh` deletes (the lock file stays: see `_clear`)."""
RUN_JSON_SCHEMA = 1


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message is one line saying why."""


@dataclass(frozen=True)
class RunIdentity:
    """Everything that determines a run's rows, besides each row's own image hash."""

    model: str
    """Model family name (`smol`, `yi34b`, …)."""
    engine: str
    """`torch` (the reference), `ort`, `trt`, …"""
    precision: str
    """The precision actually run (`fp32`, `int8-wo`, …)."""
    checkpoint_fingerprint: str
    """Identifies the weights (config + weights + tokenizer)."""
    engine_manifest_sha256: str
    """sha256 of the engine's `manifest.json`; "" for `torch`."""
    template_version: str
    """The prompt template's version (`prompts.PROMPT_TEMPLATE_VERSION`: a hash of its wording)."""
    scoring_variant: str
    """How option scores are read (e.g. `letters-v1`)."""


IDENTITY_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(RunIdentity))
"""The identity fields, in the order a mismatch is looked for (each is also a row field)."""


@dataclass(frozen=True)
class Resume:
    """What a resumed run may reuse (`RunFolder.resume`)."""

    done: frozenset[str]
    """Item ids whose stored row is reused."""
    dropped: int
    """Stored rows removed because their image file changed since they were scored."""
    changed_images: tuple[str, ...]
    """The image ids whose file changed (sorted)."""


class RunFolder:
    """An open run folder, locked until `close` (or the end of a `with` block)."""

    def __init__(self, path: Path, identity: RunIdentity, lock_fd: int, discarded: int) -> None:
        self.path = path
        """The folder."""
        self.identity = identity
        """The run this folder holds."""
        self.store = ResultStore(path / STORE_NAME)
        """The resumable rows."""
        self.discarded_rows = discarded
        """Rows deleted by `fresh=True` (0 otherwise), for the terminal."""
        self._lock_fd: int | None = lock_fd
        self._children: list[RunFolder] = []

    @property
    def results_path(self) -> Path:
        """`RUN/results.parquet`."""
        return self.path / RESULTS_NAME

    def output(self, name: str) -> Path:
        """The path of report `name` in this folder; it must be listed in `REPORT_FILES`, so
        that `--fresh` deletes it."""
        if name not in REPORT_FILES:
            raise ValueError(f"{name!r} is not a known report ({', '.join(REPORT_FILES)})")
        return self.path / name

    def resume(self, image_hashes: Mapping[str, str]) -> Resume:
        """The stored item ids this run may reuse. `image_hashes` maps each image id of this run
        to the sha256 of its file now; a stored row of an image whose hash differs (or is
        missing: an older row) is not reused: it is removed from the store (atomically, under
        the lock) so the re-scored row replaces it and item ids stay unique. Rows of images not
        in `image_hashes` are kept (not this run's concern). Raises `StoreError` on a damaged
        store."""
        self._check_open()
        rows = self.store.unique_rows()
        changed = {
            row["image"]
            for row in rows
            if row.get("image") in image_hashes
            and row.get("image_sha256", "") != image_hashes[row["image"]]
        }
        if changed:
            kept = [row for row in rows if row.get("image") not in changed]
            self.store.rewrite(kept)
            dropped = len(rows) - len(kept)
            rows = kept
        else:
            dropped = 0
        done = frozenset(row["item_id"] for row in rows)
        return Resume(done=done, dropped=dropped, changed_images=tuple(sorted(changed)))

    def done_ids(self, image_hashes: Mapping[str, str]) -> frozenset[str]:
        """`resume(image_hashes).done`: the reusable item ids, after removing the stored rows of
        images whose file changed (see `resume`, which also says how many were removed)."""
        return self.resume(image_hashes).done

    def compare(self, identity: RunIdentity, *, fresh: bool) -> RunFolder:
        """The comparison engine's run folder, `RUN/compare/`, opened like `open_run` (its own
        lock, identity and store) and closed with this one."""
        self._check_open()
        child = open_run(self.path / COMPARE_DIR, identity, fresh=fresh)
        self._children.append(child)
        return child

    def close(self) -> None:
        """Release the lock (and any comparison folder's)."""
        for child in self._children:
            child.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError(f"run folder {self.path} is closed")


def open_run(path: Path, identity: RunIdentity, *, fresh: bool) -> RunFolder:
    """Lock RUN and make it hold `identity`'s run. `fresh=True` deletes what an earlier run
    left (the files in `OWNED_FILES`, here and in `compare/`; nothing else) and starts anew;
    otherwise `run.json` and every stored row must carry `identity`, or `RunFolderError` names
    the first differing field and how to start afresh. Also `RunFolderError` when RUN is a file,
    cannot be created or written, or is in use by another process; `StoreError` when the store
    is damaged."""
    _make_folder(path)
    lock_fd = _lock(path, hint="wait for it or use another --out")
    try:
        discarded = 0
        if fresh:
            discarded = _count_lines(path / STORE_NAME)
            _clear(path)
        else:
            _check_identity(path, identity)
        _check_writable(path)
        if _read_run_json(path) != identity:
            _write_run_json(path, identity)
        return RunFolder(path, identity, lock_fd, discarded)
    except BaseException:
        os.close(lock_fd)
        raise


def open_existing_run(path: Path) -> RunFolder:
    """Lock an existing run folder for rebuilding its reports (`cvs-eval report RUN`): its
    identity is read from `run.json` and checked against the stored rows."""
    if not path.is_dir():
        raise RunFolderError(f"{path} is not a run folder: score into it first (--out {path})")
    lock_fd = _lock(path, hint="wait for it")
    try:
        identity = _read_run_json(path)
        if identity is None:
            raise RunFolderError(
                f"{path} has no {RUN_JSON}: not a cvs-eval run folder, or one written by an older "
                f"version (rescore it with --out {path} --fresh)"
            )
        _check_identity(path, identity)
        return RunFolder(path, identity, lock_fd, discarded=0)
    except BaseException:
        os.close(lock_fd)
        raise


def repair_run(path: Path) -> list[tuple[Path, RepairReport]]:
    """`cvs-eval repair RUN`: under RUN's lock, `repair_store` on RUN's store and on
    `RUN/compare/`'s (RUN may itself be a `compare/` folder); the report for each store."""
    if not path.is_dir():
        raise RunFolderError(f"{path} is not a run folder")
    reports: list[tuple[Path, RepairReport]] = []
    folders = [path] + ([path / COMPARE_DIR] if (path / COMPARE_DIR).is_dir() else [])
    if not any((f / STORE_NAME).is_file() or (f / RUN_JSON).is_file() for f in folders):
        raise RunFolderError(
            f"{path} is not a run folder ({STORE_NAME} and {RUN_JSON} missing): nothing to repair"
        )
    for folder in folders:
        lock_fd = _lock(folder, hint="wait for it")
        try:
            store = folder / STORE_NAME
            reports.append((store, repair_store(store)))
        finally:
            os.close(lock_fd)
    return reports


# ---- folder, lock ---------------------------------------------------------------------------


def _make_folder(path: Path) -> None:
    """Create RUN, or refuse in one line when it cannot be a writable folder."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a run folder: choose another --out")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise RunFolderError(
                f"run folder {path} is not writable (permission denied): choose another --out"
            )
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunFolderError(f"cannot create run folder {path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunFolderError(
            f"cannot create run folder {path}: {ancestor} is not writable (permission denied)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create run folder {path}: {error.strerror}") from error


def _lock(folder: Path, *, hint: str) -> int:
    """An exclusive flock on `folder/.lock`, taken without waiting; the open descriptor."""
    lock_path = folder / LOCK_NAME
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise RunFolderError(
            f"cannot create the lock file {lock_path}: {error.strerror}; choose another --out"
        ) from error
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(descriptor)
        os.close(descriptor)
        raise RunFolderError(f"{folder} is in use by another cvs-eval ({holder}); {hint}") from None
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps({"pid": os.getpid(), "started": started}).encode(), 0)
    return descriptor


def _lock_holder(descriptor: int) -> str:
    """`pid N, started T` from the lock file, as far as the holder has written it."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0))
        return f"pid {int(holder['pid'])}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _check_writable(folder: Path) -> None:
    """Refuse a store or `run.json` this process could not rewrite (the folder itself is
    checked by `_make_folder`)."""
    for name in (STORE_NAME, RUN_JSON):
        target = folder / name
        if target.exists() and not os.access(target, os.W_OK):
            raise RunFolderError(
                f"{target} is not writable (permission denied): choose another --out"
            )


def _clear(folder: Path) -> None:
    """Delete the files cvs-eval owns in `folder` and in `folder/compare/` (and their left-over
    temporaries). The lock files stay: deleting a lock file another process has open would let
    two processes lock two different files of the same name."""
    for name in OWNED_FILES:
        (folder / name).unlink(missing_ok=True)
        for temporary in folder.glob(f".{name}.*.tmp"):
            temporary.unlink(missing_ok=True)
    compare = folder / COMPARE_DIR
    if compare.is_dir():
        _clear(compare)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


# ---- identity -------------------------------------------------------------------------------


def _read_run_json(folder: Path) -> RunIdentity | None:
    path = folder / RUN_JSON
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))["identity"]
        return RunIdentity(**{name: str(stored.get(name, "")) for name in IDENTITY_FIELDS})
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        rows = _count_lines(folder / STORE_NAME)
        raise RunFolderError(
            f"{path} is damaged ({type(error).__name__}: {error}): pass --fresh to discard the "
            f"{rows} stored row(s), or choose another --out"
        ) from error


def _write_run_json(folder: Path, identity: RunIdentity) -> None:
    created = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    data = {"schema": RUN_JSON_SCHEMA, "identity": asdict(identity), "created": created}
    with durable_path(folder / RUN_JSON) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _check_identity(folder: Path, identity: RunIdentity) -> None:
    """Refuse, naming the first differing field, when `run.json` or a stored row (an older
    row lacking a field counts it as "") belongs to another run."""
    store = ResultStore(folder / STORE_NAME)
    rows = store.unique_numbered_rows()  # StoreError on damage or duplicates
    afresh = f"pass --fresh to discard the {len(rows)} stored row(s), or choose another --out"
    stored = _read_run_json(folder)
    if stored is not None:
        for name in IDENTITY_FIELDS:
            old, new = getattr(stored, name), getattr(identity, name)
            if old != new:
                raise RunFolderError(
                    f"{folder} holds a run with {name} {old!r}, this run has {new!r}: {afresh}"
                )
    for number, row in rows:
        schema = row.get("schema")
        older = (
            "" if schema == ROW_SCHEMA else f" (written by an older cvs-eval, row schema {schema})"
        )
        where = f"{store.path} line {number} (item {row['item_id']!r})"
        for name in IDENTITY_FIELDS:
            old, new = row.get(name, ""), getattr(identity, name)
            if old != new:
                raise RunFolderError(
                    f"{where} was scored with {name} {old!r}, this run has {new!r}{older}: {afresh}"
                )
        if schema != ROW_SCHEMA:
            raise RunFolderError(
                f"{where} has row schema {schema}, this version writes {ROW_SCHEMA}: {afresh}"
            )


# ---- results.parquet ------------------------------------------------------------------------

_TEXT_COLUMNS = (
    "item_id", "model", "engine", "precision", "checkpoint_fingerprint",
    "engine_manifest_sha256", "template_version", "scoring_variant", "condition", "country",
    "image", "image_sha256", "question", "section", "group_key",
)  # fmt: skip
RESULTS_SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=False) for name in _TEXT_COLUMNS]
    + [
        pa.field("option_codes", pa.list_(pa.int64()), nullable=False),
        pa.field("option_logprobs", pa.list_(pa.float64()), nullable=False),
        pa.field("model_dist", pa.list_(pa.float64()), nullable=True),
        pa.field("human_dist", pa.list_(pa.float64()), nullable=True),
        pa.field("option_mass", pa.float64(), nullable=False),
        pa.field("similarity", pa.float64(), nullable=True),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
"""`results.parquet`'s columns; a frame may carry more (their types are inferred)."""
_PER_OPTION = ("option_logprobs", "model_dist", "human_dist")


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` (the `RESULTS_SCHEMA` columns, then any others) as Parquet, atomically and
    durably. A missing `model_dist`, `human_dist` or `similarity` (None or NaN) is written as a
    null; an empty or wrongly sized per-option list, a duplicated `item_id` or a missing value
    in a required column is a `ValueError`, and the old file stays."""
    table = _results_table(frame)
    with durable_path(path) as temporary:
        pq.write_table(table, temporary)


def read_results(path: Path) -> pd.DataFrame:
    """`results.parquet` as written: list columns hold Python lists, a null list is None; a
    null `similarity` reads as NaN (pandas' missing float)."""
    table = pq.read_table(path)
    frame = table.to_pandas()
    for index, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            frame[field.name] = pd.Series(table.column(index).to_pylist(), dtype=object)
    return frame


def _results_table(frame: pd.DataFrame) -> Any:
    missing = [name for name in RESULTS_SCHEMA.names if name not in frame.columns]
    if missing:
        raise ValueError(f"the results frame lacks column(s): {', '.join(missing)}")
    duplicated = frame["item_id"][frame["item_id"].duplicated()]
    if len(duplicated):
        raise ValueError(
            f"{len(duplicated)} item id(s) appear twice in the results, e.g. {duplicated.iloc[0]!r}"
        )
    frame = frame.reset_index(drop=True).copy()
    for name in _PER_OPTION:
        cells = [_option_list(value, name) for value in frame[name]]
        frame[name] = pd.Series(cells, index=frame.index, dtype=object)
    for item_id, codes, *lists in frame[["item_id", "option_codes", *_PER_OPTION]].itertuples(
        index=False
    ):
        for name, values in zip(_PER_OPTION, lists, strict=True):
            if values is not None and len(values) != len(codes):
                raise ValueError(
                    f"item {item_id!r}: {name} has {len(values)} values for {len(codes)} "
                    "options (an item not scored has None, not [])"
                )
    for field in RESULTS_SCHEMA:
        if not field.nullable and frame[field.name].isna().any():
            raise ValueError(f"the results column {field.name} has missing values")
    extra = [name for name in frame.columns if name not in RESULTS_SCHEMA.names]
    schema = RESULTS_SCHEMA
    for name in extra:
        schema = schema.append(pa.field(name, pa.array(frame[name], from_pandas=True).type))
    return pa.Table.from_pandas(
        frame[[*RESULTS_SCHEMA.names, *extra]], schema=schema, preserve_index=False
    )


def _option_list(value: Any, name: str) -> list[float] | None:
    """A per-option cell as a list of floats, or None for a missing one (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str | bytes):
        raise ValueError(f"the results column {name} holds {value!r}, not a list")
    try:
        return [float(v) for v in value]
    except TypeError as error:
        raise ValueError(f"the results column {name} holds {value!r}, not a list") from error
