"""The planner on the full-size configs (meta device), and the phase peak-memory meter."""

from __future__ import annotations

import numpy as np
import pytest

from cvs_export.onnx_export import ExportError
from cvs_export.planner import PeakMemory, plan_export
from cvs_families.registry import get_family

FULL = [("vicuna13b", 13.351), ("yi34b", 34.752), ("qwen72b", 72.667)]


@pytest.mark.parametrize("family,billions", FULL)
def test_full_configs_have_the_published_parameter_counts(family: str, billions: float) -> None:
    plan = plan_export(family, get_family(family).config)
    assert round(plan.params / 1e9, 3) == billions


@pytest.mark.parametrize("family,billions", FULL)
def test_full_plans_fit_the_size_and_memory_bounds(family: str, billions: float) -> None:
    plan = plan_export(family, get_family(family).config)
    gib = 2**30
    # fp32: 4 bytes per parameter, every part's tensors in one file (the last vision layer,
    # never run for feature layer −2, is left out).
    assert plan.weights_file_bytes == pytest.approx(4 * billions * 1e9, rel=0.02)
    assert plan.weights_file_bytes < plan.model_bytes
    assert plan.engine_bytes <= 1.1 * plan.weights_file_bytes
    # Untied families: the parts share no tensor but the two language-model graphs, which read
    # the same weights (stored once), so the file is the sum of the parts without the suffix.
    parts = {p.name: p for p in plan.parts}
    assert parts["suffix"].weight_bytes == parts["decoder"].weight_bytes
    assert sum(p.weight_bytes for p in plan.parts if p.name != "suffix") == (
        plan.weights_file_bytes
    )
    # Export needs the loaded model and about nothing more (a plain dynamo export: 2.2×).
    assert plan.predicted_export_peak_bytes <= 1.05 * plan.model_bytes + 1 * gib


def test_a_tied_family_shares_its_embedding_between_parts() -> None:
    plan = plan_export("smol", get_family("smol").config)
    parts = {p.name: p for p in plan.parts}
    shared = sum(p.weight_bytes for p in plan.parts) - plan.weights_file_bytes
    # The head is the embedding, stored once; the suffix graph reads the decoder's weights.
    assert shared == parts["embedding"].weight_bytes + parts["suffix"].weight_bytes


def test_plan_shapes_name_the_cache_axes() -> None:
    plan = plan_export("yi34b", get_family("yi34b").config)
    decoder = next(p for p in plan.parts if p.name == "decoder")
    inputs = dict(decoder.inputs)
    assert inputs["past.0.key"] == ("batch", 8, "past", 128)
    assert dict(decoder.outputs)["logits"] == ("batch", "k", 64064)
    assert "decoder" in plan.table() and "34.752B" in plan.table()


def test_an_fp16_plan_holds_half_the_weight_bytes() -> None:
    config = get_family("yi34b").config
    fp32 = plan_export("yi34b", config, "fp32")
    fp16 = plan_export("yi34b", config, "fp16")
    # Floats halve; integer buffers and 64-byte alignment padding do not (a few kB).
    assert fp16.weights_file_bytes * 2 == pytest.approx(fp32.weights_file_bytes, rel=1e-4)
    assert fp16.weights_file_bytes * 2 >= fp32.weights_file_bytes


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ExportError, match="unknown precision 'int4'"):
        plan_export("yi34b", get_family("yi34b").config, "int4")  # type: ignore[arg-type]


def test_peak_memory_sees_a_phase_allocation() -> None:
    meter = PeakMemory()
    before = meter.start()
    block = np.ones(96 * 2**20 // 8)  # 96 MiB, touched
    assert meter.peak() >= before + 80 * 2**20
    del block
