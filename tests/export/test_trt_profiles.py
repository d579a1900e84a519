"""Optimization profiles, checked against the real graphs of exported engines.

A profile is only right if the graph really runs at its three points: every profile here is
compared with the exported graph's inputs (rank, static dimensions), and the graph is run with
onnxruntime at the min, opt and max points, where its inputs and outputs must have the shapes
the spec predicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cvs_export.parts import PartSpec
from cvs_export.trt_build import (
    DERIVED_AXES,
    AxisRange,
    Profile,
    ProfileError,
    axis_ranges,
    check_profile_dims,
    free_axes,
    graph_input_dims,
    profile_for,
)
from cvs_runtime.ort_backend import OrtParts
from tests.export.profile_tools import two_phase_ranges

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


def spec_io_bytes(spec: PartSpec, sizes: Mapping[str, int]) -> int:
    """Bytes of every input and output the spec declares at `sizes` (float32, int64 ids)."""
    point = dict(sizes)
    for axis, (a, b) in DERIVED_AXES.items():
        if a in point and b in point and axis not in point:
            point[axis] = point[a] + point[b]
    return sum(
        math.prod(t.concrete_shape(point)) * (4 if t.dtype == "float" else 8)
        for t in (*spec.inputs, *spec.outputs)
    )


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
            assert measured == spec_io_bytes(spec, point), (family, name, point)


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


def test_decoder_phase_profiles_fit_the_graph_and_run(engines: dict[str, Any]) -> None:
    engine = engines["tiny-yi"]
    spec = engine.specs["decoder"]
    prefill, continuation = (
        profile_for(spec, r)
        for r in two_phase_ranges(spec, max_batch=4, max_context=12, max_suffix=3, max_k=2)
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
