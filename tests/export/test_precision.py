"""Lower precisions on a tiny family: each builds, is validated, carries a verdict the runtime
enforces; the Q/DQ graph is TensorRT's form node by node; the fp16 range check sees overflow."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from cvs_export.parts import PRECISIONS
from cvs_export.precision import RECIPES, TARGETS, QuantizedRecipe, judge, targets_for
from cvs_runtime.engine_manifest import EngineMismatch, read_manifest, verified_engine

FAMILY = "tiny-yi"
LOWER = tuple(p for p in PRECISIONS if p != "fp32")


@dataclass
class LowerEngines:
    """Every lower precision of one tiny family, built once."""

    root: Path
    """Engines root."""
    builds: dict[str, Any]
    """precision → PrecisionBuild."""
    fp32_folder_mtime: int
    """mtime (ns) of the fp32 engine folder before the lower precisions were built from it."""


@pytest.fixture(scope="session")
def lower_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LowerEngines]:
    from cvs_evaluator.prompt_requests import write_precision_prompts
    from cvs_export.build import build_engine, build_lower_precisions
    from cvs_runtime.request_file import read_request_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("precision-engines")
    prompts = read_request_file(write_precision_prompts(FAMILY, root / "prompts.npz"))
    build_engine(FAMILY, weights=None, precision="fp32", out_root=root, echo=lambda _: None)
    fp32_mtime = (root / FAMILY / "fp32").stat().st_mtime_ns
    builds = build_lower_precisions(
        FAMILY, LOWER, weights=None, out_root=root, prompts=prompts, echo=lambda _: None
    )
    torch.set_num_threads(threads)
    yield LowerEngines(
        root=root, builds={b.verdict.precision: b for b in builds}, fp32_folder_mtime=fp32_mtime
    )


def _folder(engines: LowerEngines, precision: str) -> Path:
    return engines.root / FAMILY / precision


@pytest.mark.slow
@pytest.mark.parametrize("precision", LOWER)
def test_each_precision_builds_with_its_verdict_in_the_manifest(
    lower_engines: LowerEngines, precision: str
) -> None:
    from cvs_export.manifest import verify_engine

    folder = _folder(lower_engines, precision)
    manifest = read_manifest(folder)
    assert manifest.precision == precision and manifest.family == FAMILY
    verdict = manifest.validation["verdict"]
    assert verdict["precision"] == precision
    assert manifest.validation["passed"] is verdict["passed"]
    assert verify_engine(folder).files == len(manifest.files)  # every file hashed as recorded
    if precision == "bf16":
        assert not verdict["ran"] and not verdict["passed"]
        assert "bfloat16" in verdict["note"]  # says why onnxruntime CPU cannot run it
        return
    figures = verdict["figures"]
    assert verdict["ran"] and figures["requests"] == 96
    assert all(math.isfinite(v) for v in figures.values())
    targets = targets_for(precision)  # type: ignore[arg-type]
    assert targets is not None
    meets = figures["mean_js"] <= targets.mean_js and (
        targets.top1 is None or figures["top1"] >= targets.top1
    )
    assert verdict["passed"] is meets
    chain = manifest.validation["chain"]
    assert chain["requests"] == 7  # the validation set's text and image groups ran too
    assert len(manifest.validation["parts"]) > 0


@pytest.mark.slow
def test_quantizing_leaves_the_fp32_engine_untouched(lower_engines: LowerEngines) -> None:
    from cvs_export.manifest import verify_engine

    folder = lower_engines.root / FAMILY / "fp32"
    assert read_manifest(_folder(lower_engines, "int8-qdq")).export["fp32_source"] == str(folder)
    # No file was even created and deleted there (onnxruntime's shape-inferred copies).
    assert folder.stat().st_mtime_ns == lower_engines.fp32_folder_mtime
    assert verify_engine(folder).mtimes_refreshed == ()


@pytest.mark.slow
def test_a_failed_verdict_is_refused_unless_allowed(lower_engines: LowerEngines) -> None:
    from cvs_runtime.engines import open_engine

    failed = [p for p, b in lower_engines.builds.items() if not b.verdict.passed and b.verdict.ran]
    assert failed, "tiny-yi's int8 recipes were expected to miss a target somewhere"
    folder = _folder(lower_engines, failed[0])
    with pytest.raises(EngineMismatch) as raised:
        open_engine("ort", folder, family=FAMILY, precision=failed[0])
    message = str(raised.value)
    assert raised.value.field == "validation.verdict"
    assert "verdict" in message and "allow_failed_verdict=True" in message
    assert "--allow-failed-engine" in message and "mean JS" in message
    parts = open_engine(
        "ort", folder, family=FAMILY, precision=failed[0], allow_failed_verdict=True
    )
    assert "decoder" in parts.part_names


@pytest.mark.slow
def test_an_engine_that_could_not_run_is_refused_and_says_why(lower_engines: LowerEngines) -> None:
    with pytest.raises(EngineMismatch, match="not run here: onnxruntime CPU refuses"):
        verified_engine(_folder(lower_engines, "bf16"), precision="bf16")


@pytest.mark.slow
def test_a_passing_verdict_opens_without_permission(lower_engines: LowerEngines) -> None:
    passed = [p for p, b in lower_engines.builds.items() if b.verdict.passed]
    assert passed, "the weight-only recipe was expected to pass on tiny-yi"
    manifest, _ = verified_engine(_folder(lower_engines, passed[0]), precision=passed[0])
    assert manifest.validation["verdict"]["passed"] is True


@pytest.mark.slow
def test_the_qdq_graph_is_tensorrt_form_node_by_node(lower_engines: LowerEngines) -> None:
    from cvs_export.trt_ops import check_graph_file

    for precision in ("int8-qdq", "int8-qdq-smooth"):
        path = _folder(lower_engines, precision) / "decoder.onnx"
        assert check_graph_file(path) == []
        model = onnx.load(str(path))
        constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        ops = [node.op_type for node in model.graph.node]
        assert "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert len(qdq) > 0
        for node in qdq:  # every Q/DQ: an int8 zero-point, all zeros
            zero = constants[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), node.name


@pytest.mark.slow
def test_dynamic_int8_is_not_tensorrt_form(lower_engines: LowerEngines) -> None:
    from cvs_export.trt_ops import check_graph_file

    found = check_graph_file(_folder(lower_engines, "int8-dyn") / "decoder.onnx")
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {v.op_type for v in found}


@pytest.mark.slow
def test_kept_layers_stay_float_matmuls(lower_engines: LowerEngines) -> None:
    folder = _folder(lower_engines, "int8-dyn-pc-keep")
    manifest = read_manifest(folder)
    kept = manifest.export["kept_matmuls"]
    assert manifest.export["kept_groups"] == ["head", "down_proj"]
    assert sum("down_proj" in w for w in kept) == 2  # tiny-yi has 2 layers
    assert any("lm_head" in w or "embed_tokens" in w for w in kept)
    model = onnx.load(str(folder / "decoder.onnx"))
    float_matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    assert set(kept) <= float_matmul_weights
    integer = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert len(integer) == manifest.export["quantized_matmuls"] > 0


@pytest.mark.slow
def test_bf16_weights_are_stored_as_bfloat16(lower_engines: LowerEngines) -> None:
    fp32 = read_manifest(lower_engines.root / FAMILY / "fp32").export["weights_file_bytes"]
    bf16 = lower_engines.root / FAMILY / "bf16"
    assert (bf16 / "weights.bin").stat().st_size <= fp32 // 2 + 64 * 64  # alignment padding
    model = onnx.load(str(bf16 / "decoder.onnx"), load_external_data=False)
    types = {i.data_type for i in model.graph.initializer if i.external_data}
    assert types == {onnx.TensorProto.BFLOAT16}


@pytest.mark.slow
def test_fp16_records_the_activation_range(lower_engines: LowerEngines) -> None:
    ranges = read_manifest(_folder(lower_engines, "fp16")).validation["activation_range"]
    assert ranges["fp16_max"] == 65504.0 and ranges["prompts"] == 32
    assert ranges["overflowing"] == []
    assert 0 < ranges["largest"]["max_abs"] < 65504.0


# The fp16 range check on a planted overflow ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    from cvs_families.checkpoint import ensure_checkpoint, load_model
    from cvs_families.registry import get_family

    spec = get_family(FAMILY)
    return load_model(spec, ensure_checkpoint(spec))


def _prompts(loaded: Any) -> list[np.ndarray]:
    from cvs_export.validate import QUESTIONS, render_prompt

    return [render_prompt(loaded, "You live in Brazil.", *q, image=False) for q in QUESTIONS[:2]]


def test_the_range_check_finds_a_planted_overflow(tiny_model: Any) -> None:
    import copy

    from cvs_export.activation_range import FP16_MAX, activation_ranges

    clean = activation_ranges(tiny_model.model, _prompts(tiny_model))
    assert clean.overflowing == () and clean.largest.max_abs < FP16_MAX
    model = copy.deepcopy(tiny_model.model)
    layer = model.model.language_model.layers[1]
    with torch.no_grad():
        layer.mlp.up_proj.weight.mul_(1e6)  # its output, and down_proj's input, leave fp16
    planted = activation_ranges(model, _prompts(tiny_model))
    names = {r.module for r in planted.overflowing}
    assert "model.language_model.layers.1.mlp.up_proj" in names
    assert "model.language_model.layers.0.mlp.up_proj" not in names  # the clean layer is clean
    assert "OVERFLOW" in planted.table()
    assert planted.to_json()["overflowing"][0]["max_abs"] >= FP16_MAX


def test_an_overflow_fails_the_verdict_even_when_the_figures_pass() -> None:
    verdict = judge(
        "fp16",
        mean_js=1e-4,
        max_js=1e-3,
        top1=1.0,
        requests=10,
        max_logprob_diff=1e-3,
        parts_within_tolerance=3,
        parts=3,
        all_finite=True,
        overflowing=["model.layers.1.mlp.up_proj"],
    )
    assert not verdict.passed and "fp16 range" in verdict.failures[0]


def test_smoothing_leaves_the_fp32_function_unchanged(tiny_model: Any) -> None:
    from cvs_export.quantize import smoothed_copy

    prompts = _prompts(tiny_model)
    twin, pairs = smoothed_copy(tiny_model.model, prompts, alpha=0.5)
    assert len(pairs) == 4  # 2 layers × (attention input, MLP input)
    assert max(p.max_scale for p in pairs) != 1.0  # something moved
    ids = torch.from_numpy(prompts[0][None, :])
    with torch.no_grad():
        want = tiny_model.model(input_ids=ids).logits
        got = twin(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    original: Any = tiny_model.model
    smoothed: Any = twin
    first = original.model.language_model.layers[0].input_layernorm.weight
    assert not torch.equal(smoothed.model.language_model.layers[0].input_layernorm.weight, first)


# Verdict rules -------------------------------------------------------------------------------


def _judge(precision: str, **changes: Any) -> Any:
    figures: dict[str, Any] = {
        "mean_js": 0.01,
        "max_js": 0.05,
        "top1": 0.97,
        "requests": 96,
        "max_logprob_diff": 0.3,
        "parts_within_tolerance": 5,
        "parts": 6,
        "all_finite": True,
    }
    return judge(precision, **{**figures, **changes})  # type: ignore[arg-type]


def test_int8_targets_are_the_issues() -> None:
    assert TARGETS["int8"].mean_js == 0.02 and TARGETS["int8"].top1 == 0.95
    assert TARGETS["int8"].section_shift == 0.01 and TARGETS["fp16"].mean_js == 1e-3
    assert _judge("int8-wo").passed
    assert _judge("int8-qdq", mean_js=0.02).passed  # the bound itself passes


def test_int8_fails_on_js() -> None:
    verdict = _judge("int8-dyn", mean_js=0.021)
    assert not verdict.passed and verdict.failures == ["mean JS 0.021 > 0.02"]


def test_int8_fails_on_top1() -> None:
    verdict = _judge("int8-dyn", top1=0.94)
    assert not verdict.passed and verdict.failures == ["top-1 94.0% < 95%"]


def test_nan_figures_fail() -> None:
    verdict = _judge("int8-dyn", mean_js=float("nan"), all_finite=False)
    assert not verdict.passed and len(verdict.failures) == 2


def test_fp16_ignores_top1_but_not_js() -> None:
    assert _judge("fp16", mean_js=9e-4, top1=0.5).passed
    assert not _judge("fp16", mean_js=2e-3).passed


def test_fp32_has_no_verdict() -> None:
    with pytest.raises(ValueError, match="fp32 has no verdict"):
        _judge("fp32")


def test_every_precision_has_a_recipe_that_builds_itself() -> None:
    assert tuple(RECIPES) == PRECISIONS
    kinds = {name: type(recipe).__name__ for name, recipe in RECIPES.items()}
    assert {kinds[p] for p in ("fp32", "fp16", "bf16")} == {"ExportRecipe"}
    assert kinds["int8-wo"] == "WeightOnlyRecipe" and kinds["int8-qdq"] == "QdqRecipe"
    quantized = [r for r in RECIPES.values() if isinstance(r, QuantizedRecipe)]
    assert len(quantized) == len(PRECISIONS) - 3
    assert json.dumps([r.keep for r in quantized])  # plain data
    assert [r.name for r in RECIPES.values() if r.cpu_refusal] == ["bf16"]


def test_an_unknown_keep_group_is_refused() -> None:
    from cvs_export.quantize import QuantizeError, kept_nodes

    with pytest.raises(QuantizeError, match="unknown keep groups"):
        kept_nodes({"n": "w"}, ["attention"])
