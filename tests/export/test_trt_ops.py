"""TensorRT's operator list as data, and the node walk that applies it.

Every exported graph of the tiny families must pass; hand-made graphs holding what TensorRT
refuses (MatMulInteger, DynamicQuantizeLinear, a non-zero or unsigned Q/DQ zero point, a custom
domain, an opset out of range, a non-constant `axes`) must fail with the node named; graphs from
onnxruntime's own quantizers show which recipe TensorRT can take.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cvs_export.trt_ops import (
    SUPPORTED_OPS_FILE,
    OpViolation,
    UnsupportedOpsError,
    check_graph_file,
    check_model,
    count_nodes,
    enforce_supported,
    load_op_support,
)

TINY_FAMILIES = ("tiny-vicuna", "tiny-yi", "tiny-qwen")


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 18,
    extra_opsets: Sequence[tuple[str, int]] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def tensor(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def reasons(violations: list[OpViolation]) -> list[tuple[str, str, str]]:
    return [(v.node, v.op_type, v.reason) for v in violations]


# The data ------------------------------------------------------------------------------------


def test_the_table_states_its_tensorrt_version_and_opset_range() -> None:
    support = load_op_support()
    assert support.tensorrt_version == "10.15"
    assert (support.opset_min, support.opset_max) == (9, 24)
    assert "operators.md" in support.source


def test_the_table_marks_integer_matmul_and_dynamic_quantization_unsupported() -> None:
    support = load_op_support()
    assert support.operators["MatMulInteger"].supported is False
    assert support.operators["DynamicQuantizeLinear"].supported is False
    assert support.operators["MatMul"].supported is True
    assert "zero" in support.operators["QuantizeLinear"].restrictions
    assert "zero" in support.operators["DequantizeLinear"].restrictions


def test_every_constraint_names_an_operator_of_the_table() -> None:
    support = load_op_support()
    assert support.constraints
    for constraint in support.constraints:
        assert support.operators[constraint.op].supported, constraint


def test_the_data_file_ships_inside_the_package() -> None:
    assert SUPPORTED_OPS_FILE.parent.name == "cvs_export"
    assert SUPPORTED_OPS_FILE.is_file()


# Exported graphs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_graphs(engine_shelf: Any) -> Iterator[list[Path]]:
    yield [
        path for name in TINY_FAMILIES for path in sorted(engine_shelf(name).folder.glob("*.onnx"))
    ]


def test_every_exported_graph_of_the_tiny_families_passes(exported_graphs: list[Path]) -> None:
    assert len(exported_graphs) == 4 * len(TINY_FAMILIES)  # vision, embedding, decoder, suffix
    for path in exported_graphs:
        assert check_graph_file(path) == [], path


def test_the_walk_visits_every_node_and_types_every_input(exported_graphs: list[Path]) -> None:
    # A checker that silently skipped nodes (or never knew a type) would pass anything.
    support = load_op_support()
    for path in exported_graphs:
        model = onnx.load(str(path), load_external_data=False)
        assert count_nodes(model) == len(model.graph.node) > 0
        for node in model.graph.node:
            assert support.operators[node.op_type].supported, (path.name, node.op_type)


def test_an_exported_decoder_with_one_node_swapped_fails(exported_graphs: list[Path]) -> None:
    path = next(p for p in exported_graphs if p.name == "decoder.onnx")
    model = onnx.load(str(path), load_external_data=False)
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
    matmul.op_type = "MatMulInteger"
    found = check_model(model, label="decoder.onnx", base_dir=path.parent)
    assert [(v.node, v.op_type) for v in found] == [(matmul.name, "MatMulInteger")]


# Hand-made graphs, one refusal each ------------------------------------------------------------


def test_matmul_integer_is_refused_naming_the_node() -> None:
    model = make_model(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="int_matmul")],
        [tensor("a", TensorProto.INT8, [2, 3]), tensor("b", TensorProto.INT8, [3, 4])],
        [tensor("y", TensorProto.INT32, [2, 4])],
    )
    (violation,) = check_model(model)
    assert (violation.node, violation.op_type) == ("int_matmul", "MatMulInteger")
    assert "not supported by TensorRT 10.15" in violation.reason
    assert "int_matmul" in str(violation)


def test_dynamic_quantize_linear_is_refused_naming_the_node() -> None:
    model = make_model(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"], name="dql")],
        [tensor("x", TensorProto.FLOAT, [2, 3])],
        [
            tensor("y", TensorProto.UINT8, [2, 3]),
            tensor("s", TensorProto.FLOAT, []),
            tensor("z", TensorProto.UINT8, []),
        ],
    )
    (violation,) = check_model(model)
    assert (violation.node, violation.op_type) == ("dql", "DynamicQuantizeLinear")


def qdq_model(zero_point: onnx.TensorProto | None, *, dq_zero: bool = True) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(np.array(0.05, np.float32), "scale")]
    q_inputs = ["x", "scale"]
    dq_inputs = ["q", "scale"]
    if zero_point is not None:
        initializers.append(zero_point)
        q_inputs.append(zero_point.name)
        if dq_zero:
            dq_inputs.append(zero_point.name)
    return make_model(
        [
            helper.make_node("QuantizeLinear", q_inputs, ["q"], name="quantize"),
            helper.make_node("DequantizeLinear", dq_inputs, ["y"], name="dequantize"),
        ],
        [tensor("x", TensorProto.FLOAT, [4])],
        [tensor("y", TensorProto.FLOAT, [4])],
        initializers,
    )


def test_a_symmetric_int8_qdq_pair_passes() -> None:
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    assert check_model(qdq_model(zero)) == []


def test_a_nonzero_zero_point_is_refused_on_both_nodes() -> None:
    zero = numpy_helper.from_array(np.array(3, np.int8), "zero")
    found = check_model(qdq_model(zero))
    assert [(v.node, v.op_type) for v in found] == [
        ("quantize", "QuantizeLinear"),
        ("dequantize", "DequantizeLinear"),
    ]
    assert all("must be 0" in v.reason and "[3]" in v.reason for v in found)


def test_a_uint8_zero_point_of_zero_is_still_refused() -> None:
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zero")
    found = reasons(check_model(qdq_model(zero)))
    assert ("quantize", "QuantizeLinear") in [(n, o) for n, o, _ in found]
    assert any("UINT8" in r for _, _, r in found)
    # DequantizeLinear of a uint8 tensor: UINT8 is not among its types
    assert any(n == "dequantize" and "UINT8" in r for n, _, r in found)


def test_a_quantize_without_zero_point_is_refused_as_uint8() -> None:
    found = check_model(qdq_model(None))
    quantize = [v for v in found if v.node == "quantize"]
    assert len(quantize) == 1 and "UINT8" in quantize[0].reason


def test_a_zero_point_fed_at_run_time_is_refused() -> None:
    model = make_model(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"], name="quantize")],
        [tensor("x", TensorProto.FLOAT, [4]), tensor("zero", TensorProto.INT8, [])],
        [tensor("y", TensorProto.INT8, [4])],
        [numpy_helper.from_array(np.array(0.05, np.float32), "scale")],
    )
    (violation,) = check_model(model)
    assert violation.node == "quantize" and "not a constant" in violation.reason


def test_a_zero_point_stored_as_external_data_is_read(tmp_path: Path) -> None:
    zero = numpy_helper.from_array(np.full(64, 5, np.int8), "zero")  # per-channel, non-zero
    model = make_model(
        [helper.make_node("DequantizeLinear", ["w", "scale", "zero"], ["y"], name="dq_weight")],
        [],
        [tensor("y", TensorProto.FLOAT, [64])],
        [
            numpy_helper.from_array(np.ones(64, np.int8), "w"),
            numpy_helper.from_array(np.full(64, 0.1, np.float32), "scale"),
            zero,
        ],
    )
    path = tmp_path / "qdq.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    assert onnx.load(str(path), load_external_data=False).graph.initializer[2].data_location == (
        TensorProto.EXTERNAL
    )
    (violation,) = check_graph_file(path)
    assert violation.node == "dq_weight" and "[5, 5, 5, 5]…" in violation.reason


def test_a_custom_domain_op_is_refused() -> None:
    model = make_model(
        [helper.make_node("MatMulNBits", ["x", "w"], ["y"], name="nbits", domain="com.microsoft")],
        [tensor("x", TensorProto.FLOAT, [2, 8]), tensor("w", TensorProto.UINT8, [4, 1, 4])],
        [tensor("y", TensorProto.FLOAT, [2, 4])],
        extra_opsets=[("com.microsoft", 1)],
    )
    (violation,) = check_model(model)
    assert violation.op_type == "com.microsoft.MatMulNBits" and "plugin" in violation.reason


@pytest.mark.parametrize("opset", [8, 25])
def test_an_opset_outside_the_range_is_refused(opset: int) -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [tensor("x", TensorProto.FLOAT, [2])],
        [tensor("y", TensorProto.FLOAT, [2])],
        opset=opset,
    )
    found = check_model(model)
    assert [(v.node, v.op_type) for v in found] == [("-", "opset")]
    assert f"opset {opset}" in found[0].reason


def test_an_unlisted_operator_is_refused() -> None:
    model = make_model(
        [helper.make_node("Unique", ["x"], ["y"], name="uniq")],
        [tensor("x", TensorProto.FLOAT, [5])],
        [tensor("y", TensorProto.FLOAT, ["n"])],
    )
    (violation,) = check_model(model)
    assert violation.node == "uniq" and "not supported" in violation.reason


def test_a_refused_node_inside_an_if_branch_is_found() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["t"], name="inner_int_matmul")],
        "then",
        [],
        [tensor("t", TensorProto.INT32, [2, 2])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Cast", ["a"], ["e"], to=TensorProto.INT32, name="cast")],
        "else",
        [],
        [tensor("e", TensorProto.INT32, [2, 2])],
    )
    model = make_model(
        [
            helper.make_node(
                "If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch
            )
        ],
        [
            tensor("c", TensorProto.BOOL, []),
            tensor("a", TensorProto.INT8, [2, 2]),
            tensor("b", TensorProto.INT8, [2, 2]),
        ],
        [tensor("y", TensorProto.INT32, [2, 2])],
    )
    found = check_model(model, label="g.onnx")
    refused = [v for v in found if v.op_type == "MatMulInteger"]
    assert len(refused) == 1
    assert refused[0].node == "inner_int_matmul" and refused[0].graph == "g.onnx/branch.then_branch"


def test_reduce_axes_that_are_not_constant_are_refused() -> None:
    model = make_model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")],
        [tensor("x", TensorProto.FLOAT, [2, 3]), tensor("axes", TensorProto.INT64, [1])],
        [tensor("y", TensorProto.FLOAT, [2, 1])],
    )
    (violation,) = check_model(model)
    assert violation.node == "mean" and "build-time constant" in violation.reason


def test_reduce_axes_from_an_initializer_pass() -> None:
    model = make_model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")],
        [tensor("x", TensorProto.FLOAT, [2, 3])],
        [tensor("y", TensorProto.FLOAT, [2, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    assert check_model(model) == []


def test_layer_norm_statistics_outputs_in_use_are_refused() -> None:
    model = make_model(
        [helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="norm")],
        [tensor("x", TensorProto.FLOAT, [2, 3])],
        [tensor("y", TensorProto.FLOAT, [2, 3]), tensor("mean", TensorProto.FLOAT, [2, 1])],
        [numpy_helper.from_array(np.ones(3, np.float32), "g")],
    )
    (violation,) = check_model(model)
    assert violation.node == "norm" and "mean" in violation.reason


def test_an_element_type_outside_the_operators_list_is_refused() -> None:
    model = make_model(
        [helper.make_node("Sqrt", ["x"], ["y"], name="root")],
        [tensor("x", TensorProto.INT32, [3])],
        [tensor("y", TensorProto.INT32, [3])],
    )
    (violation,) = check_model(model)
    assert violation.node == "root" and "INT32" in violation.reason


def test_enforce_raises_with_every_node_named() -> None:
    model = make_model(
        [
            helper.make_node("MatMulInteger", ["a", "b"], ["m"], name="first"),
            helper.make_node("Unique", ["f"], ["u"], name="second"),
        ],
        [
            tensor("a", TensorProto.INT8, [2, 2]),
            tensor("b", TensorProto.INT8, [2, 2]),
            tensor("f", TensorProto.FLOAT, [3]),
        ],
        [tensor("m", TensorProto.INT32, [2, 2]), tensor("u", TensorProto.FLOAT, ["n"])],
    )
    with pytest.raises(UnsupportedOpsError) as raised:
        enforce_supported(check_model(model))
    assert "'first'" in str(raised.value) and "'second'" in str(raised.value)
    assert len(raised.value.violations) == 2


def test_enforce_passes_a_clean_graph_and_stops_at_one_bad_node() -> None:
    clean = make_model(
        [helper.make_node("Sqrt", ["x"], ["y"], name="root")],
        [tensor("x", TensorProto.FLOAT, [3])],
        [tensor("y", TensorProto.FLOAT, [3])],
    )
    assert check_model(clean) == []
    enforce_supported(check_model(clean))  # no violation: returns, raises nothing
    clean.graph.node[0].op_type = "Unique"  # the same graph with one refused operator
    with pytest.raises(UnsupportedOpsError, match="'root'"):
        enforce_supported(check_model(clean))


# onnxruntime's quantizers: which recipe TensorRT can take ---------------------------------------


@pytest.fixture(scope="module")
def float_matmul(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        [tensor("x", TensorProto.FLOAT, ["batch", 16])],
        [tensor("y", TensorProto.FLOAT, ["batch", 8])],
        [weight],
        opset=17,
    )
    path = tmp_path_factory.mktemp("quant") / "float.onnx"
    onnx.save(model, str(path))
    return path


class _Calibration:
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.batches = iter([{"x": rng.standard_normal((4, 16)).astype(np.float32)}] * 4)

    def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
        return next(self.batches, None)


def test_onnxruntime_dynamic_int8_is_refused(float_matmul: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(float_matmul), str(out), weight_type=QuantType.QInt8)
    refused = {v.op_type for v in check_graph_file(out)}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= refused


def test_onnxruntime_default_static_qdq_is_refused(float_matmul: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_static

    out = tmp_path / "static_default.onnx"
    quantize_static(str(float_matmul), str(out), _Calibration(), quant_format=QuantFormat.QDQ)
    found = check_graph_file(out)
    assert any(v.op_type == "QuantizeLinear" for v in found)  # asymmetric uint8 activations


def test_onnxruntime_symmetric_int8_qdq_passes(float_matmul: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out = tmp_path / "static_symmetric.onnx"
    quantize_static(
        str(float_matmul),
        str(out),
        _Calibration(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    model = onnx.load(str(out))
    assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert check_graph_file(out) == []
