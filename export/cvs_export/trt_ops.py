"""Will TensorRT's ONNX parser take this graph? Checked here, before a GPU is ever involved.

TensorRT imports ONNX graphs through onnx-tensorrt, whose `docs/operators.md` lists the operators
it supports, the element types per operator and their restrictions. That document is kept as data
in `trt_supported_ops.json`, with the TensorRT version it describes. This module walks every node
of a graph (subgraphs of If/Loop/Scan and model-local functions included) and reports each one
TensorRT would refuse, naming the node:

- an operator the document marks unsupported (MatMulInteger and DynamicQuantizeLinear among them:
  onnxruntime's dynamic int8 recipe cannot go to TensorRT), or absent from it;
- a node in a non-standard domain (com.microsoft contrib ops such as MatMulNBits), which TensorRT
  would need a plugin for;
- an element type the document does not list for the operator;
- the mechanically checkable restrictions: Q/DQ zero-points must be 0 (TensorRT quantizes
  symmetrically; onnxruntime's default static recipe is asymmetric uint8), inputs that must be
  build-time constants, attributes that must take one value, outputs that must stay unused;
- an opset outside the range the TensorRT version imports.

The check needs only `onnx` (no TensorRT), so it runs on every machine and in the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

SUPPORTED_OPS_FILE = Path(__file__).with_name("trt_supported_ops.json")
"""TensorRT's documented ONNX operator support, as data."""
STANDARD_DOMAINS = ("", "ai.onnx")
"""Domains of the standard ONNX operators (the only ones TensorRT imports without plugins)."""

_TYPE_NAMES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.INT4: "INT4",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8",
    onnx.TensorProto.FLOAT4E2M1: "FP4",
}
_SIGNED_QUANTIZED = ("INT8", "INT4", "FP8", "FP4")
"""Element types a TensorRT Q/DQ pair may quantize to (no unsigned, asymmetric uint8)."""


class UnsupportedOpsError(ValueError):
    """A graph holds nodes TensorRT would refuse; the message lists them by node name."""

    def __init__(self, violations: Sequence[OpViolation], support: TensorRTOpSupport) -> None:
        shown = "\n".join(f"  {v}" for v in violations[:20])
        more = f"\n  … and {len(violations) - 20} more" if len(violations) > 20 else ""
        super().__init__(
            f"{len(violations)} node(s) TensorRT {support.tensorrt_version} would refuse:\n"
            f"{shown}{more}"
        )
        self.violations = tuple(violations)
        """Every violation found."""


@dataclass(frozen=True)
class OperatorSupport:
    """One row of TensorRT's operator table."""

    name: str
    """ONNX operator type."""
    supported: bool
    """Whether the parser imports it."""
    types: tuple[str, ...]
    """Element types listed for it (`FP32`, `INT64`, …)."""
    restrictions: str
    """The document's restriction text."""


@dataclass(frozen=True)
class Constraint:
    """A restriction checked mechanically (see `trt_supported_ops.json`, `constraints`)."""

    op: str
    """Operator type it applies to."""
    kind: str
    """zero_point_zero, constant_input, attribute_equals, attribute_all_ones or
    outputs_unused_from."""
    params: Mapping[str, Any]
    """The rest of the entry: input/output index, attribute name, value, default, bound."""


@dataclass(frozen=True)
class TensorRTOpSupport:
    """TensorRT's ONNX support for one TensorRT version."""

    tensorrt_version: str
    """The TensorRT version the document describes."""
    source: str
    """Where the table comes from."""
    opset_min: int
    """Lowest default-domain opset imported."""
    opset_max: int
    """Highest default-domain opset imported."""
    operators: Mapping[str, OperatorSupport]
    """Operator type → its row."""
    constraints: tuple[Constraint, ...] = field(default_factory=tuple)
    """The restrictions checked mechanically."""

    def constraints_for(self, op_type: str) -> list[Constraint]:
        """The checked restrictions of `op_type`."""
        return [c for c in self.constraints if c.op == op_type]


@lru_cache(maxsize=4)
def load_op_support(path: Path = SUPPORTED_OPS_FILE) -> TensorRTOpSupport:
    """The operator table in `path` (default: the project's TensorRT table)."""
    raw = json.loads(Path(path).read_text("utf-8"))
    operators = {
        name: OperatorSupport(
            name=name,
            supported=bool(row["supported"]),
            types=tuple(row["types"]),
            restrictions=str(row["restrictions"]),
        )
        for name, row in raw["operators"].items()
    }
    constraints = tuple(
        Constraint(
            op=entry["op"],
            kind=entry["kind"],
            params={k: v for k, v in entry.items() if k not in ("op", "kind")},
        )
        for entry in raw["constraints"]
    )
    return TensorRTOpSupport(
        tensorrt_version=str(raw["tensorrt_version"]),
        source=str(raw["source"]),
        opset_min=int(raw["opset"]["min"]),
        opset_max=int(raw["opset"]["max"]),
        operators=operators,
        constraints=constraints,
    )


@dataclass(frozen=True)
class OpViolation:
    """One node (or the model's opset) TensorRT would refuse."""

    graph: str
    """Which graph: file name or label, with the subgraph path inside it."""
    node: str
    """Node name (`#<index>` when the node has none); `-` for the model's opset."""
    op_type: str
    """Operator type (domain-qualified outside the standard domain)."""
    reason: str
    """Why TensorRT refuses it."""

    def __str__(self) -> str:
        return f"{self.graph}: node {self.node!r} ({self.op_type}): {self.reason}"


class _GraphScope:
    """What is known about the values of one (sub)graph: types, constants, consumers."""

    def __init__(
        self, graph: onnx.GraphProto, outer: _GraphScope | None, base_dir: Path | None
    ) -> None:
        self.base_dir = base_dir
        self.outer = outer
        self.types: dict[str, int] = {}
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type.tensor_type.elem_type
        self.initializers = {t.name: t for t in graph.initializer}
        for name, tensor in self.initializers.items():
            self.types.setdefault(name, tensor.data_type)
        self.constants: dict[str, onnx.TensorProto] = {}
        self.consumers: dict[str, int] = {}
        self.graph_outputs = {o.name for o in graph.output}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.constants[node.output[0]] = value
                    self.types.setdefault(node.output[0], value.data_type)
            for name in _names_read(node):
                self.consumers[name] = self.consumers.get(name, 0) + 1

    def element_type(self, name: str) -> int | None:
        """The element type of value `name`, looking through enclosing graphs."""
        scope: _GraphScope | None = self
        while scope is not None:
            if name in scope.types:
                return scope.types[name]
            scope = scope.outer
        return None

    def constant(self, name: str) -> onnx.TensorProto | None:
        """The initializer or Constant output called `name`, if it is one."""
        scope: _GraphScope | None = self
        while scope is not None:
            found = scope.initializers.get(name) or scope.constants.get(name)
            if found is not None:
                return found
            scope = scope.outer
        return None

    def constant_array(self, name: str) -> np.ndarray[Any, Any] | None:
        """The value of constant `name` (external data read from `base_dir`), or None."""
        tensor = self.constant(name)
        if tensor is None:
            return None
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor, base_dir=str(self.base_dir or "."))
        return numpy_helper.to_array(tensor)

    def is_used(self, name: str) -> bool:
        """Whether any node or the graph's outputs read `name`."""
        return bool(name) and (self.consumers.get(name, 0) > 0 or name in self.graph_outputs)


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index}"


def _type_name(elem_type: int | None) -> str | None:
    if elem_type is None or elem_type == onnx.TensorProto.UNDEFINED:
        return None
    return _TYPE_NAMES.get(elem_type, onnx.TensorProto.DataType.Name(elem_type))


def _check_type(node: onnx.NodeProto, scope: _GraphScope, row: OperatorSupport) -> str | None:
    """A reason when the node's data type is not among the types listed for its operator."""
    if not row.types:
        return None
    probe = next((name for name in node.input if name), None)
    name = probe if probe is not None else (node.output[0] if node.output else None)
    found = _type_name(scope.element_type(name)) if name else None
    if found is None:
        return None  # type unknown (no value_info): nothing to judge
    allowed = set(row.types)
    if "FP32" in allowed:
        allowed.add("DOUBLE")  # documented: DOUBLE is cast down to FLOAT
    if found not in allowed:
        return (
            f"element type {found} of {name!r} is not supported for {node.op_type} "
            f"(supported: {', '.join(row.types)})"
        )
    return None


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None


def _check_constraint(
    node: onnx.NodeProto, scope: _GraphScope, constraint: Constraint
) -> str | None:
    """A reason when `node` breaks `constraint`."""
    p = constraint.params
    if constraint.kind == "zero_point_zero":
        return _check_zero_point(node, scope, int(p["input"]), str(p["name"]))
    if constraint.kind == "constant_input":
        index = int(p["input"])
        if index >= len(node.input) or not node.input[index]:
            return None
        value = scope.constant_array(node.input[index])
        if value is None:
            return (
                f"input {p['name']} ({node.input[index]!r}) must be a build-time constant "
                "(an initializer or Constant)"
            )
        bound = p.get("below")
        if bound is not None and np.any(value >= bound):
            return f"input {p['name']} is {value.tolist()}, must be below {bound}"
        return None
    if constraint.kind == "attribute_equals":
        found = _attribute(node, str(p["attribute"]))
        if isinstance(found, bytes):
            found = found.decode()
        found = p["default"] if found is None else found
        if found != p["value"]:
            return f"attribute {p['attribute']}={found!r}, TensorRT needs {p['value']!r}"
        return None
    if constraint.kind == "attribute_all_ones":
        dilations = _attribute(node, str(p["attribute"]))
        if dilations is not None and any(int(v) != 1 for v in dilations):
            return f"attribute {p['attribute']}={list(dilations)} must be empty or all ones"
        return None
    if constraint.kind == "outputs_unused_from":
        used = [name for name in node.output[int(p["output"]) :] if scope.is_used(name)]
        if used:
            return f"output(s) {used} ({p['name']}) are used; TensorRT supports only the first"
        return None
    raise ValueError(f"unknown constraint kind {constraint.kind!r} for {constraint.op}")


def _check_zero_point(
    node: onnx.NodeProto, scope: _GraphScope, index: int, label: str
) -> str | None:
    """Q/DQ: the zero point must be a constant 0 of a signed quantized type."""
    if index >= len(node.input) or not node.input[index]:
        if node.op_type == "QuantizeLinear" and _attribute(node, "output_dtype") is None:
            # Without a zero point ONNX quantizes to uint8: asymmetric, refused by TensorRT.
            return f"no {label}: ONNX then quantizes to UINT8; TensorRT needs a signed INT8 zero 0"
        return None
    name = node.input[index]
    value = scope.constant_array(name)
    if value is None:
        return (
            f"{label} {name!r} is not a constant (computed or fed at run time): TensorRT "
            "needs a constant 0"
        )
    if np.any(value != 0):
        shown = value.reshape(-1)[:4].tolist()
        return f"{label} {name!r} is {shown}{'…' if value.size > 4 else ''}, must be 0"
    kind = _type_name(scope.element_type(name))
    if kind is not None and kind not in _SIGNED_QUANTIZED:
        return (
            f"{label} {name!r} has type {kind}; TensorRT quantizes to {'/'.join(_SIGNED_QUANTIZED)}"
        )
    return None


def _names_read(node: onnx.NodeProto) -> Iterator[str]:
    """Values `node` reads: its inputs, and what its subgraphs read from enclosing scopes."""
    yield from node.input
    for _, graph in _subgraphs(node):
        for inner in graph.node:
            yield from _names_read(inner)


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.name, attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            for i, graph in enumerate(attribute.graphs):
                yield f"{attribute.name}[{i}]", graph


def _walk(
    nodes: Sequence[onnx.NodeProto],
    scope: _GraphScope,
    label: str,
    functions: Mapping[tuple[str, str], onnx.FunctionProto],
    support: TensorRTOpSupport,
    out: list[OpViolation],
    expanding: tuple[tuple[str, str], ...] = (),
) -> None:
    for index, node in enumerate(nodes):
        name = _node_label(node, index)
        key = (node.domain, node.op_type)
        if key in functions and key not in expanding:
            # A model-local function: the parser inlines it, so its body is what must import.
            body = functions[key]
            _walk(
                body.node,
                scope,
                f"{label}/{node.op_type}()",
                functions,
                support,
                out,
                (*expanding, key),
            )
            continue
        if node.domain not in STANDARD_DOMAINS:
            out.append(
                OpViolation(
                    label,
                    name,
                    f"{node.domain}.{node.op_type}",
                    f"custom domain {node.domain!r}: TensorRT imports only "
                    "standard ONNX operators (this one would need a plugin)",
                )
            )
            continue
        row = support.operators.get(node.op_type)
        if row is None:
            out.append(
                OpViolation(
                    label,
                    name,
                    node.op_type,
                    f"not in TensorRT {support.tensorrt_version}'s operator list",
                )
            )
            continue
        if not row.supported:
            detail = f": {row.restrictions}" if row.restrictions else ""
            out.append(
                OpViolation(
                    label,
                    name,
                    node.op_type,
                    f"not supported by TensorRT {support.tensorrt_version}{detail}",
                )
            )
            continue
        reasons = [_check_type(node, scope, row)]
        reasons += [
            _check_constraint(node, scope, c) for c in support.constraints_for(node.op_type)
        ]
        out.extend(OpViolation(label, name, node.op_type, r) for r in reasons if r)
        for attribute, graph in _subgraphs(node):
            inner = _GraphScope(graph, scope, scope.base_dir)
            _walk(
                graph.node, inner, f"{label}/{name}.{attribute}", functions, support, out, expanding
            )


def check_model(
    model: onnx.ModelProto,
    *,
    label: str = "graph",
    base_dir: Path | None = None,
    support: TensorRTOpSupport | None = None,
) -> list[OpViolation]:
    """Every node of `model` (and its opset) that TensorRT would refuse; empty when none.

    `base_dir` is where external data lives (needed only to read a Q/DQ zero point stored
    outside the graph). Types come from the graph's value_info, completed by ONNX shape
    inference when it can run.
    """
    support = support or load_op_support()
    violations: list[OpViolation] = []
    opsets = {o.domain: o.version for o in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx"))
    if version is not None and not support.opset_min <= version <= support.opset_max:
        violations.append(
            OpViolation(
                label,
                "-",
                "opset",
                f"default-domain opset {version} outside TensorRT "
                f"{support.tensorrt_version}'s {support.opset_min}–{support.opset_max}",
            )
        )
    try:
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except (onnx.shape_inference.InferenceError, ValueError):
        typed = model  # inference is a convenience; the graph's own value_info still counts
    functions = {(f.domain, f.name): f for f in typed.functions}
    scope = _GraphScope(typed.graph, None, base_dir)
    _walk(typed.graph.node, scope, label, functions, support, violations)
    return violations


def check_graph_file(path: Path, support: TensorRTOpSupport | None = None) -> list[OpViolation]:
    """`check_model` on an ONNX file (its external weights are not loaded)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    return check_model(model, label=path.name, base_dir=path.parent, support=support)


def enforce_supported(
    violations: Sequence[OpViolation], support: TensorRTOpSupport | None = None
) -> None:
    """Raise UnsupportedOpsError naming every violating node, if there is any."""
    if violations:
        raise UnsupportedOpsError(violations, support or load_op_support())


def count_nodes(model: onnx.ModelProto) -> int:
    """Nodes in `model`, subgraphs and functions included (what the check walked)."""

    def in_graph(graph: onnx.GraphProto) -> int:
        total = 0
        for node in graph.node:
            total += 1 + sum(in_graph(g) for _, g in _subgraphs(node))
        return total

    return in_graph(model.graph) + sum(len(f.node) for f in model.functions)
