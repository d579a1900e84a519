"""`cvs-export build-trt`: the CLI step from a validated ONNX engine to TensorRT plans."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cvs_export.cli import main


def test_without_an_onnx_engine_it_says_which_build_comes_first(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build-trt", "--model", "tiny-yi", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "cvs-export build --model tiny-yi --precision fp32" in result.output
    assert "Traceback" not in result.output


def test_int8_plans_are_built_from_the_qdq_engine(tmp_path: Path) -> None:
    args = ["build-trt", "--model", "tiny-yi", "--precision", "int8", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "--precision int8-qdq" in result.output


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_without_tensorrt_it_names_the_extra_after_checking_the_graphs(engine_shelf: Any) -> None:
    built = engine_shelf("tiny-yi")
    out = built.folder.parent.parent
    result = CliRunner().invoke(main, ["build-trt", "--model", "tiny-yi", "--out", str(out)])
    assert result.exit_code == 1
    assert "pip install 'cvs-eval[trt]'" in result.output
    assert not (out / "tiny-yi" / "trt-fp16").exists()


@pytest.mark.trt
@pytest.mark.gpu
def test_fp16_plans_build_validate_and_open(engine_shelf: Any) -> None:
    from cvs_runtime.engines import open_engine

    built = engine_shelf("tiny-yi")
    out = built.folder.parent.parent
    result = CliRunner().invoke(main, ["build-trt", "--model", "tiny-yi", "--out", str(out)])
    assert result.exit_code == 0, result.output
    parts = open_engine("trt", out / "tiny-yi" / "trt-fp16", family="tiny-yi", precision="fp16")
    assert set(parts.part_names) == {"vision", "embedding", "decoder"}
