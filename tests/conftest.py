"""Session-wide test setup: marker skips with reasons, and the real-data location."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_configure(config: pytest.Config) -> None:
    # Tests read the real data from $CVS_DATA; outside `make test` default to the shared folder.
    os.environ.setdefault("CVS_DATA", str(REPO.parent / "shared" / "data"))
    os.environ.setdefault("CVS_CACHE", str(REPO / ".cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU: none on this machine")
    no_trt = pytest.mark.skip(
        reason="needs TensorRT: not installable here (see NOTES.md); run on a GPU server"
    )
    has_trt = importlib.util.find_spec("tensorrt") is not None
    cuda = None
    for item in items:
        if "gpu" in item.keywords:
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(no_gpu)
        if "trt" in item.keywords and not has_trt:
            item.add_marker(no_trt)
