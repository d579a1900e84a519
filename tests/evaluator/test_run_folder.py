"""A run folder holds one run: mismatched rows, a second process, a damaged store and a folder
that cannot be written are each refused in one line that says what to do."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cvs_evaluator.results import ResultRow, ResultStore, StoreError
from cvs_evaluator.run_folder import (
    IDENTITY_FIELDS,
    RESULTS_SCHEMA,
    RunFolderError,
    RunIdentity,
    open_existing_run,
    open_run,
    read_results,
    repair_run,
    write_parquet_atomic,
)

IDENTITY = RunIdentity(
    model="smol",
    engine="ort",
    precision="fp32",
    checkpoint_fingerprint="ckpt-aaaa",
    engine_manifest_sha256="manifest-1111",
    template_version="tmpl-0001",
    scoring_variant="letters-v1",
)


def _row(
    item_id: str, identity: RunIdentity = IDENTITY, image: str = "", sha: str = ""
) -> ResultRow:
    return ResultRow(
        item_id=item_id,
        model=identity.model,
        engine=identity.engine,
        precision=identity.precision,
        template_version=identity.template_version,
        condition="image" if image else "text",
        country="DEU",
        question="Q1",
        section="S",
        image=image,
        group_key="g",
        option_codes=[1, 2],
        option_logprobs=[-1.0, -2.0],
        raw_mass=0.5,
        status="scored",
        reason="",
        distribution=[0.7, 0.3],
        topk_distribution=None,
        checkpoint_fingerprint=identity.checkpoint_fingerprint,
        engine_manifest_sha256=identity.engine_manifest_sha256,
        image_sha256=sha,
        scoring_variant=identity.scoring_variant,
    )


def _message(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, "a refusal is one line"
    assert isinstance(error.value, ValueError)  # the CLI prints ValueErrors as one line
    return message


def test_a_run_is_stored_identified_and_resumed(tmp_path: Path) -> None:
    run_path = tmp_path / "runs" / "x"
    with open_run(run_path, IDENTITY, fresh=False) as run:
        assert run.resume({}).done == frozenset()
        run.store.append([_row("a|Q1"), _row("a|Q2")])
    stored = json.loads((run_path / "run.json").read_text("utf-8"))
    assert stored["identity"] == dataclasses.asdict(IDENTITY)
    with open_run(run_path, IDENTITY, fresh=False) as run:
        assert run.resume({}).done == {"a|Q1", "a|Q2"}
        assert run.discarded_rows == 0
    with open_existing_run(run_path) as run:
        assert run.identity == IDENTITY
        assert run.results_path == run_path / "results.parquet"
        assert run.output("parity.json") == run_path / "parity.json"
        with pytest.raises(ValueError, match=re.escape("'notes.txt' is not a known report")):
            run.output("notes.txt")


@pytest.mark.parametrize("where", ["run.json", "rows"])
@pytest.mark.parametrize("field", IDENTITY_FIELDS)
def test_a_run_differing_in_any_identity_field_is_refused(
    tmp_path: Path, field: str, where: str
) -> None:
    run_path = tmp_path / "run"
    with open_run(run_path, IDENTITY, fresh=False) as run:
        run.store.append([_row("a|Q1"), _row("a|Q2")])
    if where == "rows":  # a store written before run folders had run.json
        (run_path / "run.json").unlink()
    old = getattr(IDENTITY, field)
    changed = dataclasses.replace(IDENTITY, **{field: old + "-changed"})
    with pytest.raises(RunFolderError) as error:
        open_run(run_path, changed, fresh=False)
    message = _message(error)
    if where == "run.json":
        assert message.startswith(f"{run_path} holds a run with {field} {old!r}, ")
    else:
        assert message.startswith(f"{run_path / 'store.jsonl'} line 1 (item 'a|Q1') was ")
        assert f"scored with {field} {old!r}, " in message
    assert f"this run has {old + '-changed'!r}" in message
    assert message.endswith("pass --fresh to discard the 2 stored row(s), or choose another --out")
    with open_run(run_path, changed, fresh=True) as run:  # the way out the message names
        assert run.discarded_rows == 2
        assert run.resume({}).done == frozenset()


def test_a_row_of_the_older_schema_is_refused_with_the_fresh_hint(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    run_path.mkdir()
    old = dataclasses.asdict(_row("a|Q1"))
    for name in ("checkpoint_fingerprint", "engine_manifest_sha256", "image_sha256"):
        del old[name]
    del old["scoring_variant"]
    old["schema"] = 1
    (run_path / "store.jsonl").write_text(json.dumps(old) + "\n", "utf-8")
    with pytest.raises(RunFolderError) as error:
        open_run(run_path, IDENTITY, fresh=False)
    message = _message(error)
    assert "line 1 (item 'a|Q1') was scored with checkpoint_fingerprint ''" in message
    assert "(written by an older cvs-eval, row schema 1)" in message
    assert "pass --fresh to discard the 1 stored row(s)" in message
    [(store, report)] = repair_run(run_path)  # repair does not crash on it either
    assert (store.name, report.kept, report.changed) == ("store.jsonl", 1, False)


def test_a_row_of_the_older_schema_with_equal_fields_is_still_refused(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    run_path.mkdir()
    row = {**dataclasses.asdict(_row("a|Q1")), "schema": 1}
    (run_path / "store.jsonl").write_text(json.dumps(row) + "\n", "utf-8")
    with pytest.raises(RunFolderError) as error:
        open_run(run_path, IDENTITY, fresh=False)
    assert "has row schema 1, this version writes 2: pass --fresh" in _message(error)


def test_fresh_deletes_only_what_cvs_eval_wrote(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    torch = dataclasses.replace(IDENTITY, engine="torch", engine_manifest_sha256="")
    with open_run(run_path, IDENTITY, fresh=False) as run:
        run.store.append([_row("a|Q1"), _row("a|Q2"), _row("a|Q3")])
        compare = run.compare(torch, fresh=False)
        compare.store.append([_row("a|Q1", torch)])
        for name in ("results.parquet", "alignment.html", "latency.json", "screening.csv"):
            run.output(name).write_text("old report", "utf-8")
    (run_path / "store.jsonl.damaged").write_text("junk\n", "utf-8")
    (run_path / ".results.parquet.abc123.tmp").write_text("left by a kill", "utf-8")
    (run_path / "notes.txt").write_text("mine", "utf-8")
    (run_path / "compare" / "mine.csv").write_text("mine too", "utf-8")

    changed = dataclasses.replace(IDENTITY, checkpoint_fingerprint="ckpt-bbbb")
    with open_run(run_path, changed, fresh=True) as run:
        assert run.discarded_rows == 3
        assert run.resume({}).done == frozenset()
        assert run.identity == changed

    left = sorted(str(p.relative_to(run_path)) for p in run_path.rglob("*") if p.is_file())
    assert left == [".lock", "compare/.lock", "compare/mine.csv", "notes.txt", "run.json"]
    stored = json.loads((run_path / "run.json").read_text("utf-8"))["identity"]
    assert stored["checkpoint_fingerprint"] == "ckpt-bbbb"


def test_the_compare_folder_is_a_run_folder_of_its_own(tmp_path: Path) -> None:
    torch = dataclasses.replace(IDENTITY, engine="torch", engine_manifest_sha256="")
    with open_run(tmp_path / "run", IDENTITY, fresh=False) as run:
        compare = run.compare(torch, fresh=False)
        compare.store.append([_row("a|Q1", torch)])
        assert compare.path == tmp_path / "run" / "compare"
    # closing the run closed (unlocked) its comparison folder
    with open_run(tmp_path / "run" / "compare", torch, fresh=False) as again:
        assert again.resume({}).done == {"a|Q1"}
    with pytest.raises(RunFolderError) as error:
        open_run(tmp_path / "run" / "compare", IDENTITY, fresh=False)
    assert "holds a run with engine 'torch', this run has 'ort'" in _message(error)


def test_rows_of_a_changed_image_are_rescored(tmp_path: Path) -> None:
    with open_run(tmp_path / "run", IDENTITY, fresh=False) as run:
        run.store.append(
            [
                _row("text|Q1"),
                _row("img1|Q1", image="img1", sha="h1"),
                _row("img2|Q1", image="img2", sha="h2"),
                _row("img2|Q2", image="img2", sha="h2"),
                _row("img3|Q1", image="img3", sha="h3"),
            ]
        )
        resume = run.resume({"img1": "h1", "img2": "h2-edited"})
        assert resume.done == {"text|Q1", "img1|Q1", "img3|Q1"}  # img3: not in this run, kept
        assert (resume.dropped, resume.changed_images) == (2, ("img2",))
        assert [row["item_id"] for row in run.store.rows()] == ["text|Q1", "img1|Q1", "img3|Q1"]
        run.store.append([_row("img2|Q1", image="img2", sha="h2-edited")])
        again = run.resume({"img1": "h1", "img2": "h2-edited"})
        assert (again.dropped, len(again.done)) == (0, 4)
        run.store.append([_row("img1|Q2", image="img1", sha="h1")])
        assert run.done_ids({"img1": "h1-edited"}) == {"text|Q1", "img2|Q1", "img3|Q1"}


def test_a_damaged_or_duplicated_store_is_refused_until_repaired(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    with open_run(run_path, IDENTITY, fresh=False) as run:
        run.store.append([_row("a|Q1"), _row("a|Q2"), _row("a|Q1")])  # as two writers left it
    with pytest.raises(StoreError) as error:
        open_run(run_path, IDENTITY, fresh=False)
    assert f"`cvs-eval repair {run_path}`" in _message(error)
    with (run_path / "store.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("garbage\n")
        handle.write(json.dumps(dataclasses.asdict(_row("a|Q3"))) + "\n")
    with pytest.raises(StoreError) as error:
        open_run(run_path, IDENTITY, fresh=False)
    assert f"{run_path / 'store.jsonl'} line 4 is not a JSON row" in _message(error)

    [(store, report)] = repair_run(run_path)
    assert store == run_path / "store.jsonl"
    assert (report.kept, report.duplicates_dropped, report.damaged_moved) == (3, 1, 1)
    with open_run(run_path, IDENTITY, fresh=False) as run:
        assert run.resume({}).done == {"a|Q1", "a|Q2", "a|Q3"}


def test_a_run_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("not a folder", "utf-8")
    with pytest.raises(RunFolderError) as error:
        open_run(target, IDENTITY, fresh=True)
    assert _message(error) == f"{target} is a file, not a run folder: choose another --out"
    with pytest.raises(RunFolderError) as error:
        open_run(target / "run", IDENTITY, fresh=False)
    assert _message(error) == f"cannot create run folder {target / 'run'}: {target} is a file"
    assert target.read_text("utf-8") == "not a folder"


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="runs as root, which ignores file permissions: a read-only folder stays writable",
)
def test_a_read_only_run_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(RunFolderError) as error:
            open_run(locked, IDENTITY, fresh=False)
        assert _message(error) == (
            f"run folder {locked} is not writable (permission denied): choose another --out"
        )
        with pytest.raises(RunFolderError) as error:
            open_run(locked / "a" / "run", IDENTITY, fresh=False)
        assert _message(error) == (
            f"cannot create run folder {locked / 'a' / 'run'}: {locked} is not writable "
            "(permission denied)"
        )
    finally:
        locked.chmod(0o755)


def test_a_second_open_in_this_process_is_refused_while_the_first_holds_it(
    tmp_path: Path,
) -> None:
    run_path = tmp_path / "run"
    with open_run(run_path, IDENTITY, fresh=False):
        with pytest.raises(RunFolderError) as error:
            open_run(run_path, IDENTITY, fresh=False)
        assert f"(pid {os.getpid()}, started " in _message(error)
    with open_run(run_path, IDENTITY, fresh=False):
        pass  # closing released it


def test_another_process_is_refused_and_a_sigkilled_holder_leaves_no_stale_lock(
    tmp_path: Path,
) -> None:
    run_path = tmp_path / "run"
    script = f"""
import sys, time
from pathlib import Path
sys.path[:0] = {sys.path!r}
from cvs_evaluator.run_folder import RunIdentity, open_run
identity = RunIdentity(*{dataclasses.astuple(IDENTITY)!r})
run = open_run(Path({str(run_path)!r}), identity, fresh=False)
print("locked", flush=True)
time.sleep(600)
"""
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunFolderError) as error:
            open_run(run_path, IDENTITY, fresh=False)
        message = _message(error)
        assert message.startswith(
            f"{run_path} is in use by another cvs-eval (pid {holder.pid}, started "
        )
        assert message.endswith("); wait for it or use another --out")
        with pytest.raises(RunFolderError, match="is in use by another cvs-eval"):
            repair_run(run_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run_path / ".lock").exists()  # the file stays; the kernel dropped the lock
    with open_run(run_path, IDENTITY, fresh=False) as run:
        assert run.resume({}).done == frozenset()


def test_open_existing_run_needs_a_run_json(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    ResultStore(tmp_path / "old" / "store.jsonl").append([_row("a|Q1")])
    with pytest.raises(RunFolderError) as error:
        open_existing_run(tmp_path / "old")
    assert "has no run.json" in _message(error)
    assert "--fresh" in str(error.value)
    with pytest.raises(RunFolderError, match="is not a run folder"):
        open_existing_run(tmp_path / "absent")


def test_a_damaged_run_json_is_refused(tmp_path: Path) -> None:
    with open_run(tmp_path / "run", IDENTITY, fresh=False):
        pass
    (tmp_path / "run" / "run.json").write_text("{not json", "utf-8")
    with pytest.raises(RunFolderError) as error:
        open_run(tmp_path / "run", IDENTITY, fresh=False)
    message = _message(error)
    assert message.startswith(f"{tmp_path / 'run' / 'run.json'} is damaged (JSONDecodeError")
    assert message.endswith("pass --fresh to discard the 0 stored row(s), or choose another --out")


# ---- results.parquet ------------------------------------------------------------------------


def _results(model_dist: list[object], similarity: list[float | None]) -> pd.DataFrame:
    count = len(model_dist)
    text = {name: [f"{name}{i}" for i in range(count)] for name in RESULTS_SCHEMA.names}
    return pd.DataFrame(
        {
            **{name: text[name] for name in RESULTS_SCHEMA.names if name not in _NON_TEXT},
            "option_codes": [[1, 2, 4]] * count,
            "option_logprobs": [[-1.0, -2.0, -3.0]] * count,
            "model_dist": model_dist,
            "human_dist": [[0.5, 0.25, 0.25]] * count,
            "option_mass": [0.9] * count,
            "similarity": similarity,
            "status": ["scored" if d is not None else "low_mass" for d in model_dist],
            "reason": ["" if d is not None else "mass 0.01 < 0.1" for d in model_dist],
        }
    )


_NON_TEXT = {
    "option_codes", "option_logprobs", "model_dist", "human_dist", "option_mass", "similarity",
    "status", "reason",
}  # fmt: skip


def test_results_parquet_keeps_a_null_model_dist_null(tmp_path: Path) -> None:
    frame = _results([[0.6, 0.3, 0.1], None, math.nan], [0.8, None, math.nan])
    frame["extra"] = ["x", "y", "z"]
    path = tmp_path / "results.parquet"
    write_parquet_atomic(frame, path)

    table = pq.read_table(path)
    assert table.schema.field("option_codes").type == pa.list_(pa.int64())
    assert table.schema.field("model_dist").type == pa.list_(pa.float64())
    assert table.column("model_dist").null_count == 2
    assert table.column("similarity").null_count == 2
    assert table.column("human_dist").null_count == 0
    assert table.column("extra").to_pylist() == ["x", "y", "z"]

    back = read_results(path)
    assert back["model_dist"][0] == [0.6, 0.3, 0.1]
    assert back["model_dist"][1] is None
    assert back["model_dist"][2] is None
    assert back["option_codes"][1] == [1, 2, 4]
    assert back["human_dist"][2] == [0.5, 0.25, 0.25]
    assert back["similarity"][0] == 0.8
    assert back["similarity"][1:].isna().all()
    assert list(back["item_id"]) == ["item_id0", "item_id1", "item_id2"]
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda f: f.assign(model_dist=[[], None]), "model_dist has 0 values for 3 options"),
        (lambda f: f.assign(human_dist=[[1.0], None]), "human_dist has 1 values for 3 options"),
        (lambda f: f.assign(item_id=["a", "a"]), "1 item id(s) appear twice"),
        (lambda f: f.drop(columns=["image_sha256"]), "lacks column(s): image_sha256"),
        (lambda f: f.assign(status=["scored", None]), "column status has missing values"),
        (lambda f: f.assign(model_dist=["0.5", None]), "model_dist holds '0.5', not a list"),
    ],
)
def test_a_bad_results_frame_is_refused_and_the_old_file_stays(
    tmp_path: Path, change: Callable[[pd.DataFrame], pd.DataFrame], error: str
) -> None:
    path = tmp_path / "results.parquet"
    good = _results([[0.6, 0.3, 0.1], None], [0.8, None])
    write_parquet_atomic(good, path)
    with pytest.raises(ValueError, match=re.escape(error)):
        write_parquet_atomic(change(good), path)
    assert read_results(path)["item_id"].tolist() == ["item_id0", "item_id1"]
    assert list(tmp_path.iterdir()) == [path]
