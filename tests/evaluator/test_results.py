"""The result store survives a killed writer and resumes without loss or duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from cvs_evaluator.durable import durable_path
from cvs_evaluator.results import (
    ResultRow,
    ResultStore,
    StoreError,
    model_long,
    repair_store,
)


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
        checkpoint_fingerprint="fp",
        engine_manifest_sha256="",
        image_sha256="",
        scoring_variant="letters-v1",
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
        " [1, 2], [-1.0, -2.0], 0.5, 'scored', '', [0.7, 0.3], None, 'fp', '', '', 'l1')\n"
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


# ---- damaged stores: one line naming the file, the line and what to do ---------------------


def _line(row: ResultRow) -> str:
    return json.dumps(asdict(row), separators=(",", ":")) + "\n"


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ('{"item_id": "a|Q2", "model" "x"}\n', "Expecting ':' delimiter at column"),
        ("\n", "Expecting value at column 1"),
        ("[1, 2]\n", "a JSON list, not an object"),
        ('{"model": "x"}\n', "no item_id"),
        ('{"item_id": "\xff"}\n', "not UTF-8"),
    ],
)
def test_a_damaged_middle_line_names_the_file_the_line_and_the_repair(
    tmp_path: Path, damage: str, why: str
) -> None:
    path = tmp_path / "run" / "store.jsonl"
    path.parent.mkdir()
    raw = damage.encode("latin-1") if "\xff" in damage else damage.encode()
    path.write_bytes(_line(_row("a|Q1")).encode() + raw + _line(_row("a|Q3")).encode())
    store = ResultStore(path)
    for read in (store.done_ids, store.frame, lambda: list(store.rows())):
        with pytest.raises(StoreError) as error:
            read()
        message = _one_line(error)
        assert message.startswith(f"{path} line 2 is not a JSON row (")
        assert why in message
        assert f"run `cvs-eval repair {path.parent}`" in message
        assert "store.jsonl.damaged" in message
        assert "--fresh" in message
    assert isinstance(error.value, ValueError)  # the CLI prints a ValueError as one line


def test_duplicated_item_ids_are_refused_with_the_repair_command(tmp_path: Path) -> None:
    path = tmp_path / "run" / "store.jsonl"
    store = ResultStore(path)
    store.append([_row("a|Q1"), _row("a|Q2"), _row("a|Q1"), _row("a|Q2"), _row("a|Q2")])
    for read in (store.done_ids, store.frame):
        with pytest.raises(StoreError) as error:
            read()
        message = _one_line(error)
        assert message.startswith(f"{path} holds 2 item id(s) more than once (3 extra row(s)")
        assert "e.g. 'a|Q1'" in message
        assert f"`cvs-eval repair {path.parent}`" in message
        assert "--fresh" in message


def test_repair_keeps_first_rows_moves_damage_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "store.jsonl"
    first_a, first_b = _line(_row("a|Q1")), _line(_row("a|Q2"))
    conflicting_b = _line(_row("a|Q2", dist=[0.9, 0.1]))
    damaged = '{"item_id": "a|Q9", "mo\n'
    torn = '{"item_id": "a|Q4", "model": "tin'
    path.write_text(first_a + first_b + damaged + first_a + conflicting_b + torn, "utf-8")

    report = repair_store(path)

    assert (report.kept, report.duplicates_dropped) == (2, 2)
    assert (report.conflicting, report.damaged_moved) == (1, 2)
    assert path.read_text("utf-8") == first_a + first_b
    damaged_file = tmp_path / "store.jsonl.damaged"
    assert damaged_file.read_text("utf-8") == damaged + torn + "\n"
    assert ResultStore(path).done_ids() == {"a|Q1", "a|Q2"}
    assert "kept 2 rows, dropped 2 duplicate(s) (1 with different contents" in report.summary(path)
    assert list(tmp_path.glob(".*.tmp")) == []

    again = repair_store(path)
    assert (again.kept, again.duplicates_dropped, again.damaged_moved) == (2, 0, 0)
    assert not again.changed
    assert path.read_text("utf-8") == first_a + first_b
    assert damaged_file.read_text("utf-8") == damaged + torn + "\n"
    assert again.summary(path) == f"{path}: nothing to repair (2 rows)"


def test_repair_keeps_rows_of_an_older_schema_and_a_missing_store_is_empty(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.jsonl"
    old = asdict(_row("a|Q1"))
    for key in ("checkpoint_fingerprint", "engine_manifest_sha256", "image_sha256"):
        del old[key]
    del old["scoring_variant"]
    old["schema"] = 1
    text = json.dumps(old) + "\n"
    path.write_text(text + text, "utf-8")
    report = repair_store(path)
    assert (report.kept, report.duplicates_dropped, report.conflicting) == (1, 1, 0)
    assert [row["schema"] for row in ResultStore(path).rows()] == [1]
    assert not repair_store(tmp_path / "absent.jsonl").changed


def test_durable_path_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old", "utf-8")
    with pytest.raises(RuntimeError), durable_path(path) as temporary:
        temporary.write_text("half", "utf-8")
        raise RuntimeError("writer failed")
    assert path.read_text("utf-8") == "old"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["out.txt"]
    with durable_path(path) as temporary:
        temporary.write_text("new", "utf-8")
    assert path.read_text("utf-8") == "new"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
