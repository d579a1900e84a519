"""Where data is read from and built artefacts go, from the environment.

`CVS_DATA`: the WVS files and images (never committed; the WVS licence forbids redistribution).
`CVS_CACHE`: built models, tokenizers and other artefacts; default `.cache/` in the current
directory (the Makefile sets it to the clone's `.cache/`), never `~/.cache`, so a fresh clone
really builds from nothing.
"""

from __future__ import annotations

import os
from pathlib import Path


class DataDirMissing(RuntimeError):
    """`CVS_DATA` is unset or does not point at the survey data."""


def data_dir() -> Path:
    """The survey data folder (`$CVS_DATA`), checked to exist."""
    value = os.environ.get("CVS_DATA")
    if not value:
        raise DataDirMissing(
            "CVS_DATA is not set: point it at the folder holding wvs7/ and images/ "
            "(the Makefile sets it to ../shared/data)"
        )
    path = Path(value)
    if not (path / "wvs7").is_dir():
        raise DataDirMissing(f"CVS_DATA={path} has no wvs7/ folder: not the survey data folder")
    return path


def cache_dir() -> Path:
    """The artefact cache (`$CVS_CACHE`, default `./.cache`), created on first use."""
    path = Path(os.environ.get("CVS_CACHE") or ".cache").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
