"""The package layout keeps its promises: one import name per module, and layers that only point
down.

The four stages are `cvs_families` (numpy spec; its torch parts imported lazily) ← `cvs_runtime`
← `cvs_export`, with `cvs_evaluator` on top. Every import statement of every module is read with
`ast` (module level, inside functions, under `if TYPE_CHECKING:`, `import_module("…")` and the
registries' lazy `"module:attr"` strings) and checked against `ALLOWED`; a subprocess then checks
that the heavy libraries are not loaded where they must not be.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {
    "families": "cvs_families",
    "runtime": "cvs_runtime",
    "export": "cvs_export",
    "evaluator": "cvs_evaluator",
}
"""Source root (a stage folder) → the one package it holds."""
ALLOWED: dict[str, frozenset[str]] = {
    "cvs_families": frozenset(),
    "cvs_runtime": frozenset({"cvs_families"}),
    "cvs_export": frozenset({"cvs_runtime", "cvs_families"}),
    "cvs_evaluator": frozenset({"cvs_export", "cvs_runtime", "cvs_families"}),
}
"""Which of the other packages each package may import; a package may always import itself."""
HEAVY = ("torch", "transformers", "tensorrt", "onnx")
"""Libraries the runtime, the families' numpy half and `cvs-eval`'s entry point never load."""
TORCH_PARTS = frozenset(
    {"cvs_families.checkpoint", "cvs_families.checkpoint_build", "cvs_families.reference"}
)
"""The `cvs_families` modules that import torch or transformers at module level: the "torch
parts", imported lazily by whoever needs them. Every other families module is numpy only."""
_LAZY_ENTRY = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_][\w.]*")
"""A registry's lazy entry, `"package.module:attribute"`: an import that happens later."""
_IMPORT_FUNCTIONS = frozenset({"import_module", "__import__"})


# ---- the static checker ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportEdge:
    """One import in one module."""

    path: Path
    """The importing file."""
    module: str
    """The importing module's dotted name (`cvs_export.cli`)."""
    line: int
    """Line of the import statement (or call, or lazy entry)."""
    target: str
    """The imported module's dotted name, relative imports resolved."""
    how: str
    """`import`, `from-import`, `import_module()` or `lazy entry`."""

    @property
    def package(self) -> str:
        return self.module.partition(".")[0]

    @property
    def target_package(self) -> str:
        return self.target.partition(".")[0]


def module_name(source_root: Path, path: Path) -> str:
    """`families/cvs_families/spec.py` → `cvs_families.spec`; a package's `__init__.py` → the
    package's name."""
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, *, is_package: bool) -> list[tuple[int, str, str]]:
    """(line, imported module, how) for every import in `source`, wherever it stands: module
    level, functions, classes, `if TYPE_CHECKING:`, `try:`; `import_module("x")` /
    `__import__("x")` with a literal name; and lazy `"module:attr"` registry strings naming one
    of our packages. Relative imports are resolved against `module`."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, "import") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            found.append((node.lineno, target, "from-import"))
        elif isinstance(node, ast.Call) and _called_name(node.func) in _IMPORT_FUNCTIONS:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value, "import_module()"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _LAZY_ENTRY.fullmatch(node.value)
            if match and match["module"].partition(".")[0] in ALLOWED:
                found.append((node.lineno, match["module"], "lazy entry"))
    return found


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from … import` names."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    keep = len(package) - (node.level - 1)
    if keep <= 0:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    return ".".join([*package[:keep], *([node.module] if node.module else [])])


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def stage_edges(repo: Path) -> list[ImportEdge]:
    """Every import of every module under the four stage folders of `repo`."""
    edges: list[ImportEdge] = []
    for root, package in PACKAGES.items():
        source_root = repo / root
        for path in sorted((source_root / package).rglob("*.py")):
            module = module_name(source_root, path)
            source = path.read_text(encoding="utf-8")
            for line, target, how in imports_in(
                source, module, is_package=path.name == "__init__.py"
            ):
                edges.append(ImportEdge(path, module, line, target, how))
    return edges


def forbidden_reason(edge: ImportEdge) -> str | None:
    """Why `edge` breaks the layering, or None when it is allowed."""
    own, target = edge.package, edge.target_package
    if target in PACKAGES:
        return f"`{target}` is a stage folder, not a package: import `{PACKAGES[target]}`"
    if target not in ALLOWED or target == own:
        return None
    if target in ALLOWED[own]:
        return None
    may = ", ".join(sorted(ALLOWED[own])) or "none of the other packages"
    return f"{own} may import {may}"


def layering_violations(repo: Path, package: str | None = None) -> list[str]:
    """One line per forbidden import (of `package`'s modules, or of all): file, line, the
    importing module, the imported one and why it is forbidden."""
    lines = []
    for edge in stage_edges(repo):
        if package is not None and edge.package != package:
            continue
        reason = forbidden_reason(edge)
        if reason is not None:
            lines.append(
                f"{edge.path.relative_to(repo)}:{edge.line}: {edge.module} → {edge.target} "
                f"({edge.how}): {reason}"
            )
    return lines


# ---- the real tree ------------------------------------------------------------------------------


@pytest.mark.parametrize("root,package", sorted(PACKAGES.items()))
def test_each_stage_folder_is_a_source_root_with_one_package(root: str, package: str) -> None:
    children = [p.name for p in (REPO / root).iterdir() if p.suffix == ".py" or p.is_dir()]
    assert [c for c in children if c != "__pycache__"] == [package]


@pytest.mark.parametrize("package", list(ALLOWED))
def test_every_import_points_down(package: str) -> None:
    violations = layering_violations(REPO, package)
    if violations:
        count = f"{len(violations)} import(s) of {package} against the layering:"
        pytest.fail("\n".join([count, *violations]), pytrace=False)


def test_the_checker_sees_the_real_downward_edges() -> None:
    # A checker that read nothing would pass the test above: it must see the edges that exist.
    seen = {(e.package, e.target_package) for e in stage_edges(REPO)}
    expected = {
        ("cvs_runtime", "cvs_families"),
        ("cvs_export", "cvs_runtime"),
        ("cvs_export", "cvs_families"),
        ("cvs_evaluator", "cvs_runtime"),
        ("cvs_evaluator", "cvs_families"),
    }
    assert expected <= seen, f"not seen: {sorted(expected - seen)}"


def test_the_torch_parts_are_exactly_the_families_modules_that_import_torch() -> None:
    # TORCH_PARTS is what the subprocess check below exempts: it must stay true both ways.
    source_root = REPO / "families"
    importing_torch = set()
    for path in (source_root / "cvs_families").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _module_level_statements(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n.partition(".")[0] in ("torch", "transformers") for n in names):
                importing_torch.add(module_name(source_root, path))
    assert importing_torch == TORCH_PARTS


def _module_level_statements(tree: ast.Module) -> list[ast.stmt]:
    """Statements run when the module is imported: the body and what `if`/`try`/`with` blocks
    at module level hold (not functions or classes' methods)."""
    statements: list[ast.stmt] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        statements.append(node)
        if isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody"):
                pending.extend(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
    return statements


# ---- the checker itself, on small synthetic trees ----------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A repository under `tmp_path` holding `files` ({"families/cvs_families/x.py": source});
    every package folder gets an `__init__.py`."""
    for relative, source in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    for root, package in PACKAGES.items():
        for folder in [tmp_path / root / package, *(tmp_path / root / package).rglob("*")]:
            if folder.is_dir() and not (folder / "__init__.py").exists():
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "__init__.py").write_text("", encoding="utf-8")
    return tmp_path


FORBIDDEN_FORMS = {
    "module level": ("import cvs_runtime.requests\n", 1, "cvs_runtime.requests"),
    "from-import": ("from cvs_runtime.scores import OptionScores\n", 1, "cvs_runtime.scores"),
    "aliased": ("import os\nimport cvs_export as ce\n", 2, "cvs_export"),
    "inside a function": (
        "def score():\n    from cvs_evaluator import prompts\n    return prompts\n",
        2,
        "cvs_evaluator",
    ),
    "inside a method": (
        "class A:\n    def m(self):\n        import cvs_runtime.engines\n",
        3,
        "cvs_runtime.engines",
    ),
    "TYPE_CHECKING": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from cvs_runtime.requests import ScoringRequest\n",
        3,
        "cvs_runtime.requests",
    ),
    "try/except": (
        "try:\n    import cvs_runtime\nexcept ImportError:\n    pass\n",
        2,
        "cvs_runtime",
    ),
    "import_module": (
        "import importlib\n\nOPEN = importlib.import_module('cvs_runtime.engines')\n",
        3,
        "cvs_runtime.engines",
    ),
    "lazy registry entry": (
        "OPENERS = {\n    'ort': 'cvs_runtime.engines:open_ort',\n}\n",
        2,
        "cvs_runtime.engines",
    ),
    "stage folder": ("import runtime.cvs_runtime\n", 1, "runtime.cvs_runtime"),
}


@pytest.mark.parametrize("form", list(FORBIDDEN_FORMS))
def test_the_checker_catches_a_forbidden_edge_in_every_form(form: str, tmp_path: Path) -> None:
    source, line, target = FORBIDDEN_FORMS[form]
    repo = _tree(tmp_path, {"families/cvs_families/bad.py": source})
    [violation] = layering_violations(repo)
    assert violation.startswith(f"families/cvs_families/bad.py:{line}: cvs_families.bad → {target}")


def test_the_checker_names_what_the_package_may_import(tmp_path: Path) -> None:
    repo = _tree(tmp_path, {"export/cvs_export/cli.py": "from cvs_evaluator import prompts\n"})
    [violation] = layering_violations(repo)
    assert "cvs_export.cli → cvs_evaluator" in violation
    assert violation.endswith("cvs_export may import cvs_families, cvs_runtime")


def test_the_checker_accepts_the_allowed_edges(tmp_path: Path) -> None:
    repo = _tree(
        tmp_path,
        {
            "families/cvs_families/spec.py": "import numpy\nfrom . import anyres\n",
            "families/cvs_families/anyres.py": "REGISTRY = {'x': 'cvs_families.spec:SPEC'}\n",
            "runtime/cvs_runtime/requests.py": "from cvs_families.spec import FamilySpec\n",
            "export/cvs_export/build.py": (
                "def build():\n    import cvs_runtime.requests\n    import cvs_families\n"
            ),
            "evaluator/cvs_evaluator/cli.py": (
                "from cvs_export import build\nfrom cvs_runtime import requests\n"
                "from .sub import deep\n"
            ),
            "evaluator/cvs_evaluator/sub/deep.py": "from ..cli import build\n",
        },
    )
    assert layering_violations(repo) == []
    seen = {(e.module, e.target) for e in stage_edges(repo)}
    assert ("cvs_evaluator.sub.deep", "cvs_evaluator.cli") in seen
    assert ("cvs_families.spec", "cvs_families") in seen
    assert ("cvs_evaluator.cli", "cvs_evaluator.sub") in seen


@pytest.mark.parametrize(
    "source,module,is_package,target",
    [
        ("from . import x\n", "cvs_families.sub.mod", False, "cvs_families.sub"),
        ("from .spec import X\n", "cvs_families.mod", False, "cvs_families.spec"),
        ("from ..spec import X\n", "cvs_families.sub.mod", False, "cvs_families.spec"),
        ("from .mod import X\n", "cvs_families.sub", True, "cvs_families.sub.mod"),
        ("from .. import spec\n", "cvs_families.sub", True, "cvs_families"),
    ],
)
def test_relative_imports_are_resolved(
    source: str, module: str, is_package: bool, target: str
) -> None:
    assert imports_in(source, module, is_package=is_package) == [(1, target, "from-import")]


def test_a_relative_import_beyond_the_package_is_an_error() -> None:
    with pytest.raises(ValueError, match="beyond the top-level package"):
        imports_in("from ... import x\n", "cvs_families.mod", is_package=False)


# ---- what importing a stage loads ---------------------------------------------------------------

_WATCH = """
import json, sys, traceback
WATCHED = set(json.loads(sys.argv[1]))
OURS = tuple(f"/{p}/" for p in json.loads(sys.argv[2]))
first = {}
class Watch:
    def find_spec(self, name, path=None, target=None):
        for key in {name, name.partition(".")[0]} & WATCHED - set(first):
            ours = [f for f in traceback.extract_stack()[:-1] if any(p in f.filename for p in OURS)]
            first[key] = f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "?"
        return None
sys.meta_path.insert(0, Watch())
"""


def _loaded_by(statement: str, watched: tuple[str, ...]) -> dict[str, str]:
    """Which of `watched` (module names: a top-level name stands for its submodules too)
    running `statement` in a fresh interpreter loads, each with the file and line of ours that
    first imported it."""
    code = (
        f"{_WATCH}\n{statement}\n"
        "print(json.dumps({t: first.get(t, '?') for t in sorted(WATCHED) if t in sys.modules}))"
    )
    args = [json.dumps(watched), json.dumps(list(PACKAGES.values()))]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO
    )
    if out.returncode != 0:
        pytest.fail(f"the imports failed:\n{out.stderr[-3000:]}", pytrace=False)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _modules_of(package: str, skip: frozenset[str] = frozenset()) -> list[str]:
    root = next(r for r, p in PACKAGES.items() if p == package)
    names = {module_name(REPO / root, p) for p in (REPO / root / package).rglob("*.py")}
    return sorted(names - skip)


def _import_all(modules: list[str]) -> str:
    return "\n".join(f"import {m}" for m in modules)


def test_the_runtime_loads_no_heavy_library_and_no_upper_stage() -> None:
    loaded = _loaded_by(
        _import_all(_modules_of("cvs_runtime")), (*HEAVY, "cvs_export", "cvs_evaluator")
    )
    assert loaded == {}, f"importing every cvs_runtime module loaded (first import): {loaded}"


def test_the_families_numpy_half_loads_no_heavy_library_and_no_other_stage() -> None:
    modules = _modules_of("cvs_families", skip=TORCH_PARTS)
    assert "cvs_families" in modules and "cvs_families.spec" in modules
    watched = (*HEAVY, "cvs_runtime", "cvs_export", "cvs_evaluator", *sorted(TORCH_PARTS))
    loaded = _loaded_by(_import_all(modules), watched)
    assert loaded == {}, f"importing cvs_families' numpy modules loaded (first import): {loaded}"


def test_the_cvs_eval_entry_point_loads_no_heavy_library() -> None:
    # The edge install (onnxruntime, no torch) starts here; `--help` must work there too.
    statement = (
        "from cvs_evaluator.cli_eval import main\n"
        "for args in (['--help'], ['run', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit as done:\n"
        "        assert done.code == 0, done.code\n"
    )
    loaded = _loaded_by(statement, HEAVY)
    assert loaded == {}, f"cvs-eval --help loaded (first import): {loaded}"


def test_the_watch_sees_a_heavy_import() -> None:
    # The three checks above pass vacuously if the watch never reports: it must see numpy.
    loaded = _loaded_by("import cvs_families.spec", ("numpy",))
    assert list(loaded) == ["numpy"]
    assert re.search(r"/cvs_families/\w+\.py:\d+$", loaded["numpy"]), loaded


def test_no_generic_top_level_name_is_importable_from_the_root() -> None:
    # From the repository root, the stage folders must not become packages `export`, `runtime`…
    loaded = _loaded_by(
        "import cvs_export, cvs_runtime, cvs_evaluator, cvs_families", tuple(PACKAGES)
    )
    assert loaded == {}
    for package in PACKAGES.values():
        module = __import__(package)
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().parent.parent.name in PACKAGES
