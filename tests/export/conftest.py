"""Engines built once per test session: each tiny family exported, validated and recorded.

Building a tiny engine takes seconds (trace three small graphs, stream the weights, validate),
so every test that needs one shares the session's build through `engine_shelf`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

TINY_FAMILIES = ("tiny-vicuna", "tiny-yi", "tiny-qwen")
"""The families the declarative matrix covers (Llama 1:1, Llama GQA 7:1, Qwen2 with qkv bias)."""


@dataclass
class BuiltEngine:
    """One family's engine, built by `cvs-export build`'s own function, and its model."""

    name: str
    """Family name."""
    folder: Path
    """The finished engine folder (with manifest)."""
    loaded: Any
    """LoadedModel of the same checkpoint."""
    specs: dict[str, Any]
    """Part specs."""
    lines: tuple[str, ...]
    """The build's report lines."""
    manifest: Any
    """The EngineManifest written."""


class EngineShelf:
    """Builds each family's engine on first request, then hands out the same one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, BuiltEngine] = {}

    def __call__(self, name: str) -> BuiltEngine:
        if name not in self._built:
            from cvs_export.build import build_engine
            from cvs_export.llava_next import part_specs
            from cvs_families.checkpoint import ensure_checkpoint, load_model
            from cvs_families.registry import get_family

            summary = build_engine(
                name, weights=None, precision="fp32", out_root=self.root, echo=lambda _: None
            )
            spec = get_family(name)
            self._built[name] = BuiltEngine(
                name=name,
                folder=summary.folder,
                loaded=load_model(spec, ensure_checkpoint(spec)),
                specs=part_specs(spec.config),
                lines=summary.lines,
                manifest=summary.manifest,
            )
        return self._built[name]


@pytest.fixture(scope="session")
def engine_shelf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineShelf]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: keep the builds polite
    yield EngineShelf(tmp_path_factory.mktemp("engines"))
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smol_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """smol's fp32 engine folder: the repository's `engines/smol/fp32` when it is a valid engine
    of the checkpoint with every part (`make demo` builds it), else one built for this session
    (a few minutes)."""
    from cvs_export.build import build_engine, engine_up_to_date

    repository = Path(__file__).resolve().parents[2] / "engines"
    if engine_up_to_date("smol", "fp32", None, repository):
        return repository / "smol" / "fp32"
    root = tmp_path_factory.mktemp("smol-engine")
    return build_engine(
        "smol", weights=None, precision="fp32", out_root=root, echo=lambda _: None
    ).folder
