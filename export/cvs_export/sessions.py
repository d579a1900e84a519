"""Two processes over one engine: what weight prepacking costs in memory (`cvs-export sessions`).

onnxruntime prepacks weights into private memory; with prepacking off, two processes share the
weight file's pages. `measure_sessions` starts two worker processes per setting (each opens the
engine, times a decoder prefill and waits), reads their resident memory while both are loaded,
then lets them go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SessionRow:
    """One worker process of one setting."""

    share_weight_pages: bool
    """Prepacking off (shared pages) or on (private copies)."""
    index: int
    """Which of the two processes."""
    load_s: float
    """Seconds to open the engine."""
    run_s: float
    """Best of three decoder prefills, seconds."""
    rss: int
    """Resident bytes."""
    pss: int
    """Proportional set size (shared pages split between the processes), bytes."""
    uss: int
    """Unique set size (pages no other process holds), bytes."""


def measure_sessions(folder: Path, *, batch: int, tokens: int, threads: int) -> list[SessionRow]:
    """Two workers per setting (prepacking on, then off), measured while both are loaded."""
    from cvs_runtime.ort_backend import process_memory

    rows = []
    for share in (False, True):
        command = [
            sys.executable,
            "-m",
            "cvs_export.cli",
            "session-worker",
            str(folder),
            "--batch",
            str(batch),
            "--tokens",
            str(tokens),
            "--threads",
            str(threads),
        ] + (["--share"] if share else [])
        workers = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            reports = [json.loads(w.stdout.readline()) for w in workers if w.stdout]
            memories = [process_memory(w.pid) for w in workers]  # both alive and loaded
        finally:
            for worker in workers:
                if worker.stdin:
                    worker.stdin.close()
                worker.wait(timeout=60)
        for index, (report, memory) in enumerate(zip(reports, memories, strict=True)):
            rows.append(
                SessionRow(
                    share_weight_pages=share,
                    index=index,
                    load_s=report["load_s"],
                    run_s=report["run_s"],
                    rss=memory.rss,
                    pss=memory.pss,
                    uss=memory.uss,
                )
            )
    return rows


def time_decoder(
    folder: Path, *, batch: int, tokens: int, threads: int, share: bool
) -> dict[str, float]:
    """Open the engine and time a decoder prefill of random tokens: `load_s`, `run_s` (best of
    three after a warm-up)."""
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig

    started = time.perf_counter()
    parts = OrtParts.open(folder, config=OrtSessionConfig(share, intra_op_threads=threads))
    load = time.perf_counter() - started
    if parts.manifest is None:
        raise ValueError(f"{folder}: opened without a manifest")
    record = parts.manifest.parts["decoder"]
    vocab = int(record.outputs[0].shape[-1])
    cache = {t.name: t.shape for t in record.inputs if t.name.startswith("past.")}
    ids = np.random.default_rng(0).integers(0, vocab, (batch, tokens))
    feeds = {
        "inputs_embeds": parts.run("embedding", {"input_ids": ids})["inputs_embeds"],
        "position_ids": np.tile(np.arange(tokens), (batch, 1)),
        "attention_mask": np.ones((batch, tokens), dtype=np.int64),
        "logit_index": np.full((batch, 1), tokens - 1),
        **{
            name: np.zeros((batch, int(shape[1]), 0, int(shape[3])), dtype=np.float32)
            for name, shape in cache.items()
        },
    }
    parts.run("decoder", feeds)  # warm-up
    times = []
    for _ in range(3):
        began = time.perf_counter()
        parts.run("decoder", feeds)
        times.append(time.perf_counter() - began)
    return {"load_s": load, "run_s": min(times)}
