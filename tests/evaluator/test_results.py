"""The result store survives a killed writer and resumes without loss or duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cvs_evaluator.results import ResultRow, ResultStore, model_long


def _row(item_id: str, status: str = "scored", dist: list[float] | None = None) -> ResultRow:
    dist = [0.25, 0.75] if dist is None and status == "scored" else dist
    return ResultRow(
        item_id=item_id,
        model="tiny-yi",
        engine="torch",
        precision="fp32",
        template_version="v",
        condition="text",
        country="DEU",
        question=item_id.split("|")[-1],
        section="S",
        image="",
        group_key="g",
        option_codes=[1, 2],
        option_logprobs=[-1.5, -0.4],
        raw_mass=0.9,
        status=status,
        reason="" if status == "scored" else "low",
        distribution=dist,
        topk_distribution=dist,
    )


def test_appended_rows_read_back_in_order(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.jsonl")
    store.append([_row("a|Q1"), _row("a|Q2")])
    store.append([_row("a|Q3")])
    assert [row["item_id"] for row in store.rows()] == ["a|Q1", "a|Q2", "a|Q3"]
    assert store.done_ids() == {"a|Q1", "a|Q2", "a|Q3"}


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.append([_row("a|Q1")])
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"item_id": "a|Q2", "mod')  # a writer killed mid-line
    assert store.done_ids() == {"a|Q1"}
    store.append([_row("a|Q2")])
    assert [row["item_id"] for row in store.rows()] == ["a|Q1", "a|Q2"]


def test_a_sigkilled_writer_loses_nothing_it_returned_from(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    script = f"""
import sys, time
from pathlib import Path
sys.path[:0] = {sys.path!r}
from tests_row import make
from cvs_evaluator.results import ResultStore
store = ResultStore(Path({str(path)!r}))
for i in range(100000):
    store.append([make(f"a|Q{{i}}")])
    print(i, flush=True)
"""
    helper = tmp_path / "tests_row.py"
    helper.write_text(
        "from cvs_evaluator.results import ResultRow\n"
        "def make(i):\n"
        "    return ResultRow(i, 'm', 'torch', 'fp32', 'v', 'text', 'DEU', 'Q1', 'S', '', 'g',"
        " [1, 2], [-1.0, -2.0], 0.5, 'scored', '', [0.7, 0.3], None)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert process.stdout is not None
    acknowledged = -1
    deadline = time.monotonic() + 60
    while acknowledged < 50 and time.monotonic() < deadline:
        acknowledged = int(process.stdout.readline())
    process.send_signal(signal.SIGKILL)
    process.wait()
    ids = [row["item_id"] for row in ResultStore(path).rows()]
    assert len(ids) == len(set(ids)), "duplicates after a kill"
    assert {f"a|Q{i}" for i in range(acknowledged + 1)} <= set(ids)


def test_model_long_keeps_scored_items_and_explodes_options(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.jsonl")
    store.append([_row("a|Q1"), _row("a|Q2", status="low_mass"), _row("a|Q3", dist=[0.5, 0.5])])
    table = model_long(store.frame())
    expected = pd.DataFrame(
        {
            "model": ["tiny-yi"] * 4,
            "condition": ["text"] * 4,
            "country": ["DEU"] * 4,
            "question": ["Q1", "Q1", "Q3", "Q3"],
            "image": [""] * 4,
            "option": [1, 2, 1, 2],
            "prob": [0.25, 0.75, 0.5, 0.5],
        }
    )
    pd.testing.assert_frame_equal(table, expected)


def test_model_long_rejects_an_unknown_variant(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.jsonl")
    store.append([_row("a|Q1")])
    with pytest.raises(KeyError):
        model_long(store.frame(), variant="nonsense")
