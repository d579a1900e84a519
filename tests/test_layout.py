"""The package layout keeps its promises: one import name per module, stage boundaries held."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {
    "families": "cvs_families",
    "runtime": "cvs_runtime",
    "export": "cvs_export",
    "evaluator": "cvs_evaluator",
}


def _modules_loaded_by(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("root,package", sorted(PACKAGES.items()))
def test_each_stage_folder_is_a_source_root_with_one_package(root: str, package: str) -> None:
    children = [p.name for p in (REPO / root).iterdir() if p.suffix == ".py" or p.is_dir()]
    assert [c for c in children if c != "__pycache__"] == [package]


def test_runtime_imports_neither_torch_nor_tensorrt_nor_export() -> None:
    runtime_modules = sorted(
        "cvs_runtime."
        + p.relative_to(REPO / "runtime" / "cvs_runtime")
        .with_suffix("")
        .as_posix()
        .replace("/", ".")
        for p in (REPO / "runtime" / "cvs_runtime").rglob("*.py")
        if p.name != "__init__.py"
    )
    statement = "\n".join(["import cvs_runtime", *(f"import {m}" for m in runtime_modules)])
    loaded = _modules_loaded_by(statement)
    for forbidden in ("torch", "tensorrt", "cvs_export", "cvs_evaluator"):
        assert forbidden not in loaded, f"importing the runtime loaded {forbidden}"


def test_no_generic_top_level_name_is_importable_from_the_root() -> None:
    # From the repository root, the stage folders must not become packages `export`, `runtime`…
    loaded = _modules_loaded_by("import cvs_export, cvs_runtime, cvs_evaluator, cvs_families")
    for generic in ("export", "runtime", "evaluator", "families"):
        assert generic not in loaded
    for package in PACKAGES.values():
        module = __import__(package)
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().parent.parent.name in PACKAGES
