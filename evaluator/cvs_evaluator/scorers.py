"""The scorers a run can use, built from the CLI's words: the PyTorch reference or an engine.

Each comes as a `RunScorer`: the batch stream `run_evaluation` consumes, the tokenizer, what
identifies the weights and the engine (so a stored row is reused only under the same ones), and,
for engines, the scheduler whose stage timings the latency report reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_evaluator.evaluate import Scorer
from cvs_runtime.engines import ENGINE_KINDS

if TYPE_CHECKING:
    from cvs_runtime.verification import VerificationReport

ENGINES = ("torch", *ENGINE_KINDS)
"""What `--engine` accepts: the PyTorch reference and the runtime's engine kinds."""
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
    stream: Scorer | None
    """Scores a run's requests batch by batch; None for a Ray driver's view of a scorer its
    workers open (`scorer_identity`)."""
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
    verification: VerificationReport | None = None
    """Engines: what the content check of the engine's files did before scoring (files hashed
    or taken from the verification record, bytes, seconds; `.line()` for a report); None for
    torch."""


def scheduler_report(scheduler: Any) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """(seconds of every call per stage, statistics per cache) of an engine's scheduler, as
    plain data for the latency report; empty for None (the PyTorch reference)."""
    if scheduler is None:
        return {}, {}
    stages = {stage: list(s) for stage, s in scheduler.times.samples.items() if s}
    caches: dict[str, dict[str, float]] = {}
    for cache in (scheduler.image_cache, scheduler.prefix_cache):
        stats = cache.stats
        caches[cache.name] = {
            "hits": stats.hits, "misses": stats.misses, "evictions": stats.evictions,
            "peak_bytes": stats.peak_bytes, "budget_bytes": cache.budget_bytes,
        }  # fmt: skip
    return stages, caches


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
    from cvs_runtime.errors import require

    require("torch", extra="export", purpose="--engine torch (the PyTorch reference)")
    require("transformers", extra="export", purpose="--engine torch (the PyTorch reference)")
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
    verify: str = "cached",
    verify_progress: Callable[[int, int], None] | None = None,
    threads: int = 0,
) -> RunScorer:
    """An engine built by `cvs-export build` under `root`, behind the runtime's scheduler.

    Everything comes from the engine folder (graphs, tokenizer, family facts, the checkpoint's
    fingerprint in the manifest): neither the checkpoint nor torch nor transformers is needed.
    With `weights` the engine must also have been built from that checkpoint. Every file's
    content is checked against the manifest before anything is opened, as `verify` says
    (`always`, `cached`, `off`: cvs_runtime.verification); `verify_progress` is called with
    (bytes hashed, bytes to hash) while hashing, and the report is the scorer's `verification`.
    `threads`: onnxruntime's threads per operator (0: one per core).
    """
    from cvs_runtime.engines import EngineScorer, open_engine

    view = _engine_view(
        spec, weights, engine, root, precision, verify=verify, verify_progress=verify_progress,
        allow_failed_engine=allow_failed_engine,
    )  # fmt: skip
    # Content verified by the view: the backend repeats the cheap checks only (no second hash).
    parts = open_engine(
        engine, view.manifest_path.parent, share_weight_pages=share_weight_pages, verify="off",
        threads=threads, **view.checks,
    )  # fmt: skip
    scorer = EngineScorer(
        parts,
        spec,
        pad_token_id=view.pad_token_id,
        budgets=budgets,
        engine_id=view.scorer.engine_manifest_sha256,
    )
    view.scorer.stream = scorer.stream
    view.scorer.scheduler = scorer.scheduler
    return view.scorer


@dataclass
class _EngineView:
    scorer: RunScorer
    manifest_path: Path
    checks: dict[str, Any]
    pad_token_id: int


def _engine_view(
    spec: Any,
    weights: Path | None,
    engine: str,
    root: Path,
    precision: str,
    *,
    verify: str,
    verify_progress: Callable[[int, int], None] | None = None,
    allow_failed_engine: bool = False,
) -> _EngineView:
    """The engine's manifest checked (and its files' content as `verify` says) and its scoring
    files opened: everything but the graphs."""
    from cvs_families.checkpoint_facts import checkpoint_fingerprint
    from cvs_runtime.engine_manifest import verified_engine
    from cvs_runtime.engines import engine_folder
    from cvs_runtime.scoring_files import open_scoring_files

    folder = engine_folder(root, engine, spec.name, precision)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"no {precision} engine for {spec.name} in {folder}: build it with "
            f"`cvs-export build --engines {root} --model {spec.name} --precision {precision}` "
            "(or `make engines`)"
        )
    fingerprint = None if weights is None else checkpoint_fingerprint(Path(weights))
    checks: dict[str, Any] = {
        "family": spec.name,
        "precision": precision,
        "checkpoint_fingerprint": fingerprint,
        "allow_failed_verdict": allow_failed_engine,
    }
    manifest_bytes = manifest_path.read_bytes()
    # Manifest, stat and content checks before any graph is loaded: a wrong byte is refused here.
    manifest, verification = verified_engine(
        folder, verify=verify, verify_progress=verify_progress, **checks
    )
    scoring = open_scoring_files(folder, manifest, spec, engines_root=root)
    scorer = RunScorer(
        engine=engine,
        precision=precision,
        stream=None,
        tokenizer=scoring.tokenizer,
        checkpoint_fingerprint=manifest.checkpoint_fingerprint,
        engine_manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        manifest_path=manifest_path,
        verification=verification,
    )
    return _EngineView(scorer, manifest_path, checks, scoring.facts.pad_token_id)


def scorer_identity(
    spec: Any,
    weights: Path | None,
    engine: str,
    root: Path,
    precision: str,
    *,
    allow_failed_engine: bool = False,
) -> RunScorer:
    """What a Ray driver needs of the scorer its workers open, without loading any weights:
    the tokenizer, the checkpoint's fingerprint and, for an engine, its manifest (checked, the
    files' content left to the workers that open them) and scoring files. `stream` is None."""
    if engine != "torch":
        return _engine_view(
            spec, weights, engine, root, precision, verify="off",
            allow_failed_engine=allow_failed_engine,
        ).scorer  # fmt: skip
    from cvs_runtime.errors import require

    require("transformers", extra="export", purpose="--engine torch (the PyTorch reference)")
    from cvs_families.checkpoint import checkpoint_fingerprint, ensure_checkpoint, load_tokenizer

    checkpoint = ensure_checkpoint(spec, weights)
    return RunScorer(
        engine="torch",
        precision="fp32",
        stream=None,
        tokenizer=load_tokenizer(spec, checkpoint),
        checkpoint_fingerprint=checkpoint_fingerprint(checkpoint),
    )


def check_same_checkpoint(
    scorer: RunScorer, target: tuple[str, str], spec: Any, weights: Path | None, root: Path
) -> None:
    """ValueError unless the comparison engine `target` scores the checkpoint `scorer` does
    (an engine carries its checkpoint's fingerprint; the reference computes it)."""
    engine, precision = target
    if engine == "torch":
        from cvs_families.checkpoint import checkpoint_fingerprint, ensure_checkpoint

        fingerprint = checkpoint_fingerprint(ensure_checkpoint(spec, weights))
    else:
        from cvs_runtime.engine_manifest import read_manifest
        from cvs_runtime.engines import engine_folder

        folder = engine_folder(root, engine, spec.name, precision)
        fingerprint = read_manifest(folder).checkpoint_fingerprint
    if fingerprint != scorer.checkpoint_fingerprint:
        raise ValueError(
            f"--compare-to {engine}/{precision} scores checkpoint {fingerprint[:12]}…, but the "
            f"{scorer.engine}/{scorer.precision} engine was built from "
            f"{scorer.checkpoint_fingerprint[:12]}…: rebuild the engine (`cvs-export build "
            f"--if-missing --engines {root} --model {spec.name} --precision "
            f"{scorer.precision}`) or pass --compare-to none"
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
    """Whether the PyTorch reference can run here: torch and transformers are installed (an
    edge install has neither)."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    except ImportError:  # a finder refusing the module: as good as absent
        return False
