"""Where data is read from and built artefacts go, from the environment.

`CVS_DATA`: the WVS files and images (never committed; the WVS licence forbids redistribution).
`CVS_CACHE`: built models, tokenizers and other artefacts; default `.cache/` in the current
directory (the Makefile sets it to the clone's `.cache/`), never `~/.cache`, so a fresh clone
really builds from nothing.

`check_writable_folder` judges, before any slow work, a folder a command-line flag names for
output; every CLI (cvs-eval, cvs-export, cvs-doctor, cvs-bench) shares it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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


def check_writable_folder(path: Path, flag: str, what: str = "folder") -> None:
    """Refuse in one line (`click.ClickException`: every caller is a command), before anything
    slow starts, a folder `flag` names that cannot take what the command writes: a file, a path
    under a file, or a folder this process cannot write (a probe file is written and deleted, so
    root and read-only mounts are judged by what happens, not by permission bits). Folders
    created for the probe are removed again: a command refused later for another reason leaves
    nothing behind."""
    import click  # the CLIs' library; imported here so the spec modules do not load it

    if path.exists() and not path.is_dir():
        raise click.ClickException(f"{flag} {path} is a file, not a {what}: choose another {flag}")
    blocker = next((parent for parent in path.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise click.ClickException(
            f"{flag} {path}: cannot create the {what}, {blocker} is a file: choose another {flag}"
        )
    created = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cvs-write-probe-"):
            pass
    except OSError as error:
        raise click.ClickException(
            f"{flag} {path}: the {what} cannot be created or written "
            f"({error.strerror or error}): choose another {flag}"
        ) from None
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
