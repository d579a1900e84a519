"""Part specs reject what they must: unknown axes, unchecked shapes, missing tolerances."""

from __future__ import annotations

import pytest
import torch

from cvs_export.llava_next import dims_of, part_specs
from cvs_export.parts import (
    AXES,
    TOLERANCE_CLASSES,
    PartSpec,
    PartSpecError,
    TensorSpec,
    Tolerance,
    tolerance_class,
)
from cvs_families.registry import get_family

TOL = {p: Tolerance(1e-4, 1e-4) for p in TOLERANCE_CLASSES}


def make_spec(**changes: object) -> PartSpec:
    fields: dict[str, object] = {
        "name": "toy",
        "inputs": (TensorSpec("x", "float", ("batch", "seq", 4)),),
        "outputs": (TensorSpec("y", "float", ("batch", "seq", 4)),),
        "trace_sizes": {"batch": 2, "seq": 5},
        "check_sizes": ({"batch": 3, "seq": 7},),
        "tolerances": TOL,
    }
    fields.update(changes)
    return PartSpec(**fields)  # type: ignore[arg-type]


def test_a_well_formed_spec_lists_its_dynamic_axes_optimum_style() -> None:
    spec = make_spec()
    assert spec.dynamic_axes() == {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}


def test_an_axis_outside_the_vocabulary_is_rejected() -> None:
    with pytest.raises(PartSpecError, match="'sequence', not in the vocabulary"):
        make_spec(inputs=(TensorSpec("x", "float", ("batch", "sequence", 4)),))


def test_an_output_axis_no_input_has_is_rejected() -> None:
    with pytest.raises(PartSpecError, match=r"output axes \['k'\] appear in no input"):
        make_spec(outputs=(TensorSpec("y", "float", ("batch", "k")),))


def test_an_axis_only_checked_at_its_traced_size_is_rejected() -> None:
    with pytest.raises(PartSpecError, match=r"\['seq'\] are only checked at their traced size"):
        make_spec(check_sizes=({"batch": 3, "seq": 5},))


def test_check_sizes_must_name_exactly_the_axes_used() -> None:
    with pytest.raises(PartSpecError, match="check sizes name axes"):
        make_spec(check_sizes=({"batch": 3},))


def test_a_size_below_the_axis_minimum_is_rejected() -> None:
    with pytest.raises(PartSpecError, match="below the minimum"):
        make_spec(check_sizes=({"batch": 0, "seq": 7},))


def test_no_check_sizes_is_rejected() -> None:
    with pytest.raises(PartSpecError, match="no check sizes"):
        make_spec(check_sizes=())


def test_a_missing_precision_tolerance_is_rejected() -> None:
    with pytest.raises(PartSpecError, match=r"no tolerance for number formats \['int8'\]"):
        make_spec(tolerances={"fp32": TOL["fp32"], "fp16": TOL["fp16"], "bf16": TOL["bf16"]})


def test_every_int8_recipe_takes_the_int8_tolerance() -> None:
    spec = make_spec(tolerances={**TOL, "int8": Tolerance(0.5, 0.25)})
    assert spec.tolerance("int8-qdq") == spec.tolerance("int8-wo") == Tolerance(0.5, 0.25)
    assert spec.tolerance("bf16") == TOL["bf16"] and tolerance_class("fp16") == "fp16"


def test_an_unknown_precision_has_no_tolerance_class() -> None:
    with pytest.raises(PartSpecError, match="unknown precision 'int4'"):
        tolerance_class("int4")  # type: ignore[arg-type]


def test_repeated_tensor_names_are_rejected() -> None:
    with pytest.raises(PartSpecError, match=r"names repeat: \['x'\]"):
        make_spec(outputs=(TensorSpec("x", "float", ("batch", "seq", 4)),))


def test_padded_by_must_name_an_input() -> None:
    with pytest.raises(PartSpecError, match="padded_by 'mask'"):
        make_spec(outputs=(TensorSpec("y", "float", ("batch", "seq", 4), padded_by="mask"),))


def test_only_the_empty_cache_axis_may_be_zero() -> None:
    assert {name for name, axis in AXES.items() if axis.min == 0} == {"past"}


def test_dummy_inputs_have_the_declared_shapes_dtypes_and_fills() -> None:
    spec = part_specs(get_family("yi34b").config)["decoder"]
    sizes = {"batch": 2, "seq": 3, "past": 4, "total": 7, "k": 2}
    arrays = spec.dummy_inputs(sizes, device="meta")
    assert arrays["inputs_embeds"].shape == (2, 3, 7168)
    assert arrays["past.59.value"].shape == (2, 8, 4, 128)
    assert arrays["position_ids"].dtype == torch.int64
    real = spec.dummy_inputs(sizes)
    assert real["position_ids"][0].tolist() == [4, 5, 6]  # continue after the cache
    assert real["logit_index"].tolist() == [[2, 2], [2, 2]]
    assert bool(real["attention_mask"].eq(1).all())


def test_wrapper_arguments_group_the_cache_into_one_list() -> None:
    spec = part_specs(get_family("vicuna13b").config)["decoder"]
    arrays = spec.dummy_inputs(spec.trace_sizes, device="meta")
    arguments = spec.wrapper_arguments(arrays)
    assert len(arguments) == 5
    cache = arguments[4]
    assert isinstance(cache, list) and len(cache) == 80
    assert cache[1] is arrays["past.0.value"]


@pytest.mark.parametrize(
    "family,kv_heads,head_dim,layers,vocab",
    [
        ("vicuna13b", 40, 128, 40, 32064),
        ("yi34b", 8, 128, 60, 64064),
        ("qwen72b", 64, 128, 80, 152064),
    ],
)
def test_dims_come_from_the_full_configs(
    family: str, kv_heads: int, head_dim: int, layers: int, vocab: int
) -> None:
    dims = dims_of(get_family(family).config)
    assert (dims.kv_heads, dims.head_dim, dims.layers, dims.vocab) == (
        kv_heads,
        head_dim,
        layers,
        vocab,
    )
    # CLIP ViT-L/14 at 336 px, feature layer −2, CLS dropped: 576 patches, 23 of 24 layers run.
    assert (dims.tile, dims.patches, dims.vision_layers_run) == (336, 576, 23)
