"""Scoring from an engine folder alone: no torch, no transformers, no checkpoint.

The edge test runs `cvs_evaluator.cli_eval:main` in a subprocess whose import system refuses
torch, transformers and onnx (a meta-path finder that raises ModuleNotFoundError, as for a
library that is not installed) and whose $CVS_CACHE is an empty folder (no checkpoint to read),
and compares its rows with the normal path's. The bad engine folders of the issue are each
refused before any scoring, with one line naming the file or field.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cvs_evaluator.cli_eval import main
from cvs_evaluator.results import ResultStore
from tests.export.manifest_tools import reseal

BLOCKER = textwrap.dedent(
    """
    import json, sys

    BLOCKED = set(json.loads(sys.argv[1]))

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    from cvs_evaluator.cli_eval import main

    try:
        main(sys.argv[2:], prog_name="cvs-eval")
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("LOADED " + json.dumps(loaded))
    """
)
EDGE_LESS = ["torch", "transformers", "onnx", "onnxscript", "safetensors"]
"""What an edge install lacks."""


def run_blocked(
    blocked: list[str], args: list[str], cache: Path
) -> subprocess.CompletedProcess[str]:
    """`cvs-eval ARGS` in a fresh interpreter without `blocked` and with $CVS_CACHE=`cache`."""
    env = {**os.environ, "CVS_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, json.dumps(blocked), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def engine_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", "tiny-yi", "--engine", "ort", "--engines", str(root), "--country", "DEU",
        "--question", "Q57", "--question", "Q58", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def rows_by_id(folder: Path) -> dict[str, dict[str, Any]]:
    return {r["item_id"]: r for r in ResultStore(folder / "store.jsonl").rows()}


def copy_engine(engine_shelf: Any, root: Path, family: str = "tiny-yi") -> Path:
    """A copy of `family`'s fp32 engine under `root/tiny-yi/fp32` (mtimes kept: still valid)."""
    folder = root / "tiny-yi" / "fp32"
    shutil.copytree(engine_shelf(family).folder, folder)
    return folder


def rerecord(folder: Path, name: str) -> None:
    """Record `name`'s current size, mtime and hash in the manifest (a consistent folder)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    path = folder / name
    for record in manifest["files"]:
        if record["name"] == name:
            record["size"] = path.stat().st_size
            record["mtime_ns"] = path.stat().st_mtime_ns
            record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    reseal(folder)


def assert_refused(result: Any, out: Path, *words: str) -> None:
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    assert result.exit_code == 1 if hasattr(result, "exit_code") else result.returncode == 1
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, output
    for word in words:
        assert word in error_lines[0], output
    assert not (out / "store.jsonl").exists()  # refused before any scoring


@pytest.mark.slow
def test_an_engine_folder_alone_scores_the_same_rows_without_torch_or_transformers(
    engine_shelf: Any, tmp_path: Path
) -> None:
    root = engine_shelf("tiny-yi").folder.parent.parent
    extra = ["--condition", "text", "--condition", "image", "--include-uninformative-images"]
    normal = CliRunner().invoke(main, engine_args(root, tmp_path / "normal", *extra))
    assert normal.exit_code == 0, normal.output

    empty = tmp_path / "empty-cache"
    empty.mkdir()
    edge = run_blocked(EDGE_LESS, engine_args(root, tmp_path / "edge", *extra), empty)
    assert edge.returncode == 0, edge.stdout + edge.stderr
    assert "LOADED []" in edge.stdout  # none of them was even partly imported
    assert "parity: skipped (torch not installed)" in edge.stdout
    assert not (empty / "models").exists()  # no checkpoint was built or read

    expected, found = rows_by_id(tmp_path / "normal"), rows_by_id(tmp_path / "edge")
    assert set(found) == set(expected) and len(found) == 4  # 2 questions × text, image
    for item_id, row in expected.items():
        twin = found[item_id]
        for key in ("checkpoint_fingerprint", "engine_manifest_sha256", "option_codes", "status"):
            assert twin[key] == row[key], key
        # Same engine, same token ids, same batches: the same numbers.
        assert twin["option_logprobs"] == row["option_logprobs"], item_id


def test_scoring_needs_no_checkpoint_and_names_the_missing_runtime_library(
    engine_shelf: Any, tmp_path: Path
) -> None:
    root = engine_shelf("tiny-yi").folder.parent.parent
    out = tmp_path / "run"
    result = run_blocked(["onnxruntime", *EDGE_LESS], engine_args(root, out), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pip install 'cvs-eval[cpu]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "store.jsonl").exists()


def test_the_pytorch_reference_without_torch_names_the_export_extra(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--model", "tiny-yi", "--engine", "torch", "--country", "DEU", "--out", str(out)]
    result = run_blocked(EDGE_LESS, args, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pip install 'cvs-eval[export]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_engine_missing_its_tokenizer_is_refused_naming_the_file(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    (folder / "tokenizer.json").unlink()
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, engine_args(tmp_path / "engines", out, "--compare-to", "none")
    )
    assert_refused(result, out, "tokenizer.json", "missing")


def test_a_tokenizer_whose_hash_differs_from_the_manifest_is_refused(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    path = folder / "tokenizer.json"
    text = path.read_text(encoding="utf-8")
    vocab = json.loads(text)["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[60:62]  # two ordinary tokens swap their ids
    entries = [json.dumps(t, ensure_ascii=False) + f":{vocab[t]}," for t in (first, second)]
    swapped = [json.dumps(t, ensure_ascii=False) + f":{vocab[u]}," for t, u in (
        (first, second), (second, first)
    )]  # fmt: skip
    assert all(text.count(entry) == 1 for entry in entries)
    for entry, replacement in zip(entries, swapped, strict=True):
        text = text.replace(entry, replacement)
    stat = path.stat()
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert path.stat().st_size == stat.st_size
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, engine_args(tmp_path / "engines", out, "--compare-to", "none")
    )
    assert_refused(result, out, "tokenizer.json", "differs from the one recorded")


def test_an_engine_of_another_family_is_refused_naming_the_field(
    engine_shelf: Any, tmp_path: Path
) -> None:
    copy_engine(engine_shelf, tmp_path / "engines", family="tiny-vicuna")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, engine_args(tmp_path / "engines", out, "--compare-to", "none")
    )
    assert_refused(result, out, "family is 'tiny-vicuna'", "'tiny-yi' was asked for")


def test_family_facts_of_another_family_are_refused_naming_the_field(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    facts = json.loads((folder / "family.json").read_text())
    other = json.loads((engine_shelf("tiny-qwen").folder / "family.json").read_text())
    facts["image_token_id"] = other["image_token_id"]  # 2003: tiny-qwen's image token
    (folder / "family.json").write_text(json.dumps(facts))
    rerecord(folder, "family.json")  # the manifest agrees: only the facts are wrong
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, engine_args(tmp_path / "engines", out, "--compare-to", "none")
    )
    assert_refused(result, out, "family.json", "image_token_id is 2003")


def test_an_engine_built_before_scoring_files_says_how_to_add_them_in_place(
    engine_shelf: Any, tmp_path: Path
) -> None:
    from cvs_families.scoring_files import SCORING_FILES

    folder = copy_engine(engine_shelf, tmp_path / "engines")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["name"] not in SCORING_FILES]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    reseal(folder)
    for name in SCORING_FILES:
        (folder / name).unlink()
    out = tmp_path / "run"
    args = engine_args(tmp_path / "engines", out, "--compare-to", "none")
    assert_refused(
        CliRunner().invoke(main, args), out, "cvs-export add-scoring-files", "cvs-export build"
    )

    from cvs_export.cli import main as export_main

    added = CliRunner().invoke(
        export_main,
        ["add-scoring-files", "--model", "tiny-yi", "--engines", str(tmp_path / "engines")],
    )
    assert added.exit_code == 0, added.output
    for name in SCORING_FILES:  # the same bytes a fresh build writes
        assert (folder / name).read_bytes() == (engine_shelf("tiny-yi").folder / name).read_bytes()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(rows_by_id(out)) == 2


def test_a_comparison_on_another_checkpoint_is_refused_before_scoring(
    engine_shelf: Any, tmp_path: Path
) -> None:
    folder = copy_engine(engine_shelf, tmp_path / "engines")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checkpoint_fingerprint"] = "0" * 64  # built from some other checkpoint
    (folder / "manifest.json").write_text(json.dumps(manifest))
    reseal(folder)
    out = tmp_path / "run"
    args = engine_args(tmp_path / "engines", out, "--compare-to", "torch/fp32")
    assert_refused(CliRunner().invoke(main, args), out, "--compare-to torch/fp32", "000000000000")


def test_every_build_records_the_scoring_files_in_its_manifest(engine_shelf: Any) -> None:
    from cvs_families.scoring_files import SCORING_FILES

    for family in ("tiny-vicuna", "tiny-yi", "tiny-qwen"):
        built = engine_shelf(family)
        recorded = {record.name: record.sha256 for record in built.manifest.files}
        for name in SCORING_FILES:
            digest = hashlib.sha256((built.folder / name).read_bytes()).hexdigest()
            assert recorded[name] == digest, (family, name)


def test_the_build_refuses_a_folder_tokenizer_that_encodes_differently(
    engine_shelf: Any,
) -> None:
    from cvs_export.scoring_files import ScoringFilesError, check_same_tokenizer

    vicuna, yi = engine_shelf("tiny-vicuna").loaded, engine_shelf("tiny-yi").loaded
    check_same_tokenizer(yi.spec, yi.tokenizer, yi.tokenizer)  # itself: no complaint
    with pytest.raises(ScoringFilesError, match="encodes a probe prompt differently"):
        check_same_tokenizer(yi.spec, yi.tokenizer, vicuna.tokenizer)


def test_build_if_missing_adds_the_scoring_files_to_an_older_engine_in_place(
    engine_shelf: Any, tmp_path: Path
) -> None:
    from cvs_export.build import engine_up_to_date
    from cvs_families.scoring_files import SCORING_FILES

    folder = copy_engine(engine_shelf, tmp_path / "engines")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["name"] not in SCORING_FILES]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    reseal(folder)
    for name in SCORING_FILES:
        (folder / name).unlink()
    weights = (folder / "weights.bin").stat()
    assert engine_up_to_date("tiny-yi", "fp32", None, tmp_path / "engines")
    assert all((folder / name).is_file() for name in SCORING_FILES)
    assert (folder / "weights.bin").stat().st_mtime_ns == weights.st_mtime_ns  # not re-exported
    recorded = {f["name"] for f in json.loads((folder / "manifest.json").read_text())["files"]}
    assert recorded >= set(SCORING_FILES)
