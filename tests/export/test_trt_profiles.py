"""Optimization profiles and memory budgets, checked against the real graphs of exported engines.

A profile is only right if the graph really runs at its three points: every profile here is
compared with the exported graph's inputs (rank, static dimensions), and the graph is run with
onnxruntime at the min, opt and max points, where its outputs must have the shapes the spec
predicts and the bytes the budget arithmetic counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cvs_export.parts import PartSpec
from cvs_export.trt_build import (
    AxisRange,
    BudgetError,
    Profile,
    ProfileError,
    axis_ranges,
    check_profile_dims,
    decoder_phase_ranges,
    engine_weight_bytes,
    free_axes,
    graph_input_dims,
    graph_weight_bytes,
    io_bytes,
    profile_for,
    ranges_covering,
    ranges_from_budget,
    timing_cache_path,
)
from cvs_runtime.ort_backend import OrtParts

FAMILIES = ("tiny-yi", "tiny-qwen")
SMALL_MAXIMA = {"batch": 3, "tiles": 3, "seq": 9, "past": 6, "prefix": 6, "k": 2}


def point_inputs(
    spec: PartSpec, sizes: Mapping[str, int], seed: int = 0
) -> dict[str, NDArray[Any]]:
    """Inputs of `spec` at `sizes` that the model accepts: random floats, valid ids, positions
    after the cache, a full mask, logit indices inside the new tokens."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, NDArray[Any]] = {}
    for t in spec.inputs:
        shape = t.concrete_shape(sizes)
        if t.dtype == "float":
            arrays[t.name] = rng.standard_normal(shape).astype(np.float32) * 0.1
        elif t.fill == "positions":
            arrays[t.name] = np.broadcast_to(
                np.arange(shape[-1], dtype=np.int64) + sizes.get("past", 0), shape
            ).copy()
        elif t.fill == "ones":
            arrays[t.name] = np.ones(shape, np.int64)
        elif t.fill == "last_position":
            arrays[t.name] = np.full(shape, sizes["seq"] - 1, np.int64)
        else:
            arrays[t.name] = rng.integers(0, 50, shape).astype(np.int64)
    return arrays


@pytest.fixture(scope="module")
def engines(engine_shelf: Any) -> dict[str, Any]:
    return {name: engine_shelf(name) for name in FAMILIES}


def runner_for(engine: Any) -> OrtParts:
    return OrtParts.open(engine.folder)


def run_point(runner: OrtParts, spec: PartSpec, sizes: Mapping[str, int]) -> int:
    """Run `spec`'s part at `sizes`; check output shapes; return the bytes of inputs + outputs."""
    inputs = point_inputs(spec, sizes)
    outputs = runner.run(spec.name, inputs)
    for t in spec.outputs:
        assert outputs[t.name].shape == t.concrete_shape(sizes), (spec.name, t.name, sizes)
    return sum(a.nbytes for a in (*inputs.values(), *outputs.values()))


# Profiles against the graphs -------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_profiles_match_the_graph_inputs_and_run_at_every_point(
    engines: dict[str, Any], family: str
) -> None:
    engine = engines[family]
    runner = runner_for(engine)
    for name, spec in engine.specs.items():
        profile = profile_for(spec, axis_ranges(spec, SMALL_MAXIMA))
        check_profile_dims(profile, graph_input_dims(engine.folder / f"{name}.onnx"))
        for point in profile.points:
            measured = run_point(runner, spec, point)
            assert measured == io_bytes(spec, point), (family, name, point)


def test_total_is_past_plus_seq_at_every_point(engines: dict[str, Any]) -> None:
    decoder = engines["tiny-yi"].specs["decoder"]
    ranges = axis_ranges(decoder, {"batch": 4, "seq": 16, "past": 32, "k": 2})
    profile = profile_for(decoder, ranges)
    # min: vocabulary minima; opt: half the max; max: the flags
    assert [p["total"] for p in profile.points] == [1, 8 + 16, 16 + 32]
    assert [p["past"] for p in profile.points] == [0, 16, 32]
    low, opt, high = profile.shapes["attention_mask"]
    assert (low, opt, high) == ((1, 1), (2, 24), (4, 48))
    assert profile.shapes["past.0.key"][0][2] == 0  # an empty cache is inside the profile


def test_free_axes_leave_out_the_derived_total(engines: dict[str, Any]) -> None:
    specs = engines["tiny-yi"].specs
    assert free_axes(specs["decoder"]) == ["batch", "seq", "k", "past"]
    assert free_axes(specs["vision"]) == ["tiles"]
    assert free_axes(specs["embedding"]) == ["batch", "seq"]


def test_a_profile_of_another_family_is_refused_by_the_graph(engines: dict[str, Any]) -> None:
    qwen = engines["tiny-qwen"].specs["decoder"]
    profile = profile_for(qwen, axis_ranges(qwen, SMALL_MAXIMA))
    yi_dims = graph_input_dims(engines["tiny-yi"].folder / "decoder.onnx")
    with pytest.raises(ProfileError, match=r"dimension \d is \d+ in the graph"):
        check_profile_dims(profile, yi_dims)


def test_a_profile_missing_an_input_is_refused(engines: dict[str, Any]) -> None:
    spec = engines["tiny-yi"].specs["decoder"]
    profile = profile_for(spec, axis_ranges(spec, SMALL_MAXIMA))
    partial = Profile(profile.part, profile.points, dict(list(profile.shapes.items())[:-1]))
    with pytest.raises(ProfileError, match="differ from the graph"):
        check_profile_dims(partial, graph_input_dims(engines["tiny-yi"].folder / "decoder.onnx"))


def test_ranges_covering_the_check_sizes_run_every_check_point(engines: dict[str, Any]) -> None:
    engine = engines["tiny-qwen"]
    runner = runner_for(engine)
    for spec in engine.specs.values():
        ranges = ranges_covering(spec, spec.check_sizes)
        for sizes in spec.check_sizes:
            for axis, size in sizes.items():
                if axis in ranges:
                    assert ranges[axis].min <= size <= ranges[axis].max
        run_point(runner, spec, profile_for(spec, ranges).points[2])


def test_decoder_phase_profiles_fit_the_graph_and_run(engines: dict[str, Any]) -> None:
    engine = engines["tiny-yi"]
    spec = engine.specs["decoder"]
    prefill, continuation = (
        profile_for(spec, r)
        for r in decoder_phase_ranges(spec, max_batch=4, max_context=12, max_suffix=3, max_k=2)
    )
    dims = graph_input_dims(engine.folder / "decoder.onnx")
    runner = runner_for(engine)
    for profile in (prefill, continuation):
        check_profile_dims(profile, dims)
        for point in profile.points:
            run_point(runner, spec, point)
    assert {p["past"] for p in prefill.points} == {0}
    assert [p["seq"] for p in prefill.points][2] == 12
    assert continuation.points[0]["past"] == 1 and continuation.points[2]["past"] == 11
    assert continuation.points[2]["seq"] == 3


# Bad flags, one each ------------------------------------------------------------------------------


def test_a_derived_axis_cannot_be_given(engines: dict[str, Any]) -> None:
    decoder = engines["tiny-yi"].specs["decoder"]
    with pytest.raises(ProfileError, match="derived"):
        axis_ranges(decoder, {**SMALL_MAXIMA, "total": 10})


def test_a_missing_maximum_is_refused(engines: dict[str, Any]) -> None:
    decoder = engines["tiny-yi"].specs["decoder"]
    with pytest.raises(ProfileError, match=r"no maximum for axes \['past'\]"):
        axis_ranges(decoder, {"batch": 2, "seq": 4, "k": 1})


def test_a_maximum_below_the_axis_minimum_is_refused(engines: dict[str, Any]) -> None:
    embedding = engines["tiny-yi"].specs["embedding"]
    with pytest.raises(ProfileError, match="below the axis minimum 1"):
        axis_ranges(embedding, {"batch": 2, "seq": 0})


def test_an_opt_outside_the_range_is_refused(engines: dict[str, Any]) -> None:
    embedding = engines["tiny-yi"].specs["embedding"]
    with pytest.raises(ProfileError, match=r"opt seq 9 outside 1\.\.8"):
        axis_ranges(embedding, {"batch": 2, "seq": 8}, {"seq": 9})


def test_an_axis_range_out_of_order_is_refused() -> None:
    with pytest.raises(ProfileError):
        AxisRange(3, 2, 5)


def test_ranges_for_the_wrong_axes_are_refused(engines: dict[str, Any]) -> None:
    specs = engines["tiny-yi"].specs
    with pytest.raises(ProfileError, match="ranges name"):
        profile_for(specs["vision"], axis_ranges(specs["embedding"], SMALL_MAXIMA))


# Budgets -----------------------------------------------------------------------------------------


def test_graph_weight_bytes_count_the_embedding_table(engines: dict[str, Any]) -> None:
    engine = engines["tiny-yi"]
    text = engine.loaded.spec.text_config
    table = int(text["vocab_size"]) * int(text["hidden_size"]) * 4
    found = graph_weight_bytes(engine.folder / "embedding.onnx")
    assert table <= found <= table + 1024  # the table, plus a few shape constants
    assert engine_weight_bytes(engine.folder / "embedding.onnx", "fp16") == found // 2


def test_the_budget_picks_the_largest_batch_that_fits(engines: dict[str, Any]) -> None:
    engine = engines["tiny-yi"]
    spec = engine.specs["decoder"]
    runner = runner_for(engine)
    fixed = {"seq": 7, "past": 5, "k": 1}
    measured = {b: run_point(runner, spec, {**fixed, "batch": b, "total": 12}) for b in (3, 4)}
    weights = graph_weight_bytes(engine.folder / "decoder.onnx")
    room = (measured[3] + measured[4]) // 2  # more than batch 3 needs, less than batch 4
    plan = ranges_from_budget(
        spec, weights + 2 * room, maxima=fixed, weight_bytes=weights, activation_share=0.5
    )
    assert plan.grown_axis == "batch"
    assert plan.ranges["batch"].max == 3
    assert plan.io_bytes == measured[3]
    assert plan.activation_bytes == room
    assert plan.ranges["past"] == AxisRange(0, 2, 5)


def test_the_budget_grows_tiles_for_the_vision_part(engines: dict[str, Any]) -> None:
    engine = engines["tiny-yi"]
    spec = engine.specs["vision"]
    runner = runner_for(engine)
    two, three = (run_point(runner, spec, {"tiles": n}) for n in (2, 3))
    weights = graph_weight_bytes(engine.folder / "vision.onnx")
    plan = ranges_from_budget(
        spec, weights + (two + three) // 2, maxima={}, weight_bytes=weights, activation_share=0.0
    )
    assert (plan.grown_axis, plan.ranges["tiles"].max) == ("tiles", 2)


def test_a_budget_below_the_weights_is_refused(engines: dict[str, Any]) -> None:
    engine = engines["tiny-yi"]
    weights = graph_weight_bytes(engine.folder / "decoder.onnx")
    with pytest.raises(BudgetError, match="too small"):
        ranges_from_budget(
            engine.specs["decoder"],
            weights - 1,
            maxima={"seq": 4, "past": 4, "k": 1},
            weight_bytes=weights,
        )


def test_a_budget_without_the_other_maxima_is_refused(engines: dict[str, Any]) -> None:
    with pytest.raises(BudgetError, match="no maximum"):
        ranges_from_budget(
            engines["tiny-yi"].specs["decoder"], 2**30, maxima={"seq": 4}, weight_bytes=0
        )


def test_timing_cache_names_carry_version_and_gpu(tmp_path: Path) -> None:
    path = timing_cache_path(tmp_path, "10.15.1", "NVIDIA H200 NVL")
    assert path == tmp_path / "timing-10.15.1-NVIDIA-H200-NVL.cache"
