"""onnxruntime CPU sessions for an engine folder, behind the part interface.

One `InferenceSession` per part graph; all graphs of an engine point into one external weight
file. `OrtParts.open` checks the engine's manifest first (family, precision, checkpoint, file
sizes and mtimes, then every file's content: cvs_runtime.verification) and refuses a mismatch,
naming the field.

Session options that matter for memory and exactness: onnxruntime maps external weights from
the file, so two sessions (or two processes) over one engine can share those pages, but a
session that *prepacks* constant matrix operands copies them into private buffers, one private
copy of the weights per session. Prepacking is on for the parts in `prepacked_parts` (by default
the suffix part, which does almost all the work of a run): its packed GEMM gives every row the
same result whatever the batch size (measured: bit-identical logits for batch 1 to 16, where
the unpacked path moved them by up to 6.7e-6 on tiny-yi), and it is faster on small batches.
The prefix and vision parts run long sequences where packing on the fly costs little, so they
keep the weights as shared file pages (measured on smol: a 3,050-token prefix pass took 21.4 s
unpacked, 24.3 s prepacked). `share_weight_pages=True` turns prepacking off everywhere (one
weight copy shared by every process, at some speed).

Activations: each onnxruntime session keeps its own memory arena at its high-water mark, so the
prefix pass's arena (≈ 1.75 GB for a 3,050-token smol prefix) and the suffix batches' arena
added up (4.1 GB above the opened engine). CPU sessions therefore share one process-wide arena
(`shared_arena`, onnxruntime's environment allocator): 2.5 GB, the larger of the two plus the
weight pages, at the same speed. Without any arena the prefix pass took 3.3× longer. Memory is
read as PSS/USS from /proc/<pid>/smaps_rollup: RSS counts shared pages once per process. Numpy
and onnxruntime only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from cvs_runtime.engine_manifest import EngineManifest, checked_part_files
from cvs_runtime.parts import as_feed, check_feeds, check_part, select_outputs
from cvs_runtime.verification import VerificationReport

_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class OrtSessionConfig:
    """How the sessions of one engine are created."""

    share_weight_pages: bool = False
    """Disable weight prepacking in every part, so sessions and processes share the mapped
    weight pages (one copy of the weights however many processes; slower, and batch-size
    dependent in the last bits)."""
    prepacked_parts: tuple[str, ...] = ("suffix",)
    """Parts whose sessions prepack their weights (unless `share_weight_pages`)."""
    intra_op_threads: int = 0
    """Threads per operator (0: onnxruntime's default, one per core)."""
    optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """onnxruntime graph optimisation level."""
    shared_arena: bool = True
    """CPU sessions allocate activations from one process-wide arena instead of one each."""


_SHARED_ARENA: list[bool] = []
"""Whether this process registered the shared CPU arena (registering twice is an error)."""


def register_shared_cpu_arena() -> None:
    """Register onnxruntime's process-wide CPU arena allocator (once per process)."""
    if _SHARED_ARENA:
        return
    memory = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    # (max memory 0 = unlimited, then onnxruntime's defaults for the extend strategy, the
    # initial chunk and the largest chunk it will grow by)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))
    _SHARED_ARENA.append(True)


def session_options(
    config: OrtSessionConfig, part: str | None = None, *, cpu: bool = False
) -> ort.SessionOptions:
    """onnxruntime SessionOptions of `part` under `config` (no part: prepacking follows
    `share_weight_pages` alone); `cpu` sessions use the shared arena when configured."""
    options = ort.SessionOptions()
    if cpu and config.shared_arena:
        register_shared_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.graph_optimization_level = _OPTIMIZATION[config.optimization]
    options.intra_op_num_threads = config.intra_op_threads
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    prepack = not config.share_weight_pages and (part is None or part in config.prepacked_parts)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


class SessionParts:
    """onnxruntime sessions, one per part, behind the part interface (`PartRunner`); the CPU
    and GPU backends differ only in how they create the sessions."""

    def __init__(
        self, sessions: Mapping[str, ort.InferenceSession], manifest: EngineManifest | None
    ) -> None:
        self.manifest = manifest
        """The checked manifest, when opened from an engine folder."""
        self.verification: VerificationReport | None = None
        """What the content check did before the sessions were created (`open`); None when
        built from part files directly."""
        self._sessions = dict(sessions)
        self._input_types = {
            part: {i.name: _NUMPY_TYPES[i.type] for i in session.get_inputs()}
            for part, session in self._sessions.items()
        }

    @property
    def part_names(self) -> tuple[str, ...]:
        """The parts this engine holds."""
        return tuple(self._sessions)

    def input_names(self, part: str) -> tuple[str, ...]:
        """Input names of `part`, in graph order."""
        check_part(part, self.part_names)
        return tuple(i.name for i in self._sessions[part].get_inputs())

    def output_names(self, part: str) -> tuple[str, ...]:
        """Output names of `part`, in graph order."""
        check_part(part, self.part_names)
        return tuple(o.name for o in self._sessions[part].get_outputs())

    def providers(self, part: str) -> list[str]:
        """Execution providers the session of `part` really uses."""
        check_part(part, self.part_names)
        return list(self._sessions[part].get_providers())

    def run(
        self,
        part: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Run `part` on exactly its named inputs; return the named outputs (all by default)."""
        check_part(part, self.part_names)
        types = self._input_types[part]
        check_feeds(part, list(types), inputs)
        available = self.output_names(part)
        names = select_outputs(part, available, outputs)
        feeds = {name: as_feed(inputs[name], types[name]) for name in types}
        results = self._sessions[part].run(names, feeds)
        return dict(zip(names, results, strict=True))


class OrtParts(SessionParts):
    """The parts of one engine as onnxruntime CPU sessions (implements `PartRunner`)."""

    def __init__(
        self,
        part_files: Mapping[str, Path],
        config: OrtSessionConfig | None = None,
        manifest: EngineManifest | None = None,
    ) -> None:
        self.config = config or OrtSessionConfig()
        """The session options used."""
        options = {part: session_options(self.config, part, cpu=True) for part in part_files}

        def create(part: str) -> ort.InferenceSession:
            return ort.InferenceSession(
                str(part_files[part]),
                sess_options=options[part],
                providers=["CPUExecutionProvider"],
            )

        # Concurrently: onnxruntime releases the GIL while it loads and prepacks, so the
        # suffix's prepacking overlaps the decoder's load (a fifth of smol's cold start).
        with ThreadPoolExecutor(max_workers=len(part_files) or 1) as pool:
            sessions = dict(zip(part_files, pool.map(create, part_files), strict=True))
        super().__init__(sessions, manifest)

    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        family: str | None = None,
        precision: str | None = None,
        checkpoint_fingerprint: str | None = None,
        allow_failed_verdict: bool = False,
        config: OrtSessionConfig | None = None,
        verify: str = "cached",
    ) -> OrtParts:
        """Sessions for the engine in `folder`, after the load-time manifest check and the
        content check `verify` (`always`, `cached`, `off`; its report in `.verification`)."""
        manifest, files, report = checked_part_files(
            folder,
            family=family,
            precision=precision,
            checkpoint_fingerprint=checkpoint_fingerprint,
            allow_failed_verdict=allow_failed_verdict,
            verify=verify,
        )
        parts = cls(files, config, manifest)
        parts.verification = report
        return parts


@dataclass(frozen=True)
class ProcessMemory:
    """Resident memory of one process, from /proc/<pid>/smaps_rollup (bytes)."""

    rss: int
    """Resident set: counts every resident page, shared ones in full."""
    pss: int
    """Proportional set: shared pages divided among the processes mapping them."""
    uss: int
    """Unique set: pages no other process maps (private clean + private dirty)."""


def process_memory(pid: int | None = None) -> ProcessMemory:
    """RSS, PSS and USS of `pid` (default: this process). Linux only."""
    path = Path(f"/proc/{pid if pid is not None else os.getpid()}/smaps_rollup")
    fields: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return ProcessMemory(
        rss=fields["Rss"],
        pss=fields["Pss"],
        uss=fields["Private_Clean"] + fields["Private_Dirty"],
    )
