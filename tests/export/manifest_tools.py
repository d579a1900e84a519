"""Test helpers for engine manifests: re-seal one edited by hand, as only cvs-export could."""

from __future__ import annotations

from pathlib import Path

from cvs_runtime.engine_manifest import read_manifest


def reseal(folder: Path) -> None:
    """Rewrite `folder/manifest.json` through `write_manifest`, keeping its (hand-edited) content
    and sealing it again: for tests that edit a manifest to plant a mismatch the seal would
    otherwise report first."""
    from cvs_export.manifest import write_manifest

    write_manifest(Path(folder), read_manifest(Path(folder), require_seal=False))
