"""Model parts → ONNX graphs sharing one external weight file.

Why this module exists: a plain `torch.onnx.export` of a loaded model holds the weights twice
(the model, plus the ONNX proto being built) and writes one weight copy per graph. Here:

- **Exporter.** `torch.onnx.export(dynamo=True)` (opset 18). The legacy TorchScript exporter is
  deprecated in torch 2.x, runs the model on real tensors while tracing, and cannot state that
  the cache axis may be empty; the dynamo exporter takes `torch.export.Dim`s with a minimum of 0
  (one decoder graph for prefill and continuation), nested dynamic shapes for the cache list, and
  traces modules on the meta device.
- **Memory.** Graphs are traced from a *meta twin* of the model (same class, same config, no
  storage), with the onnxscript optimizer off (it would try to fold meta weights). Each graph's
  initializers are named by module path, which maps them back to the twin's parameters and thus
  to the loaded model's tensor names. The weights are then streamed from the loaded model into
  one file, one tensor at a time, so export needs the loaded model plus one tensor, not 2.2×
  the weights.
- **One weight copy.** Every graph points into the same `weights.bin` (ONNX external data:
  location, offset, length); a tensor used by several graphs (a tied embedding and head) is
  written once, untransposed, because the graphs reference the parameters as the model holds
  them.
- **Declared axes.** After export every graph's input and output dimensions are compared with
  the part spec: a dynamic dimension the spec does not declare, or a declared one the exporter
  made static, is an error (`GraphSpecError`). Output dimensions get the spec's axis names.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from cvs_export.llava_next import part_module
from cvs_export.parts import AXES, PartSpec, Precision

EXPORTER = "torch.onnx.export(dynamo=True, optimize=False) on the meta device + cvs passes"
"""What wrote the graphs; recorded in the manifest."""
OPSET = 18
"""ONNX opset of every graph (the dynamo exporter's native opset)."""
WEIGHTS_FILE = "weights.bin"
"""The one external data file all graphs of an engine point into."""
ALIGNMENT = 64
"""Byte alignment of each tensor in the weight file (cache-line; pages are not needed: onnxruntime
maps the file at an aligned offset itself)."""

BFLOAT16 = "bfloat16"
"""`WeightEntry.dtype` of bfloat16 tensors (stored as raw 16-bit words)."""
SLICE_BYTES = 32 * 2**20
"""Most bytes of one tensor copied at a time while the weight file is written."""

_FLOAT_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""Precisions exported as a float graph of another type; every other precision exports fp32
(the int8 recipes quantize the fp32 graph afterwards, `cvs_export.quantize`)."""


class GraphSpecError(ValueError):
    """An exported graph does not have the inputs, outputs or dynamic axes its spec declares."""


class ExportError(RuntimeError):
    """Export could not map a graph's weights to the model's tensors, or was asked the unbuilt."""


@dataclass(frozen=True)
class WeightEntry:
    """Where one model tensor lies in the weight file."""

    offset: int
    """Byte offset in `weights.bin`."""
    length: int
    """Bytes."""
    dtype: str
    """numpy dtype name as stored (`bfloat16`, which numpy lacks, is written as its raw 16 bits)."""
    shape: tuple[int, ...]
    """Shape as stored (the model's own layout; never transposed)."""


@dataclass(frozen=True)
class ExportedPart:
    """One graph written to the engine folder."""

    name: str
    """Part name (spec name)."""
    file: str
    """Graph file name inside the engine folder."""
    seconds: float
    """Time to trace and translate this graph."""
    tensors: tuple[str, ...]
    """Model tensor names the graph reads from the weight file."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_parts` wrote."""

    parts: dict[str, ExportedPart]
    """Per part, its graph."""
    weights: dict[str, WeightEntry]
    """Model tensor name → location in the weight file (each tensor once)."""
    weight_bytes: int
    """Size of the weight file."""
    seconds: float
    """Total export time (graphs and weights)."""


def engine_dtype(precision: Precision) -> torch.dtype:
    """The torch dtype the exported graph's weights and activations take at `precision`:
    float16/bfloat16 for fp16/bf16, float32 otherwise (int8 recipes quantize an fp32 graph)."""
    from cvs_export.parts import PRECISIONS

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    return _FLOAT_DTYPES.get(precision, torch.float32)


def meta_twin(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A storage-free copy of `model` (same class and config, tied like it) on the meta device."""
    config = copy.deepcopy(model.config)
    with torch.device("meta"):
        twin = type(model)(config)
    return twin.to(dtype).eval()


def canonical_tensor_names(module: nn.Module) -> dict[int, str]:
    """id(tensor) → the first name the module gives it (tied tensors share one name)."""
    names: dict[int, str] = {}
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        names.setdefault(id(tensor), name)
    return names


def dynamic_shapes_for(spec: PartSpec) -> tuple[Any, ...]:
    """torch.export dynamic shapes for the wrapper's positional arguments, from the spec."""
    dims = {name: torch.export.Dim(name, min=axis.min) for name, axis in AXES.items()}
    grouped = {n: g for g, names in spec.grouped_inputs.items() for n in names}

    def shape_of(name: str) -> dict[int, Any] | None:
        axes = spec.tensor(name).dynamic_axes
        return {i: dims[a] for i, a in axes.items()} or None

    shapes: list[Any] = []
    seen: set[str] = set()
    for tensor in spec.inputs:
        group = grouped.get(tensor.name)
        if group is None:
            shapes.append(shape_of(tensor.name))
        elif group not in seen:
            seen.add(group)
            shapes.append([shape_of(n) for n in spec.grouped_inputs[group]])
    return tuple(shapes)


def trace_part(model_twin: nn.Module, spec: PartSpec, *, opset: int = OPSET) -> ir.Model:
    """Trace one part of a meta twin into an ONNX IR model (initializers without data)."""
    wrapper = part_module(model_twin, spec.name)
    dtype = next(model_twin.parameters()).dtype
    arrays = spec.dummy_inputs(spec.trace_sizes, device="meta", float_dtype=dtype)
    with spec.trace_patches(), quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            spec.wrapper_arguments(arrays),
            dynamo=True,
            optimize=False,
            opset_version=opset,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_shapes=dynamic_shapes_for(spec),
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError(f"part {spec.name}: the exporter returned nothing")
    model: ir.Model = program.model
    _attach_sources(model, wrapper, canonical_tensor_names(model_twin), spec.name)
    fold_weight_transposes(model)
    optimize_without_weights(model)
    check_graph_dims(model, spec)
    strip_trace_metadata(model)
    return model


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known noise in torch 2.13 (it is not about our graphs): Dim names
    it reuses, a pytree deprecation, and "torchvision is not installed" for ops we never use."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def strip_trace_metadata(model: ir.Model) -> None:
    """Drop the exporter's per-node provenance (stack traces, FX nodes): ~1.5 kB per node, most
    of a small model's graph file, and of no use to a runtime."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()
        node.doc_string = None


def _attach_sources(
    model: ir.Model, wrapper: nn.Module, canonical: Mapping[int, str], part: str
) -> None:
    """Name each initializer after the model tensor it is (tied tensors: the first name).

    The same tensor then has the same name in every graph, and no initializer can collide
    with an input or output name (the model's are dotted module paths).
    """
    by_path = dict(
        (
            *wrapper.named_parameters(remove_duplicate=False),
            *wrapper.named_buffers(remove_duplicate=False),
        )
    )
    io_names = {v.name for v in (*model.graph.inputs, *model.graph.outputs)}
    for name, value in list(model.graph.initializers.items()):
        tensor = by_path.get(name)
        if tensor is None or id(tensor) not in canonical:
            raise ExportError(
                f"part {part}: graph initializer {name!r} is no parameter or buffer of the model "
                "(a constant the exporter created from weights?)"
            )
        source = canonical[id(tensor)]
        if source in io_names:
            raise ExportError(f"part {part}: model tensor {source!r} shadows a graph input/output")
        value.name = source
        value.metadata_props["cvs.source"] = source


TRANSPOSED = ".T"
"""Suffix of a weight stored transposed (key in the weight file and initializer name)."""


def fold_weight_transposes(model: ir.Model) -> None:
    """Replace `Transpose(W)` of a 2-D model weight by an initializer holding Wᵀ.

    The exporter writes every linear layer as MatMul(x, Transpose(W)). Left in the graph,
    onnxruntime folds each Transpose at load into a private copy per session, so no two sessions
    could share weight pages. Folded here, Wᵀ is written once by `write_weights` (streamed, one
    tensor at a time). A weight read both ways would be stored twice; the embedding part gathers
    columns of Wᵀ so that a tied head and embedding stay one tensor.
    """
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[0]
        if weight is None or not weight.is_initializer() or weight.shape is None:
            continue
        source = weight.metadata_props.get("cvs.source")
        perm = node.attributes.get("perm")
        order = list(perm.as_ints()) if perm is not None else [1, 0]
        if source is None or len(weight.shape) != 2 or order != [1, 0]:
            continue
        name = source + TRANSPOSED
        folded = graph.initializers.get(name)
        if folded is None:
            rows, cols = weight.shape
            dtype = weight.dtype if weight.dtype is not None else ir.DataType.FLOAT
            folded = ir.Value(
                name=name,
                shape=ir.Shape([cols, rows]),
                type=weight.type,
                # Placeholder, never read: `_point_into_weights` sets the real location.
                const_value=ir.ExternalTensor(
                    WEIGHTS_FILE, 0, 0, dtype, shape=ir.Shape([cols, rows]), name=name
                ),
                metadata_props={"cvs.source": source, "cvs.transposed": "1"},
            )
            graph.register_initializer(folded)
        node.outputs[0].replace_all_uses_with(folded)
        graph.remove(node, safe=True)
        if not weight.uses() and weight.name is not None:
            graph.initializers.pop(weight.name)


def weight_key(value: ir.Value) -> str:
    """The weight-file key of a weight initializer: its source name, `.T` when transposed."""
    source = value.metadata_props["cvs.source"]
    return source + TRANSPOSED if value.metadata_props.get("cvs.transposed") else source


def optimize_without_weights(model: ir.Model) -> None:
    """Fold constants, drop dead code and common subexpressions, with weights hidden.

    The passes never see a weight value, so they can neither fold a weight into a new copy nor
    read the meta tensors; they fold the shape arithmetic the exporter emits (641 → ~230 nodes
    on a 2-layer decoder). New small constants stay in the graph. onnxscript's pattern
    rewriter is left out: it took most of smol's export time (minutes for 30 layers) and
    onnxruntime applies its own fusions at load.
    """
    import onnx_ir.passes.common as common
    import onnxscript.optimizer

    for value in model.graph.initializers.values():
        if "cvs.source" in value.metadata_props:
            value.const_value = None
    quiet = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)  # "skipped deduplication ... no constant value": intended
    try:
        onnxscript.optimizer.inline(model)
        for _ in range(2):
            onnxscript.optimizer.fold_constants(model)
            common.RemoveUnusedNodesPass()(model)
        ir.passes.Sequential(
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.CommonSubexpressionEliminationPass(),
            common.RemoveUnusedNodesPass(),
        )(model)
    finally:
        quiet.setLevel(previous)


def check_graph_dims(model: ir.Model, spec: PartSpec) -> None:
    """Raise GraphSpecError unless the graph's tensors match the spec; name output axes."""
    for kind, values, tensors in (
        ("input", model.graph.inputs, spec.inputs),
        ("output", model.graph.outputs, spec.outputs),
    ):
        names = [v.name for v in values]
        if names != [t.name for t in tensors]:
            raise GraphSpecError(
                f"part {spec.name}: graph {kind}s {names} differ from the spec's "
                f"{[t.name for t in tensors]}"
            )
        for value, tensor in zip(values, tensors, strict=True):
            if value.shape is None or len(value.shape) != len(tensor.shape):
                raise GraphSpecError(
                    f"part {spec.name}: {kind} {tensor.name} has shape {value.shape}, the spec "
                    f"declares {tensor.shape}"
                )
            renamed: list[int | str] = []
            for i, (got, want) in enumerate(zip(value.shape, tensor.shape, strict=True)):
                got_static = isinstance(got, int)
                if isinstance(want, int):
                    if not got_static or got != want:
                        raise GraphSpecError(
                            f"part {spec.name}: {kind} {tensor.name} dimension {i} is {got} in "
                            f"the graph but {want} in the spec (undeclared dynamic axis?)"
                        )
                    renamed.append(want)
                else:
                    if got_static:
                        raise GraphSpecError(
                            f"part {spec.name}: {kind} {tensor.name} dimension {i} is declared "
                            f"dynamic ({want}) but the exporter made it static ({got})"
                        )
                    if kind == "input" and str(got) != want:
                        raise GraphSpecError(
                            f"part {spec.name}: input {tensor.name} dimension {i} is named "
                            f"{got} in the graph, {want} in the spec"
                        )
                    renamed.append(want)
            value.shape = ir.Shape(renamed)


def export_parts(
    model: nn.Module,
    specs: Mapping[str, PartSpec],
    out_dir: Path,
    *,
    precision: Precision = "fp32",
    opset: int = OPSET,
) -> ExportResult:
    """Export every part of `model` into `out_dir`: `<part>.onnx` graphs and one weight file."""
    start = time.perf_counter()
    dtype = engine_dtype(precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    twin = meta_twin(model, dtype)
    graphs: dict[str, ir.Model] = {}
    seconds: dict[str, float] = {}
    for name, spec in specs.items():
        began = time.perf_counter()
        graphs[name] = trace_part(twin, spec, opset=opset)
        seconds[name] = time.perf_counter() - began
        gc.collect()  # the exporter's program and tracer state, before the next graph
    del twin
    needed = _tensor_order(graphs.values())
    weights = write_weights(model, needed, out_dir / WEIGHTS_FILE, dtype)
    parts: dict[str, ExportedPart] = {}
    for name, graph in graphs.items():
        used = _point_into_weights(graph, weights, out_dir)
        file = f"{name}.onnx"
        ir.save(graph, out_dir / file)
        parts[name] = ExportedPart(name=name, file=file, seconds=seconds[name], tensors=used)
    return ExportResult(
        parts=parts,
        weights=weights,
        weight_bytes=(out_dir / WEIGHTS_FILE).stat().st_size,
        seconds=time.perf_counter() - start,
    )


def _tensor_order(graphs: Iterable[ir.Model]) -> list[str]:
    order: dict[str, None] = {}
    for graph in graphs:
        for value in graph.graph.initializers.values():
            if "cvs.source" in value.metadata_props:
                order.setdefault(weight_key(value), None)
    return list(order)


def write_weights(
    model: nn.Module, keys: list[str], path: Path, dtype: torch.dtype
) -> dict[str, WeightEntry]:
    """Stream the tensors of `model` named by `keys` into `path`, each once.

    A key is a tensor name, with `.T` when the graphs read it transposed; floats are cast to
    `dtype`. At most one slice of a tensor (`SLICE_BYTES`) is copied at a time.
    """
    tensors = dict(
        (
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        )
    )
    sources = {k: k.removesuffix(TRANSPOSED) if k.endswith(TRANSPOSED) else k for k in keys}
    missing = [k for k, source in sources.items() if source not in tensors]
    if missing:
        raise ExportError(f"the model has no tensors {missing[:5]} that the graphs read")
    entries: dict[str, WeightEntry] = {}
    offset = 0
    with path.open("wb") as out:
        for key in keys:
            tensor = tensors[sources[key]].detach()
            view = tensor.t() if key != sources[key] else tensor  # a view: nothing copied yet
            padding = -offset % ALIGNMENT
            out.write(b"\0" * padding)
            offset += padding
            length, stored = _write_in_slices(out, view, dtype)
            entries[key] = WeightEntry(
                offset=offset, length=length, dtype=stored, shape=tuple(view.shape)
            )
            offset += length
    return entries


def _write_in_slices(out: Any, view: torch.Tensor, dtype: torch.dtype) -> tuple[int, str]:
    """Write `view` (floats cast to `dtype`) row block by row block; (bytes, stored dtype).

    A transposed or cast copy exists only for one block of at most `SLICE_BYTES` at a time, so
    writing adds a few MiB to memory, not a copy of the largest tensor.
    """
    target = dtype if view.is_floating_point() else view.dtype
    if view.dim() == 0:
        view = view.reshape(1)
    row_bytes = max(1, view[0].numel() * target.itemsize)
    step = max(1, SLICE_BYTES // row_bytes)
    written = 0
    stored = "float32"
    for start in range(0, view.shape[0], step):
        cast = view[start : start + step].to(target).contiguous().cpu()
        if target == torch.bfloat16:  # numpy has no bfloat16: write the raw bits
            block = cast.view(torch.int16).numpy()
            stored = BFLOAT16
        else:
            block = cast.numpy()
            stored = block.dtype.name
        block.tofile(out)
        written += block.nbytes
    return written, stored


def _point_into_weights(
    graph: ir.Model, weights: Mapping[str, WeightEntry], out_dir: Path
) -> tuple[str, ...]:
    used: list[str] = []
    for value in graph.graph.initializers.values():
        if "cvs.source" not in value.metadata_props:
            # A small constant the optimizer folded from shape arithmetic: it stays in the graph.
            if value.const_value is None:
                raise ExportError(f"initializer {value.name} has neither a source nor a value")
            continue
        source = weight_key(value)
        entry = weights[source]
        if value.shape is not None and tuple(value.shape) != entry.shape:
            raise ExportError(
                f"initializer {value.name} has shape {value.shape} in the graph, {entry.shape} "
                f"in the model ({source})"
            )
        value.const_value = ir.ExternalTensor(
            WEIGHTS_FILE,
            entry.offset,
            entry.length,
            ir.DataType.BFLOAT16
            if entry.dtype == BFLOAT16
            else ir.DataType.from_numpy(np.dtype(entry.dtype)),
            shape=ir.Shape(entry.shape),
            name=value.name or source,
            base_dir=out_dir,
        )
        used.append(source)
    return tuple(used)
