"""The runtime's user-facing errors, in a module that imports nothing heavy.

The CLI names these classes to turn them into one-line messages; defining them beside the
backends would make naming them import onnxruntime or TensorRT, which an edge install may lack.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class BackendUnavailable(RuntimeError):
    """A library a backend needs is not installed; the message names the extra to install."""


class GpuProviderError(RuntimeError):
    """A GPU execution provider was asked for and the session would not run on it."""


class TensorRTUnavailable(RuntimeError):
    """TensorRT, cuda-python or a CUDA device is missing; the message says what to install."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or BackendUnavailable saying which `cvs-eval[extra]` provides it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise  # something else is missing: not ours to explain
        raise BackendUnavailable(
            f"{purpose} needs {module}, which is not installed: pip install 'cvs-eval[{extra}]'"
        ) from None
