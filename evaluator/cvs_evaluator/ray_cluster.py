"""The Ray cluster a `--ray` run uses: a running one, or a private one on loopback.

`connect("auto")` joins the cluster named by `RAY_ADDRESS` or started on this machine by
`ray start` (never another command's private cluster); when none runs it starts one inside this
process, bound to 127.0.0.1 with no dashboard and usage statistics off, so a local run opens no
port beyond the machine, and checks that it is bound there. `place_workers` reserves every
worker's CPUs and GPUs at once (a Ray placement group) and fails within `PLACEMENT_TIMEOUT_S`
with one line when the cluster cannot give them, instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvs_runtime.errors import require

LOOPBACK = "127.0.0.1"
PLACEMENT_TIMEOUT_S = 30.0
"""How long Ray may take to find room for every worker before the run stops."""
_LOCAL_CLUSTER_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch that makes a node take the loopback address as its own (read by every Ray
process at import: the cluster's processes inherit it from this one)."""


class RayRequestError(ValueError):
    """What was asked of the cluster cannot be had (one line naming the flag)."""


@dataclass(frozen=True)
class WorkerShape:
    """How many workers, and what each asks Ray for."""

    workers: int
    cpus: int
    """CPUs per worker: its threads (onnxruntime's per operator, torch's)."""
    gpus: float


@dataclass(frozen=True)
class Connection:
    """The cluster this run joined."""

    started_here: bool
    """Whether this process started it (and stops it when the run ends)."""
    address: str


def connect(address: str) -> Connection:
    """Join the cluster at `address`, or with `auto` the running one, else start one here on
    loopback. Reuses a connection this process already holds."""
    require("ray", extra="ray", purpose="--ray")
    import ray

    if ray.is_initialized():
        return Connection(False, ray.get_runtime_context().gcs_address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address != "auto":
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as error:
            raise RayRequestError(f"--ray {address}: no Ray cluster there ({error})") from None
        return Connection(False, address)
    running = _started_cluster()
    if running is not None:
        try:
            ray.init(address=running, **quiet)
            return Connection(False, running)
        except ConnectionError:  # `ray start`'s record outlived its cluster
            pass
    return _start_on_loopback(quiet)


def _started_cluster() -> str | None:
    """The address of the cluster `auto` joins: `RAY_ADDRESS`, else the one `ray start` recorded
    on this machine. Not Ray's own `auto`, which also finds any running GCS process: another
    command's private cluster, which stops when that command ends."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        from ray._common.utils import get_ray_address_file

        record = Path(get_ray_address_file(None))
    except ImportError:  # another Ray layout: `ray start`'s default place
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    text = record.read_text(encoding="utf-8").strip() if record.is_file() else ""
    return text or None


def _start_on_loopback(quiet: dict[str, Any]) -> Connection:
    import ray
    from ray._private import ray_constants

    os.environ[_LOCAL_CLUSTER_ONLY] = "0"  # the cluster's processes: loopback is their address
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process read the switch at import
    ray.init(
        _node_ip_address=LOOPBACK,
        include_dashboard=False,
        **quiet,
    )
    addresses = sorted({node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]})
    if addresses != [LOOPBACK]:
        disconnect(Connection(True, ""))
        raise RuntimeError(
            f"the local Ray cluster bound to {', '.join(addresses)}, not {LOOPBACK}: this Ray "
            "version ignores the loopback setting; start a cluster yourself (`ray start --head "
            "--node-ip-address 127.0.0.1`) and pass --ray auto"
        )
    return Connection(True, ray.get_runtime_context().gcs_address)


def disconnect(connection: Connection) -> None:
    """Leave the cluster; one this process started is stopped with it."""
    import ray

    if connection.started_here:
        ray.shutdown()
        os.environ.pop(_LOCAL_CLUSTER_ONLY, None)
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = True


def worker_shape(workers: int | None, cpus: int | None, gpus: float) -> WorkerShape:
    """The workers asked for, the unsaid filled in from the cluster: with GPUs, one worker per
    `gpus` of them and 1 CPU each; without, one worker per node and each node's CPUs (the
    fewest of any node) per worker, or the cluster's CPUs shared among `workers`."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    total = ray.cluster_resources()
    if gpus > 0:
        count = workers or max(1, int(total.get("GPU", 0) // gpus))
        return WorkerShape(count, cpus or 1, gpus)
    if workers is None:
        return WorkerShape(len(nodes), cpus or int(min(n.get("CPU", 1) for n in nodes)), 0)
    return WorkerShape(workers, cpus or max(1, int(total.get("CPU", 1) // workers)), 0)


def place_workers(shape: WorkerShape, timeout: float = PLACEMENT_TIMEOUT_S) -> Any:
    """A placement group holding one bundle (CPUs, GPUs) per worker, ready; `RayRequestError`
    at once when no node could ever hold one worker, or after `timeout` seconds when the cluster
    cannot hold them all."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group

    bundle = {"CPU": float(shape.cpus), **({"GPU": float(shape.gpus)} if shape.gpus else {})}
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    asked = _describe(shape)
    if not any(all(n.get(k, 0) >= v for k, v in bundle.items()) for n in nodes):
        raise RayRequestError(
            f"--ray: no node of the cluster has {_bundle_text(bundle)} for one worker "
            f"({_cluster_text()}); ask for fewer --cpus-per-worker / --gpus-per-worker"
        )
    group = placement_group([bundle] * shape.workers, strategy="SPREAD")
    try:
        ray.get(group.ready(), timeout=timeout)
    except GetTimeoutError:
        remove_workers_group(group)
        raise RayRequestError(
            f"--ray: the cluster could not hold {asked} within {timeout:.0f} s "
            f"({_cluster_text()}); ask for fewer --workers"
        ) from None
    return group


def remove_workers_group(group: Any, limit_s: float = 10.0) -> None:
    """Remove the workers' placement group and wait (a few seconds at most) until Ray has, so
    the run ends with the cluster's CPUs and GPUs as it found them."""
    from ray.util.placement_group import placement_group_table, remove_placement_group

    remove_placement_group(group)
    deadline = time.monotonic() + limit_s
    while placement_group_table(group).get("state") != "REMOVED" and time.monotonic() < deadline:
        time.sleep(0.05)


def _describe(shape: WorkerShape) -> str:
    gpus = f" and {shape.gpus:g} GPU(s)" if shape.gpus else ""
    return f"{shape.workers} worker(s) of {shape.cpus} CPU(s){gpus}"


def _bundle_text(bundle: dict[str, float]) -> str:
    return " and ".join(f"{value:g} {key}(s)" for key, value in bundle.items())


def _cluster_text() -> str:
    import ray

    total = ray.cluster_resources()
    free = ray.available_resources()
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    return (
        f"{nodes} node(s), {total.get('CPU', 0):g} CPU(s) ({free.get('CPU', 0):g} free), "
        f"{total.get('GPU', 0):g} GPU(s) ({free.get('GPU', 0):g} free)"
    )
