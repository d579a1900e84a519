"""Engines behind one interface: a registry of backends and a scorer over any of them.

`open_engine("ort" | "ort-cuda" | "ort-trt" | "trt", folder, …)` checks the engine's manifest
and returns its parts as a `PartRunner`; `EngineScorer` turns `ScoringRequest`s into
`ScoredItem`s through the chain, the same result the PyTorch reference returns. Backends are
registered lazily as "module:attr", so importing this module loads neither onnxruntime-gpu nor
tensorrt; a missing library is reported by the backend that needs it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_runtime.chain import score_with_parts
from cvs_runtime.requests import MASS_THRESHOLD, ScoredItem, ScoringRequest, judge_option_mass

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec
    from cvs_runtime.parts import PartRunner

ENGINE_BACKENDS: dict[str, str] = {
    "ort": "cvs_runtime.engines:_open_ort_cpu",
    "ort-cuda": "cvs_runtime.engines:_open_ort_gpu",
    "ort-trt": "cvs_runtime.engines:_open_ort_gpu",
    "trt": "cvs_runtime.engines:_open_trt",
}
"""Engine kind → "module:attr" of an opener `(kind, folder, **checks) -> PartRunner`."""


class UnknownEngineError(KeyError):
    """No backend of that name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


def engine_folder(root: Path, kind: str, model: str, precision: str) -> Path:
    """Where `cvs-export build` puts an engine: `<root>/<model>/<precision>/` for onnxruntime
    (all three providers read the same ONNX files), `<root>/<model>/trt-<precision>/` for
    TensorRT plans."""
    return root / model / (f"trt-{precision}" if kind == "trt" else precision)


def open_engine(
    kind: str,
    folder: Path,
    *,
    family: str,
    precision: str,
    checkpoint_fingerprint: str | None = None,
    allow_failed_verdict: bool = False,
) -> PartRunner:
    """The engine in `folder` on backend `kind`, after its manifest is checked against the
    family, precision and checkpoint asked for (a mismatch names the differing field); a
    lower-precision engine whose accuracy verdict failed is refused unless
    `allow_failed_verdict`."""
    if kind not in ENGINE_BACKENDS:
        close = difflib.get_close_matches(kind, ENGINE_BACKENDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownEngineError(
            f"unknown engine {kind!r}{hint} (valid: {', '.join(ENGINE_BACKENDS)})"
        )
    module, attr = ENGINE_BACKENDS[kind].split(":")
    opener: Callable[..., PartRunner] = getattr(importlib.import_module(module), attr)
    return opener(
        kind,
        Path(folder),
        family=family,
        precision=precision,
        checkpoint_fingerprint=checkpoint_fingerprint,
        allow_failed_verdict=allow_failed_verdict,
    )


def _open_ort_cpu(kind: str, folder: Path, **checks: Any) -> PartRunner:
    from cvs_runtime.ort_backend import OrtParts

    return OrtParts.open(folder, **checks)


def _open_ort_gpu(kind: str, folder: Path, **checks: Any) -> PartRunner:
    from cvs_runtime.ort_gpu import OrtGpuParts

    return OrtGpuParts.open(folder, kind, **checks)  # type: ignore[arg-type]


def _open_trt(kind: str, folder: Path, **checks: Any) -> PartRunner:
    from cvs_runtime.trt_backend import TrtParts

    return TrtParts.open(folder, **checks)


class EngineScorer:
    """Scores requests on engine parts; returns what the reference scorer's `score_items` does."""

    def __init__(
        self,
        parts: PartRunner,
        spec: FamilySpec,
        *,
        pad_token_id: int,
        threshold: float = MASS_THRESHOLD,
    ) -> None:
        self.parts = parts
        """The engine."""
        self.spec = spec
        """The model family (numpy half: packing, geometry)."""
        self.pad_token_id = pad_token_id
        """Token id put at padded positions (masked; any real token that is not the image's)."""
        self.threshold = threshold
        """Minimum raw option mass for an item to be scored."""

    def score_items(self, requests: Sequence[ScoringRequest]) -> list[ScoredItem]:
        """Option scores per request (prefix cache per group), then the raw-mass rule."""
        scores = score_with_parts(self.parts, self.spec, requests, pad_token_id=self.pad_token_id)
        return [
            judge_option_mass(result, request.option_token_ids, self.threshold)
            for result, request in zip(scores, requests, strict=True)
        ]
