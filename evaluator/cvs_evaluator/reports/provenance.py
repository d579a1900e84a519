"""What a report was made from, so a reader can cite it and a second run can reproduce it.

`provenance.json` and every page's footer carry the command line, the git commit of this code
(marked "+dirty" when the working tree has changes), the versions of the libraries numbers
depend on, the sha256 of each engine manifest and data file, the checkpoint fingerprint, the
seeds, the Python version and the time (lm-evaluation-harness puts the same in every results
file).
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "scipy",
    "onnxruntime",
    "torch",
    "transformers",
    "pyarrow",
    "matplotlib",
    "jinja2",
)
"""Libraries whose versions are recorded (null when not installed)."""
ALTERNATIVE_DISTRIBUTIONS: Mapping[str, tuple[str, ...]] = {"onnxruntime": ("onnxruntime-gpu",)}
"""Other distributions that provide the same import (the `gpu` extra installs onnxruntime-gpu)."""
HASH_CHUNK = 1 << 20
"""Bytes read at a time when hashing a file."""


def collect_provenance(
    command_line: Sequence[str],
    engine_manifests: Mapping[str, Path],
    checkpoint_fingerprint: str,
    data_files: Sequence[Path],
    seeds: Mapping[str, int],
) -> dict[str, Any]:
    """The provenance of a run, as plain data for provenance.json.

    `engine_manifests`: a label ("run", "compare") → that engine's manifest.json. Keys:
    command_line, git_commit, packages, engine_manifests ({label: {path, sha256}}),
    checkpoint_fingerprint, data_files ({path: sha256}), seeds, python, created (UTC, ISO 8601).
    """
    return {
        "command_line": list(command_line),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "engine_manifests": {
            label: {"path": str(path), "sha256": file_sha256(path)}
            for label, path in engine_manifests.items()
        },
        "checkpoint_fingerprint": checkpoint_fingerprint,
        "data_files": {str(path): file_sha256(path) for path in data_files},
        "seeds": {name: int(value) for name, value in seeds.items()},
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def git_commit(folder: Path) -> str:
    """HEAD of the git repository holding `folder`, with "+dirty" when `git status
    --porcelain` lists anything; "unknown" outside a repository or without git."""
    try:
        head = _git(folder, "rev-parse", "HEAD").strip()
        dirty = _git(folder, "status", "--porcelain").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def package_versions() -> dict[str, str | None]:
    """Installed version of each of `PACKAGES` (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        versions[name] = None
        for distribution in (name, *ALTERNATIVE_DISTRIBUTIONS.get(name, ())):
            try:
                versions[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in `HASH_CHUNK` pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def footer_lines(provenance: Mapping[str, Any]) -> list[str]:
    """The provenance as short "label: value" lines (the Markdown footer; the HTML footer shows
    the same facts)."""
    return [f"{label}: {value}" for label, value in footer_facts(provenance)]


def footer_facts(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs of the provenance, in reading order; absent keys are skipped."""
    facts: list[tuple[str, str]] = []
    if "command_line" in provenance:
        facts.append(("command", shlex.join(provenance["command_line"])))
    for key, label in (("git_commit", "git commit"), ("created", "created")):
        if key in provenance:
            facts.append((label, str(provenance[key])))
    if "checkpoint_fingerprint" in provenance:
        facts.append(("checkpoint fingerprint", str(provenance["checkpoint_fingerprint"])))
    for label, entry in provenance.get("engine_manifests", {}).items():
        facts.append((f"engine manifest ({label})", f"{entry['sha256']}  {entry['path']}"))
    if "seeds" in provenance:
        seeds = ", ".join(f"{k}={v}" for k, v in provenance["seeds"].items())
        facts.append(("seeds", seeds or "none"))
    if "python" in provenance:
        facts.append(("python", str(provenance["python"])))
    if "packages" in provenance:
        packages = ", ".join(
            f"{name} {version if version is not None else '(not installed)'}"
            for name, version in provenance["packages"].items()
        )
        facts.append(("packages", packages))
    for path, digest in provenance.get("data_files", {}).items():
        facts.append((f"data file {path}", digest))
    return facts
