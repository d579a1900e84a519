"""Engines behind one interface: a registry of backends and a scorer over any of them.

`open_engine("ort" | "ort-cuda" | "ort-trt" | "trt", folder, …)` checks the engine's manifest
and returns its parts as a `PartRunner`; `EngineScorer` turns `ScoringRequest`s into
`ScoredItem`s through the scheduler (image and prefix caches kept across calls), the same result
the PyTorch reference returns. Backends are
registered lazily as "module:attr", so importing this module loads neither onnxruntime-gpu nor
tensorrt; a missing library is reported by the backend that needs it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_families.requests import MASS_THRESHOLD, ScoredItem, ScoringRequest, judge_option_mass
from cvs_runtime.errors import require
from cvs_runtime.scheduler import Scheduler

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec
    from cvs_runtime.budgets import Budgets
    from cvs_runtime.parts import PartRunner


class UnknownEngineError(KeyError):
    """No backend of that name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


def engine_folder(root: Path, kind: str, model: str, precision: str) -> Path:
    """Where `cvs-export build` puts an engine: `<root>/<model>/<precision>/` for onnxruntime
    (all three providers read the same ONNX files), `<root>/<model>/trt-<precision>/` for
    TensorRT plans."""
    return root / model / (engine_kind(kind).folder_prefix + precision)


def engine_kind(name: str) -> EngineKind:
    """The registered kind `name`; `UnknownEngineError` names the valid ones."""
    if name not in ENGINE_KINDS:
        close = difflib.get_close_matches(name, ENGINE_KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownEngineError(
            f"unknown engine {name!r}{hint} (valid: {', '.join(ENGINE_KINDS)})"
        )
    return ENGINE_KINDS[name]


def open_engine(
    kind: str,
    folder: Path,
    *,
    family: str,
    precision: str,
    checkpoint_fingerprint: str | None = None,
    allow_failed_verdict: bool = False,
    share_weight_pages: bool = False,
    verify: str = "cached",
    threads: int = 0,
) -> PartRunner:
    """The engine in `folder` on backend `kind`, after its manifest is checked against the
    family, precision and checkpoint asked for (a mismatch names the differing field) and its
    files' content as `verify` says (`always`, `cached`, `off`: cvs_runtime.verification; the
    report is the returned parts' `verification`); a lower-precision engine whose accuracy
    verdict failed is refused unless `allow_failed_verdict`. `share_weight_pages` turns
    onnxruntime's weight prepacking off (`cvs_runtime.ort_backend.OrtSessionConfig`); `threads`
    sets onnxruntime's threads per operator (0: one per core; a Ray worker gives its CPU share)."""
    return engine_kind(kind).open(
        kind,
        Path(folder),
        family=family,
        precision=precision,
        checkpoint_fingerprint=checkpoint_fingerprint,
        allow_failed_verdict=allow_failed_verdict,
        share_weight_pages=share_weight_pages,
        verify=verify,
        threads=threads,
    )


def _open_ort_cpu(
    kind: str, folder: Path, share_weight_pages: bool, threads: int, **checks: Any
) -> PartRunner:
    require("onnxruntime", extra=ENGINE_KINDS[kind].extra, purpose=f"--engine {kind}")
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig

    config = OrtSessionConfig(share_weight_pages, intra_op_threads=threads)
    return OrtParts.open(folder, config=config, **checks)


def _open_ort_gpu(
    kind: str, folder: Path, share_weight_pages: bool, threads: int, **checks: Any
) -> PartRunner:
    require("onnxruntime", extra=ENGINE_KINDS[kind].extra, purpose=f"--engine {kind}")
    from cvs_runtime.ort_backend import OrtSessionConfig
    from cvs_runtime.ort_gpu import OrtGpuParts

    config = OrtSessionConfig(share_weight_pages, intra_op_threads=threads)
    return OrtGpuParts.open(folder, kind, config=config, **checks)  # type: ignore[arg-type]


def _open_trt(
    kind: str, folder: Path, share_weight_pages: bool, threads: int, **checks: Any
) -> PartRunner:
    from cvs_runtime.trt_backend import TrtParts

    return TrtParts.open(folder, **checks)  # TensorRT engines hold their own weights


@dataclass(frozen=True)
class EngineKind:
    """One `--engine` kind: how it is opened, where its folder is, what provides its library."""

    name: str
    open: Callable[..., PartRunner]
    """`(kind, folder, *, share_weight_pages, threads, **manifest checks) -> PartRunner`; it
    imports its library when called, so importing this module loads none of them."""
    extra: str
    """The `cvs-eval[…]` extra that installs its library."""
    folder_prefix: str = ""
    """An engine folder is `<root>/<model>/<prefix><precision>`."""
    gpu: bool = False
    """Whether it runs on a GPU."""


ENGINE_KINDS: dict[str, EngineKind] = {
    kind.name: kind
    for kind in (
        EngineKind("ort", _open_ort_cpu, extra="cpu"),
        EngineKind("ort-cuda", _open_ort_gpu, extra="gpu", gpu=True),
        EngineKind("ort-trt", _open_ort_gpu, extra="gpu", gpu=True),
        EngineKind("trt", _open_trt, extra="trt", folder_prefix="trt-", gpu=True),
    )
}
"""Every engine kind, in the order CLIs list them: the one registry `cvs-eval`, `cvs-doctor`
and `open_engine` read."""


class EngineScorer:
    """Scores requests on engine parts; returns what the reference scorer's `score_items` does."""

    def __init__(
        self,
        parts: PartRunner,
        spec: FamilySpec,
        *,
        pad_token_id: int,
        threshold: float = MASS_THRESHOLD,
        budgets: Budgets | None = None,
        engine_id: str = "",
    ) -> None:
        self.scheduler = Scheduler(
            parts, spec, pad_token_id=pad_token_id, budgets=budgets, engine_id=engine_id
        )
        """Groups, caches, batches and stage times (kept across calls)."""
        self.threshold = threshold
        """Minimum raw option mass for an item to be scored."""

    def stream(
        self, requests: Sequence[ScoringRequest]
    ) -> Iterator[tuple[tuple[int, ...], list[ScoredItem]]]:
        """(request indices, their items) batch by batch as batches finish, in any order."""
        for batch in self.scheduler.run(requests):
            yield (
                batch.indices,
                [
                    judge_option_mass(result, requests[i].option_token_ids, self.threshold)
                    for i, result in zip(batch.indices, batch.scores, strict=True)
                ],
            )

    def score_items(self, requests: Sequence[ScoringRequest]) -> list[ScoredItem]:
        """Option scores per request (in request order), then the raw-mass rule."""
        results: dict[int, ScoredItem] = {}
        for indices, items in self.stream(requests):
            results.update(zip(indices, items, strict=True))
        return [results[i] for i in range(len(requests))]
