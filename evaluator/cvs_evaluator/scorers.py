"""The scorers a run can use, built from the CLI's words: the PyTorch reference or an engine.

Each comes as a `RunScorer`: the batch stream `run_evaluation` consumes, the tokenizer, what
identifies the weights and the engine (so a stored row is reused only under the same ones), and,
for engines, the scheduler whose stage timings the latency report reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvs_evaluator.evaluate import Scorer

ENGINES = ("torch", "ort", "ort-cuda", "ort-trt", "trt")
"""What `--engine` accepts: the PyTorch reference and the runtime's backends."""
TORCH_PRECISIONS = ("fp32",)
"""What `--engine torch` runs: the reference is fp32; other precisions are engines'."""


class PrecisionError(ValueError):
    """A precision the chosen engine does not offer."""


@dataclass
class RunScorer:
    """A scorer ready for `run_evaluation`, with what identifies it."""

    engine: str
    """`torch`, `ort`, `ort-cuda`, `ort-trt` or `trt`."""
    precision: str
    """The precision it runs."""
    stream: Scorer
    """Scores a run's requests batch by batch."""
    tokenizer: Any
    """The checkpoint's tokenizer."""
    checkpoint_fingerprint: str
    """sha256 of the checkpoint's files (`cvs_families.checkpoint.checkpoint_fingerprint`)."""
    engine_manifest_sha256: str = ""
    """sha256 of the engine's manifest.json; "" for torch."""
    manifest_path: Path | None = None
    """The engine's manifest file; None for torch."""
    scheduler: Any = None
    """Engines: the `cvs_runtime.scheduler.Scheduler` (stage timings, cache statistics)."""
    reference: Any = None
    """torch: the `ReferenceScorer` (screening scores continuations with it)."""


def check_precision(engine: str, precision: str) -> None:
    """Refuse a precision the engine does not offer, before anything is loaded."""
    from cvs_export.precision import PRECISIONS

    if engine == "torch":
        if precision not in TORCH_PRECISIONS:
            raise PrecisionError(
                f"--engine torch runs the fp32 PyTorch reference, not {precision}: score "
                f"{precision} on an engine (`cvs-export build --precision {precision}`, then "
                f"--engine ort --precision {precision})"
            )
        return
    if precision not in PRECISIONS:
        raise PrecisionError(
            f"unknown precision {precision!r}; engines offer {', '.join(PRECISIONS)}"
        )


def torch_scorer(spec: Any, weights: Path | None, batch_size: int) -> RunScorer:
    """The PyTorch reference at fp32."""
    from cvs_families.checkpoint import checkpoint_fingerprint, ensure_checkpoint, load_model
    from cvs_families.reference import ReferenceScorer

    checkpoint = ensure_checkpoint(spec, weights)
    loaded = load_model(spec, checkpoint)
    reference = ReferenceScorer(loaded, batch_size=batch_size)
    return RunScorer(
        engine="torch",
        precision="fp32",
        stream=reference.stream,
        tokenizer=loaded.tokenizer,
        checkpoint_fingerprint=checkpoint_fingerprint(checkpoint),
        reference=reference,
    )


def engine_scorer(
    spec: Any,
    weights: Path | None,
    engine: str,
    root: Path,
    precision: str,
    *,
    budgets: Any = None,
    allow_failed_engine: bool = False,
    share_weight_pages: bool = False,
) -> RunScorer:
    """An engine built by `cvs-export build` under `root`, behind the runtime's scheduler."""
    from cvs_families.checkpoint import (
        checkpoint_fingerprint,
        ensure_checkpoint,
        load_tokenizer,
        pad_token_id,
    )
    from cvs_runtime.engines import EngineScorer, engine_folder, open_engine

    checkpoint = ensure_checkpoint(spec, weights)
    tokenizer = load_tokenizer(spec, checkpoint)
    folder = engine_folder(root, engine, spec.name, precision)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no {precision} engine for {spec.name} in {folder}: build it with "
            f"`cvs-export build --model {spec.name} --precision {precision}` (or `make engines`)"
        )
    fingerprint = checkpoint_fingerprint(checkpoint)
    parts = open_engine(
        engine,
        folder,
        family=spec.name,
        precision=precision,
        checkpoint_fingerprint=fingerprint,
        allow_failed_verdict=allow_failed_engine,
        share_weight_pages=share_weight_pages,
    )
    manifest_sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    scorer = EngineScorer(
        parts,
        spec,
        pad_token_id=pad_token_id(spec, tokenizer),
        budgets=budgets,
        engine_id=manifest_sha,
    )
    return RunScorer(
        engine=engine,
        precision=precision,
        stream=scorer.stream,
        tokenizer=tokenizer,
        checkpoint_fingerprint=fingerprint,
        engine_manifest_sha256=manifest_sha,
        manifest_path=manifest,
        scheduler=scorer.scheduler,
    )


def parse_compare_to(text: str) -> tuple[str, str]:
    """`ENGINE[/PRECISION]` → (engine, precision); precision defaults to fp32."""
    engine, _, precision = text.partition("/")
    if engine not in ENGINES:
        raise ValueError(
            f"--compare-to {text!r}: unknown engine {engine!r}; give ENGINE[/PRECISION] with "
            f"ENGINE one of {', '.join(ENGINES)} (e.g. torch/fp32)"
        )
    precision = precision or "fp32"
    check_precision(engine, precision)
    return engine, precision


def torch_available() -> bool:
    """Whether the PyTorch reference can be imported here (edge installs have no torch)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None
