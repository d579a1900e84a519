"""Scoring a run's items: in this process or on Ray workers, timed stage by stage.

`score_into` hands the items the run folder's store lacks to `evaluate.run_evaluation`, locally
(`evaluate.LocalDispatch` on the scorer's stream) or through `dispatch_for`'s Ray workers
(`cvs_evaluator.ray_run`), and returns the timing record the latency report reads: the
evaluator's own stages (`StageClock`), the engine's stages and cache statistics (merged over the
workers on Ray), the first batch's output check and the engine's verification.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cvs_evaluator import evaluate
from cvs_evaluator.prompts import PromptItem
from cvs_evaluator.scorers import RunScorer

if TYPE_CHECKING:
    from cvs_evaluator.run_pipeline import RunRequest


@dataclass
class StageClock:
    """Seconds of every call of the evaluator's own stages."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    """Stage → seconds per call."""

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time one call of `stage`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.samples.setdefault(stage, []).append(time.perf_counter() - start)


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def score_into(
    folder: Any,
    scorer: RunScorer,
    items: Sequence[PromptItem],
    settings: evaluate.EvalSettings,
    *,
    spec: Any,
    prepare_image: Callable[[str], Any],
    hashes: dict[str, str],
    clock: StageClock,
    progress: bool,
    log: evaluate.ScoringLog | None = None,
    dispatch: Any = None,
) -> dict[str, Any]:
    """Score `items` not yet in the run folder's store, in this process or on `dispatch`'s
    Ray workers (`ray_run.RayDispatch`); returns the run's timing record, with the check of the
    first scored batch. Images that cannot be decoded go to `log`."""
    from cvs_evaluator.scorers import scheduler_report

    log = evaluate.ScoringLog() if log is None else log
    if dispatch is None:
        assert scorer.stream is not None
        stream = scorer.stream if scorer.scheduler is not None else _timed(scorer.stream, clock)
        dispatch = evaluate.LocalDispatch(stream)
    started = time.perf_counter()
    scored = evaluate.run_evaluation(
        settings, items, folder.store, dispatch=dispatch, tokenizer=scorer.tokenizer,
        spec=spec, prepare_image=prepare_image, progress=progress,
        row_identity=evaluate.row_identity(
            scorer.checkpoint_fingerprint, scorer.engine_manifest_sha256, hashes
        ),
        done=folder.done_ids(hashes), clock=clock, log=log,
        engine_folder=scorer.manifest_path.parent if scorer.manifest_path else None,
    )  # fmt: skip
    wall = time.perf_counter() - started
    stages = dict(clock.samples)
    workers = None
    if isinstance(dispatch, evaluate.LocalDispatch):
        engine_stages, caches = scheduler_report(scorer.scheduler)
        stages.update(engine_stages)
    else:
        reports = dispatch.worker_reports()
        caches = _merged_caches([report.pop("caches") for report in reports])
        for report in reports:
            for stage, samples in report.pop("stages").items():
                stages.setdefault(stage, []).extend(samples)
        workers = reports
    return {
        "stages": stages,
        "items": scored,
        "wall_seconds": wall,
        "caches": caches,
        "peak_rss_bytes": peak_rss_bytes(),
        "output_check": None if log.output_check is None else log.output_check.to_json(),
        "verification": None if scorer.verification is None else scorer.verification.to_json(),
        "workers": workers,
    }


def _merged_caches(
    per_worker: Sequence[dict[str, dict[str, float]]],
) -> dict[str, dict[str, float]]:
    """One cache record per cache name over all workers: counts and budgets summed, the peak
    the largest of any one worker."""
    merged: dict[str, dict[str, float]] = {}
    for caches in per_worker:
        for name, stats in caches.items():
            into = merged.setdefault(name, dict.fromkeys(stats, 0.0))
            for key, value in stats.items():
                into[key] = max(into[key], value) if key == "peak_bytes" else into[key] + value
    return merged


def _timed(stream: evaluate.Scorer, clock: StageClock) -> evaluate.Scorer:
    """`stream` with each batch's scoring timed as the `score` stage (the PyTorch reference has
    no stages of its own)."""

    def timed(requests: Sequence[Any]) -> Iterator[Any]:
        batches = iter(stream(requests))
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            clock.samples.setdefault("score", []).append(time.perf_counter() - start)
            yield batch

    return timed


def run_scorer(request: RunRequest, spec: Any) -> RunScorer:
    """The run's scorer; with `--ray`, this process's view of the one its workers open (the
    tokenizer and what identifies the weights and engine; nothing loaded)."""
    from cvs_evaluator import scorers

    if request.ray is None:
        return open_scorer(request, request.engine, request.precision, spec)
    return scorers.scorer_identity(
        spec, request.weights, request.engine, request.engines_root, request.precision,
        allow_failed_engine=request.allow_failed_engine,
    )  # fmt: skip


@contextmanager
def dispatch_for(
    request: RunRequest, scorer: RunScorer, echo: Callable[[str], None]
) -> Iterator[Any]:
    """`--ray`: the Ray workers scoring the run (`ray_run.RayDispatch`), stopped on leaving;
    None: the run scores in this process."""
    if request.ray is None:
        yield None
        return
    import os

    from cvs_evaluator.ray_run import (
        DIE_AFTER_FIRST_UNIT,
        DIE_ON_EVERY_UNIT,
        WorkerSpec,
        ray_dispatch,
        worker_environment,
    )

    spec = WorkerSpec(
        model=request.model, engine=request.engine, precision=request.precision,
        engines_root=request.engines_root.resolve(), weights=request.weights,
        budgets=request.budgets, batch_size=request.batch_size,
        share_weight_pages=request.share_weight_pages,
        allow_failed_engine=request.allow_failed_engine, verify=request.verify_engine,
        env=worker_environment(), die_marker=os.environ.get(DIE_AFTER_FIRST_UNIT),
        die_every_unit=bool(os.environ.get(DIE_ON_EVERY_UNIT)),
    )  # fmt: skip
    with ray_dispatch(request.ray, spec, scorer) as dispatch:
        echo(f"ray: {dispatch.describe()}")
        yield dispatch


def open_scorer(request: RunRequest, engine: str, precision: str, spec: Any) -> RunScorer:
    from cvs_evaluator import scorers

    if engine == "torch":
        return scorers.torch_scorer(spec, request.weights, request.batch_size)
    with _hashing_bar(request.progress) as progress:
        scorer = scorers.engine_scorer(
            spec, request.weights, engine, request.engines_root, precision,
            budgets=request.budgets, allow_failed_engine=request.allow_failed_engine,
            share_weight_pages=request.share_weight_pages, verify=request.verify_engine,
            verify_progress=progress,
        )  # fmt: skip
    if scorer.verification is not None and scorer.verification.files_hashed:
        print(f"engine: {scorer.verification.line()}", file=sys.stderr)
    return scorer


@contextmanager
def _hashing_bar(shown: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A byte progress bar for hashing the engine's files (shown once hashing starts)."""
    if not shown:
        yield None
        return
    from tqdm import tqdm

    bars: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="B", unit_scale=True, desc="verifying engine"))
        bars[0].total = total
        bars[0].n = done
        bars[0].refresh()

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()
