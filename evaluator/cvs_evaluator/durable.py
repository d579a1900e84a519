"""Files written whole or not at all: every output of the project goes through `durable_path`.

A temporary file beside the target is written, fsynced, renamed onto the target, and the folder
fsynced; a reader, or a rerun after SIGKILL or power loss, sees the old file or the new one,
never half of one. On an error the temporary file is removed and the old file stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def durable_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    temporary.chmod(0o644)  # mkstemp creates 0600; outputs are meant to be read by others
    try:
        yield temporary
        _fsync(temporary)
        temporary.replace(path)
        _fsync(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """`text` (UTF-8) at `path`, durably."""
    with durable_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON (UTF-8, a final newline) at `path`, durably."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
