"""A run folder survives SIGKILL at any moment, refuses a second writer, and never mixes runs.

Real `cvs-eval` subprocesses on tiny-yi (the PyTorch reference, batch size 1 so that every item
is its own write) are killed at several points; the rerun's `results.parquet` must equal an
uninterrupted run's, value for value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cvs_evaluator.cli_eval import main
from cvs_evaluator.run_folder import read_results

pytestmark = pytest.mark.slow

ARGS = [
    "--model", "tiny-yi", "--country", "DEU", "--country", "JPN", "--per-section", "2",
    "--batch-size", "1", "--no-progress", "--compare-to", "none",
]  # fmt: skip


def _start(out: Path) -> subprocess.Popen[bytes]:
    code = "import sys; from cvs_evaluator.cli_eval import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, *ARGS, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_when(process: subprocess.Popen[bytes], ready: object, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s  # a guard against a hung child, not a speed check
    while not ready() and process.poll() is None:  # type: ignore[operator]
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("whole") / "run"
    result = CliRunner().invoke(main, [*ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return read_results(out / "results.parquet")


@pytest.mark.parametrize("kill_at", ["first row", "some rows", "reports"])
def test_sigkill_then_rerun_gives_the_uninterrupted_results(
    kill_at: str, uninterrupted: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    store = out / "store.jsonl"
    process = _start(out)
    if kill_at == "first row":
        _kill_when(process, lambda: _lines(store) >= 1)
    elif kill_at == "some rows":
        _kill_when(process, lambda: _lines(store) >= 10)
    else:
        _kill_when(process, lambda: (out / "alignment.csv").exists())
    assert process.returncode == -signal.SIGKILL
    if kill_at != "reports":
        assert not (out / "results.parquet").exists()  # killed mid-scoring, not after
    rerun = CliRunner().invoke(main, [*ARGS, "--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    resumed = read_results(out / "results.parquet")
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)
    assert resumed["item_id"].is_unique and len(resumed) == len(uninterrupted) > 20


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from pathlib import Path; "
            "from cvs_evaluator.run_folder import RunIdentity, open_run; "
            "run = open_run(Path(sys.argv[1]), RunIdentity('tiny-yi', 'torch', 'fp32', 'c', '', "
            "'t', 'v'), fresh=False); print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        result = CliRunner().invoke(main, [*ARGS, "--out", str(out)])
        assert result.exit_code == 1
        assert "is in use by another cvs-eval" in result.output and "Traceback" not in result.output
        assert not (out / "store.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the lock with the process: the folder is usable (its run.json is the
    # holder's identity, so the mismatch is what is refused now, naming the field).
    result = CliRunner().invoke(main, [*ARGS, "--out", str(out)])
    assert result.exit_code == 1
    assert "checkpoint_fingerprint" in result.output and "--fresh" in result.output


def test_a_changed_checkpoint_is_refused_then_rescored_with_fresh(tmp_path: Path) -> None:
    """The reproduced bug: `--weights` at a changed checkpoint into the same folder reused every
    old row. Now the fingerprint differs and the run is refused, naming the field."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from cvs_families.checkpoint import ensure_checkpoint
    from cvs_families.registry import get_family

    changed = tmp_path / "changed"
    shutil.copytree(ensure_checkpoint(get_family("tiny-yi")), changed)
    weights = next(changed.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(n for n, t in tensors.items() if t.is_floating_point() and "embed" in n)
    tensors[name] = tensors[name] + torch.full_like(tensors[name], 0.25)
    save_file(tensors, weights, metadata={"format": "pt"})

    out = tmp_path / "run"
    args = [*ARGS, "--question", "Q57", "--out", str(out)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    refused = CliRunner().invoke(main, [*args, "--weights", str(changed)])
    assert refused.exit_code == 1
    assert "checkpoint_fingerprint" in refused.output and "--fresh" in refused.output
    again = CliRunner().invoke(main, [*args, "--weights", str(changed), "--fresh"])
    assert again.exit_code == 0, again.output
    before = read_results(out / "results.parquet")
    assert (before["checkpoint_fingerprint"] != "").all()


def test_screening_keeps_the_images_whose_country_is_in_the_top_k(tmp_path: Path) -> None:
    """`--screen K` ranks every image's candidate countries (the PyTorch reference scores the
    names), scores only the kept images, and the outcome is in the run folder and the report."""
    out = tmp_path / "run"
    args = [
        "--model", "tiny-yi", "--country", "DEU", "--country", "JPN", "--country", "BRA",
        "--question", "Q57", "--condition", "image", "--include-uninformative-images",
        "--screen", "2", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    screening = pd.read_csv(out / "screening.csv")
    assert set(screening["country"]) == {"DEU", "JPN", "BRA"}
    assert screening["kept"].tolist() == (screening["rank"] <= 2).tolist()  # k = 2
    results = read_results(out / "results.parquet")
    kept = set(screening.loc[screening["kept"], "image_id"])
    assert set(results["image"]) == kept  # one question: one item per kept image
    assert f"kept {len(kept)} of 3 images" in result.output
    assert "Image screening: kept and dropped images" in (out / "alignment.html").read_text()
