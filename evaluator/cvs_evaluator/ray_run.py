"""One run's scoring spread over Ray workers; the results still written by this process alone.

Ray actors, not Ray Data: a worker holds one engine session (or the PyTorch reference) with its
image and prefix caches for the whole run, and a work unit is a prefix group (one image under
one condition, or one country's persona): the unit's items share the cached prefix, so every
worker's caches keep working. Units go out largest first, two per worker at a time (the next one
travels while the current one is scored); each scored unit comes back to this process, which
checks it and appends it to the run's store exactly like a local run (`run_evaluation`), so
resume, reports and parity do not know Ray was used.

A worker that dies (its process killed, its node lost) loses only the units it held: they go to
another worker and a replacement worker is started in the dead one's place, at most `RETRIES`
times per unit; then the run stops with one line naming the unit. A unit is stored once, when it
first comes back, so nothing is scored twice in the results. An error inside a worker's scoring
(a budget too small, degenerate output) is not retried: it is raised here as it was there.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_evaluator.evaluate import PreparedUnits, UnitBatches
from cvs_evaluator.ray_cluster import RayRequestError, WorkerShape

if TYPE_CHECKING:
    from cvs_evaluator.prompts import PromptItem
    from cvs_evaluator.scorers import RunScorer
    from cvs_families.requests import ScoringRequest

RETRIES = 3
"""Times a unit is handed out again after the worker holding it died."""
IN_FLIGHT_PER_WORKER = 2
"""Units queued at each worker: the one it scores and the next, already sent."""
DIE_AFTER_FIRST_UNIT = "CVS_RAY_TEST_DIE_AFTER_FIRST_UNIT"
"""Test only: a file path; the first worker to create it kills its own process (SIGKILL) after
scoring its first unit, before returning it."""
DIE_ON_EVERY_UNIT = "CVS_RAY_TEST_DIE_ON_EVERY_UNIT"
"""Test only: set, every worker kills its own process after scoring any unit (the retries run
out)."""


class RayUnitFailed(RuntimeError):
    """A unit whose workers kept dying."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker opens: the scorer the CLI asked for, by name and path."""

    model: str
    engine: str
    precision: str
    engines_root: Path
    weights: Path | None = None
    budgets: Any = None
    batch_size: int = 8
    share_weight_pages: bool = False
    allow_failed_engine: bool = False
    verify: str = "cached"
    shipped: dict[str, tuple[Any, int]] | None = None
    """Engine files shipped through Ray's object store (relative path → (object ref, mtime in
    ns)); None: the workers read `engines_root` (a shared filesystem)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment the worker sets before opening anything (CVS_CACHE, CVS_DATA, …)."""
    die_marker: str | None = None
    """`DIE_AFTER_FIRST_UNIT`'s file, passed from the driver's environment (tests only)."""
    die_every_unit: bool = False
    """`DIE_ON_EVERY_UNIT`, passed from the driver's environment (tests only)."""


class ScoringWorker:
    """A Ray actor's body: one scorer held for the run, scoring whole units of requests."""

    def __init__(self, spec: WorkerSpec) -> None:
        os.environ.update(spec.env)
        self.spec = spec
        self.threads = _assigned_cpus()
        self.scorer = _open_scorer(spec, self.threads)
        self.units = 0
        self.seconds: list[float] = []

    def identity(self) -> dict[str, Any]:
        """What the driver checks against its own view, and what it reports."""
        import ray

        verification = self.scorer.verification
        return {
            "checkpoint_fingerprint": self.scorer.checkpoint_fingerprint,
            "engine_manifest_sha256": self.scorer.engine_manifest_sha256,
            "node": ray.get_runtime_context().get_node_id()[:8],
            "pid": os.getpid(),
            "threads": self.threads,
            "verification": None if verification is None else verification.line(),
        }

    def check_budgets(self, items: Sequence[PromptItem], sizes: dict[str, tuple[int, int]]) -> None:
        """`evaluate.check_budgets` against this worker's scheduler (engines only)."""
        from cvs_evaluator.evaluate import check_budgets
        from cvs_families.registry import get_family

        if self.scorer.scheduler is not None:
            spec = get_family(self.spec.model)
            check_budgets(items, self.scorer.tokenizer, spec, sizes, self.scorer.scheduler)

    def score(self, requests: Sequence[ScoringRequest]) -> list[tuple[list[int], list[Any]]]:
        """Every batch of one unit: (indices into `requests`, their scored items)."""
        assert self.scorer.stream is not None
        batches = []
        stream = iter(self.scorer.stream(requests))
        while True:  # each batch timed, as a local run times the reference's (`score`)
            started = time.perf_counter()
            batch = next(stream, None)
            if batch is None:
                break
            self.seconds.append(time.perf_counter() - started)
            batches.append((list(batch[0]), list(batch[1])))
        self.units += 1
        first = self.spec.die_marker and self.units == 1 and _claim(self.spec.die_marker)
        if first or self.spec.die_every_unit:
            os.kill(os.getpid(), signal.SIGKILL)
        return batches

    def report(self) -> dict[str, Any]:
        """This worker's stage timings and cache statistics (the latency report's)."""
        from cvs_evaluator.scorers import scheduler_report

        stages, caches = scheduler_report(self.scorer.scheduler)
        if self.scorer.scheduler is None:
            stages = {"score": list(self.seconds)}
        return {"stages": stages, "caches": caches}


def _assigned_cpus() -> int:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def _claim(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _open_scorer(spec: WorkerSpec, threads: int) -> RunScorer:
    from cvs_evaluator import scorers
    from cvs_families.registry import get_family

    family = get_family(spec.model)
    if spec.engine == "torch":
        import torch

        torch.set_num_threads(threads)
        return scorers.torch_scorer(family, spec.weights, spec.batch_size)
    root = spec.engines_root if spec.shipped is None else _unpack(spec)
    return scorers.engine_scorer(
        family, spec.weights, spec.engine, root, spec.precision, budgets=spec.budgets,
        allow_failed_engine=spec.allow_failed_engine, share_weight_pages=spec.share_weight_pages,
        verify=spec.verify, threads=threads,
    )  # fmt: skip


def _unpack(spec: WorkerSpec) -> Path:
    """The shipped engine files written under a fresh engines root on this worker's disk, each
    with its original modification time (the manifest's stat check compares it; the content is
    then hashed by this worker's verification, as for any file it has not checked before)."""
    import ray

    from cvs_runtime.engines import engine_folder

    root = Path(tempfile.mkdtemp(prefix="cvs-engine-"))
    folder = engine_folder(root, spec.engine, spec.model, spec.precision)
    for relative, (ref, mtime_ns) in (spec.shipped or {}).items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(ray.get(ref))
        os.utime(target, ns=(mtime_ns, mtime_ns))
    return root


def ship_engine(folder: Path) -> dict[str, tuple[Any, int]]:
    """Every file of the engine `folder` put in Ray's object store, one object per file, with
    its modification time (each file is held in the driver's memory while it is put: for
    engines that fit the object store; larger ones belong on a filesystem every worker sees)."""
    import ray

    return {
        path.relative_to(folder).as_posix(): (ray.put(path.read_bytes()), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@dataclass
class _Slot:
    """One worker place (a placement-group bundle) and the actor now in it."""

    name: str
    bundle: int
    actor: Any
    items: int = 0
    last: float = 0.0
    """When its last unit came back (`time.perf_counter`)."""
    in_flight: int = 0
    identity: dict[str, Any] = field(default_factory=dict)
    replacements: int = 0


@dataclass
class _Unit:
    items: list[PromptItem]
    requests: list[ScoringRequest]
    attempts: int = 0

    def describe(self) -> str:
        first = self.items[0]
        what = f"image {first.image_id}" if first.image_id else f"country {first.country}"
        return f"{first.condition} unit of {what} ({len(self.items)} items)"


class RayDispatch:
    """Hands a run's prefix groups to Ray workers and yields their batches as they come back
    (a `cvs_evaluator.evaluate.UnitDispatch`)."""

    def __init__(self, spec: WorkerSpec, shape: WorkerShape, group: Any, driver: RunScorer) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._group = group
        self._shape = shape
        self._spec = spec
        self._driver = driver
        self._remote = ray.remote(ScoringWorker)
        self._strategy = PlacementGroupSchedulingStrategy
        self._started = time.perf_counter()
        self.slots = [
            _Slot(f"w{index}", index, self._start(index)) for index in range(shape.workers)
        ]

    def _start(self, bundle: int) -> Any:
        return self._remote.options(
            num_cpus=self._shape.cpus,
            num_gpus=self._shape.gpus,
            max_restarts=0,
            scheduling_strategy=self._strategy(self._group, placement_group_bundle_index=bundle),
        ).remote(self._spec)

    def identities(self) -> list[dict[str, Any]]:
        """Each worker's identity, once it has opened its scorer; a worker that could not is
        one line naming it and why."""
        import ray
        from ray.exceptions import RayActorError

        for slot in self.slots:
            try:
                slot.identity = ray.get(slot.actor.identity.remote())
            except RayActorError as error:
                raise RayRequestError(
                    f"--ray: worker {slot.name} could not open the scorer: {_last_line(error)}"
                ) from None
        return [{"worker": slot.name, **slot.identity} for slot in self.slots]

    def describe(self) -> str:
        """The workers in one line: name, node, process and threads."""
        shown = ", ".join(
            f"{slot.name} (node {slot.identity.get('node')}, pid {slot.identity.get('pid')}, "
            f"{slot.identity.get('threads')} thread(s))"
            for slot in self.slots
        )
        return f"{len(self.slots)} worker(s): {shown}"

    def check_budgets(self, items: Sequence[PromptItem], sizes: dict[str, tuple[int, int]]) -> None:
        """Every group against the engine's budgets on one worker, before any scoring."""
        import ray

        _get(ray, self.slots[0].actor.check_budgets.remote(list(items), dict(sizes)))

    def split(self, items: Sequence[PromptItem]) -> list[list[PromptItem]]:
        """Prefix groups, largest first (ties in run order)."""
        groups: dict[str, list[PromptItem]] = {}
        for item in items:
            groups.setdefault(item.group_key, []).append(item)
        return sorted(groups.values(), key=len, reverse=True)

    def __call__(self, units: PreparedUnits) -> UnitBatches:
        import ray
        from ray.exceptions import RayTaskError

        source = iter(units)
        retry: deque[_Unit] = deque()
        in_flight: dict[Any, tuple[_Slot, Any, _Unit]] = {}
        self._started = time.perf_counter()

        def next_unit() -> _Unit | None:
            if retry:
                return retry.popleft()
            pulled = next(source, None)
            return None if pulled is None else _Unit(*pulled)

        while True:
            for depth in range(1, IN_FLIGHT_PER_WORKER + 1):  # every worker one, then a second
                for slot in self.slots:
                    if slot.in_flight >= depth:
                        continue
                    unit = next_unit()
                    if unit is None:
                        break
                    in_flight[slot.actor.score.remote(unit.requests)] = (slot, slot.actor, unit)
                    slot.in_flight += 1
            if not in_flight:
                return
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            slot, actor, unit = in_flight.pop(ref)
            slot.in_flight -= 1
            try:
                batches = ray.get(ref)
            except RayTaskError as error:  # the scorer's own error: the same anywhere
                raise _cause(error) from None
            except _worker_lost() as error:
                self._lost(slot, actor, unit, error, retry)
                continue
            slot.last = time.perf_counter()
            slot.items += len(unit.items)
            for indices, scored in batches:
                yield unit.items, indices, scored

    def _lost(self, slot: _Slot, actor: Any, unit: _Unit, error: Exception, retry: Any) -> None:
        """The worker holding `unit` died: hand the unit out again, start a replacement."""
        unit.attempts += 1
        if unit.attempts > RETRIES:
            raise RayUnitFailed(
                f"the {unit.describe()} was lost with its worker {RETRIES + 1} times; "
                f"last: {_last_line(error)}"
            )
        retry.append(unit)
        if slot.actor is actor:  # the first of its lost units to come back: replace it once
            import ray

            slot.replacements += 1
            print(
                f"ray: worker {slot.name} died ({type(error).__name__}); its units go to the "
                "others and a new worker takes its place",
                file=sys.stderr,
            )
            slot.actor = self._start(slot.bundle)
            try:
                slot.identity = _get(ray, slot.actor.identity.remote())
            except _worker_lost() as failed:
                raise RayRequestError(
                    f"--ray: worker {slot.name} died and its replacement could not start: "
                    f"{_last_line(failed)}"
                ) from None
            check_identity({"worker": slot.name, **slot.identity}, self._driver)

    def status(self) -> str:
        parts = []
        for slot in self.slots:
            rate = self._rate(slot)
            parts.append(f"{slot.name} {slot.items}" + (f" {rate:.1f}/s" if rate else ""))
        return " · ".join(parts)

    def _rate(self, slot: _Slot) -> float | None:
        """Items per second of one worker place, from the first hand-out to its last result."""
        span = slot.last - self._started
        return slot.items / span if slot.items and span > 0 else None

    def worker_reports(self) -> list[dict[str, Any]]:
        """Each live worker's stage timings and cache statistics, and every worker place's
        figures (the latency report's `workers`); a dead or stuck worker's timings are lost."""
        import ray

        reports = []
        for slot in self.slots:
            try:
                timings = ray.get(slot.actor.report.remote(), timeout=30)
            except Exception:  # lost with the worker, not the run
                timings = {"stages": {}, "caches": {}}
            reports.append({
                **timings, "worker": slot.name, **slot.identity, "items": slot.items,
                "items_per_second": self._rate(slot),
                "replacements": slot.replacements,
            })  # fmt: skip
        return reports

    def stop(self) -> None:
        """Stop every worker (the run ended, failed or was interrupted)."""
        import ray

        for slot in self.slots:
            ray.kill(slot.actor)


def _worker_lost() -> tuple[type[Exception], ...]:
    """Ray's errors for a unit lost with its worker (process killed or crashed, out of memory,
    node gone): the unit is handed out again. Anything else is not."""
    from ray import exceptions

    return (
        exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.ObjectLostError,
        exceptions.OutOfMemoryError, exceptions.NodeDiedError,
    )  # fmt: skip


def _get(ray: Any, ref: Any) -> Any:
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as error:
        raise _cause(error) from None


def _last_line(error: Exception) -> str:
    """The message a worker's error ends with (Ray prefixes the remote traceback)."""
    lines = [line.strip() for line in str(_cause(error)).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _cause(error: Exception) -> Exception:
    """The exception a worker raised, unwrapped from Ray's."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error


@dataclass(frozen=True)
class RaySettings:
    """`--ray` and its flags."""

    address: str
    workers: int | None = None
    cpus_per_worker: int | None = None
    gpus_per_worker: float = 0.0
    ship_engine: bool = False


@contextmanager
def ray_dispatch(
    settings: RaySettings, spec: WorkerSpec, driver: RunScorer
) -> Iterator[RayDispatch]:
    """Workers started on the cluster (`--ray`), checked to score what `driver` (this process's
    view of the scorer) describes; stopped on leaving, whatever happened; a cluster this process
    started is stopped with them."""
    from cvs_evaluator.ray_cluster import (
        connect,
        disconnect,
        place_workers,
        remove_workers_group,
        worker_shape,
    )

    connection = connect(settings.address)  # one line saying what to install, without Ray
    import ray

    dispatch: RayDispatch | None = None
    group = None
    try:
        shape = worker_shape(settings.workers, settings.cpus_per_worker, settings.gpus_per_worker)
        group = place_workers(shape)
        if settings.ship_engine and driver.manifest_path is not None:
            spec = replace(spec, shipped=ship_engine(driver.manifest_path.parent))
        dispatch = RayDispatch(spec, shape, group, driver)
        for identity in dispatch.identities():
            check_identity(identity, driver)
        yield dispatch
    finally:
        if dispatch is not None:
            dispatch.stop()
        if group is not None:
            remove_workers_group(group)
        if ray.is_initialized():
            disconnect(connection)


def check_identity(identity: dict[str, Any], driver: RunScorer) -> None:
    """Refuse a worker whose scorer is not the one the driver's rows will name."""
    for key in ("checkpoint_fingerprint", "engine_manifest_sha256"):
        if identity[key] != getattr(driver, key):
            raise RayRequestError(
                f"--ray: worker {identity['worker']} (node {identity['node']}) opened a scorer "
                f"whose {key} is {identity[key][:12]}…, not this run's "
                f"{getattr(driver, key)[:12]}…: every node must see the same engine folder "
                "(or pass --ray-ship-engine)"
            )


def worker_environment() -> dict[str, str]:
    """The variables a worker needs from this process: where data, cache and offline mode are,
    and the test-only worker kill switch."""
    names = ("CVS_DATA", "CVS_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")
    return {name: os.environ[name] for name in names if name in os.environ}
