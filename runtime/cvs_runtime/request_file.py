"""Scoring requests as a file: how prompts reach a stage that may not import the evaluator.

The export stage judges and calibrates lower precisions on real survey prompts, but prompts
belong to the evaluator, which sits above the export stage. So the evaluator writes the requests
(`cvs-eval prompts --out FILE`) and the export stage reads them (`cvs-export build --prompts
FILE`): data, not an import. The file is an `.npz` with a small JSON header, read without pickle:

- `header`: UTF-8 JSON as uint8 — `schema` (`cvs-scoring-requests`), `schema_version`, `family`,
  `checkpoint_fingerprint` (of the checkpoint whose tokenizer made the ids), `sets` (name →
  request count), `content_sha256` (over every array, so a damaged file is refused) and
  whatever the writer adds under `source`;
- per named set S: `S.input_ids` and `S.option_token_ids` (all requests' ids concatenated) with
  `S.input_offsets` / `S.option_offsets` (requests + 1 each), `S.prefix_len`, `S.group_key`,
  `S.item_id`.

Text requests only: an image request is refused when writing (the export stage's prompts are
text-condition prompts). Numpy only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from cvs_families.requests import ScoringRequest

SCHEMA = "cvs-scoring-requests"
"""The header's `schema`: what kind of file this is."""
SCHEMA_VERSION = 1
"""Bumped when the layout changes; another version is refused with both numbers."""
VERDICT_SET = "verdict"
"""Requests a lower precision's accuracy verdict is judged on."""
CALIBRATION_SET = "calibration"
"""Requests for calibration, SmoothQuant and the fp16 range check (disjoint questions)."""
PRECISION_SETS = (VERDICT_SET, CALIBRATION_SET)
"""The sets `cvs-export build` needs for a precision below fp32."""
_FIELDS = ("input_ids", "input_offsets", "option_token_ids", "option_offsets", "prefix_len")
_TEXT_FIELDS = ("group_key", "item_id")


class RequestFileError(ValueError):
    """A request file that cannot be used: the message names the file and the field."""


@dataclass(frozen=True)
class RequestFile:
    """What a request file holds."""

    path: Path
    """Where it was read from."""
    family: str
    """The family whose tokenizer made the token ids."""
    checkpoint_fingerprint: str
    """The checkpoint that tokenizer came from."""
    sets: Mapping[str, tuple[ScoringRequest, ...]]
    """Named request sets, in file order."""
    source: Mapping[str, Any] = field(default_factory=dict)
    """What the writer recorded about how the requests were made."""

    def checked(self, *, family: str, checkpoint_fingerprint: str, sets: Sequence[str]) -> None:
        """RequestFileError unless the file is for this family and checkpoint and holds every
        set in `sets`, none of them empty."""
        for name, wanted, found in (
            ("family", family, self.family),
            ("checkpoint_fingerprint", checkpoint_fingerprint, self.checkpoint_fingerprint),
        ):
            if wanted != found:
                raise RequestFileError(
                    f"{self.path}: {name} is {found[:16]!r}, {wanted[:16]!r} is being built: "
                    "write the prompts for this checkpoint (cvs-eval prompts)"
                )
        for name in sets:
            if not self.sets.get(name):
                raise RequestFileError(
                    f"{self.path}: no {name!r} requests (sets: {list(self.sets)})"
                )


def _arrays(sets: Mapping[str, Sequence[ScoringRequest]]) -> dict[str, NDArray[Any]]:
    arrays: dict[str, NDArray[Any]] = {}
    for name, requests in sets.items():
        if not name.isidentifier():
            raise ValueError(f"set name {name!r} is not an identifier")
        for request in requests:
            if request.image is not None:
                raise ValueError(f"request {request.item_id!r} has an image: text requests only")
        ids = [np.asarray(r.input_ids, dtype=np.int64) for r in requests]
        options = [np.asarray(r.option_token_ids, dtype=np.int64) for r in requests]
        arrays[f"{name}.input_ids"] = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        arrays[f"{name}.input_offsets"] = np.cumsum([0, *(len(i) for i in ids)], dtype=np.int64)
        arrays[f"{name}.option_token_ids"] = (
            np.concatenate(options) if options else np.zeros(0, np.int64)
        )
        arrays[f"{name}.option_offsets"] = np.cumsum(
            [0, *(len(o) for o in options)], dtype=np.int64
        )
        arrays[f"{name}.prefix_len"] = np.array([r.prefix_len for r in requests], dtype=np.int64)
        arrays[f"{name}.group_key"] = np.array([r.group_key for r in requests], dtype=np.str_)
        arrays[f"{name}.item_id"] = np.array([r.item_id for r in requests], dtype=np.str_)
    return arrays


def _content_hash(arrays: Mapping[str, NDArray[Any]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def write_request_file(
    path: Path,
    *,
    family: str,
    checkpoint_fingerprint: str,
    sets: Mapping[str, Sequence[ScoringRequest]],
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write `sets` to `path` (temporary file, fsync, rename: never half-written)."""
    arrays = _arrays(sets)
    header = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "family": family,
        "checkpoint_fingerprint": checkpoint_fingerprint,
        "sets": {name: len(requests) for name, requests in sets.items()},
        "content_sha256": _content_hash(arrays),
        "source": dict(source or {}),
    }
    buffer = io.BytesIO()
    encoded = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)  # sets in order
    np.savez(buffer, header=encoded, **cast(Any, arrays))  # names, not savez's own keywords
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as out:
        out.write(buffer.getvalue())
        out.flush()
        os.fsync(out.fileno())
    Path(out.name).replace(path)
    return path


def read_request_file(path: Path) -> RequestFile:
    """The requests in `path`; RequestFileError naming the field when it is not one this
    version wrote, or its content does not match its recorded hash."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError) as error:
        raise RequestFileError(f"{path}: not a request file ({error})") from None
    header = _header(path, arrays.pop("header", None))
    if _content_hash(arrays) != header["content_sha256"]:
        raise RequestFileError(f"{path}: content_sha256 does not match: the file was changed")
    sets = {
        name: _requests(path, name, int(count), arrays)
        for name, count in dict(header["sets"]).items()
    }
    return RequestFile(
        path=path,
        family=str(header["family"]),
        checkpoint_fingerprint=str(header["checkpoint_fingerprint"]),
        sets=sets,
        source=dict(header.get("source") or {}),
    )


def _header(path: Path, raw: NDArray[Any] | None) -> dict[str, Any]:
    if raw is None:
        raise RequestFileError(f"{path}: no header: not a request file")
    try:
        header = json.loads(raw.astype(np.uint8).tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise RequestFileError(f"{path}: header is not JSON") from None
    if not isinstance(header, dict) or header.get("schema") != SCHEMA:
        raise RequestFileError(f"{path}: schema is not {SCHEMA!r}: not a request file")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise RequestFileError(
            f"{path}: schema_version {header.get('schema_version')!r}, this version reads "
            f"{SCHEMA_VERSION}: write the file again"
        )
    for key in ("family", "checkpoint_fingerprint", "sets", "content_sha256"):
        if key not in header:
            raise RequestFileError(f"{path}: header lacks {key!r}")
    return header


def _requests(
    path: Path, name: str, count: int, arrays: Mapping[str, NDArray[Any]]
) -> tuple[ScoringRequest, ...]:
    missing = [f"{name}.{f}" for f in (*_FIELDS, *_TEXT_FIELDS) if f"{name}.{f}" not in arrays]
    if missing:
        raise RequestFileError(f"{path}: set {name!r} lacks {missing}")
    ids, id_offsets = arrays[f"{name}.input_ids"], arrays[f"{name}.input_offsets"]
    options, option_offsets = arrays[f"{name}.option_token_ids"], arrays[f"{name}.option_offsets"]
    if not len(id_offsets) == len(option_offsets) == count + 1:
        raise RequestFileError(f"{path}: set {name!r} offsets do not hold {count} requests")
    try:
        return tuple(
            ScoringRequest(
                input_ids=ids[id_offsets[i] : id_offsets[i + 1]].astype(np.int64),
                image=None,
                option_token_ids=options[option_offsets[i] : option_offsets[i + 1]].astype(
                    np.int64
                ),
                group_key=str(arrays[f"{name}.group_key"][i]),
                prefix_len=int(arrays[f"{name}.prefix_len"][i]),
                item_id=str(arrays[f"{name}.item_id"][i]),
            )
            for i in range(count)
        )
    except (ValueError, IndexError) as error:
        raise RequestFileError(f"{path}: set {name!r}: {error}") from None
