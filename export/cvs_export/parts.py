"""What an exportable model part is: named tensors, declared dynamic axes, tolerances.

Each family describes each part it exports (vision encoder, token embedding, decoder) with one
`PartSpec`, in the style of optimum's export configs: named inputs and outputs whose shapes name
their dynamic axes from ONE vocabulary (`AXES`), the sizes to trace at and the different sizes to
validate at, a dummy-input generator, a context manager patching what does not trace, and the
tolerance the exported part must meet against PyTorch at each precision. An axis name outside the
vocabulary is an error here; a dynamic dimension the exported graph has but the spec does not
declare (or the reverse) is an error in `onnx_export.check_graph_dims`.

The spec itself is plain data (no torch at import time), so the planner and the manifest can read
it without tracing anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal[
    "fp32",
    "fp16",
    "bf16",
    "int8-dyn",
    "int8-dyn-pc",
    "int8-dyn-pc-keep",
    "int8-dyn-pc-head",
    "int8-dyn-pc-head-r7",
    "int8-wo",
    "int8-wo-acc4",
    "int8-qdq",
    "int8-qdq-smooth",
]
PRECISIONS: tuple[Precision, ...] = (
    "fp32",
    "fp16",
    "bf16",
    "int8-dyn",
    "int8-dyn-pc",
    "int8-dyn-pc-keep",
    "int8-dyn-pc-head",
    "int8-dyn-pc-head-r7",
    "int8-wo",
    "int8-wo-acc4",
    "int8-qdq",
    "int8-qdq-smooth",
)
"""Every engine precision `cvs-export build` makes (recipes in `cvs_export.precision`)."""

ToleranceClass = Literal["fp32", "fp16", "bf16", "int8"]
TOLERANCE_CLASSES: tuple[ToleranceClass, ...] = ("fp32", "fp16", "bf16", "int8")
"""Every number format a spec states part tolerances for; each int8 recipe uses `int8`'s."""


def tolerance_class(precision: Precision) -> ToleranceClass:
    """The number format whose tolerances apply to `precision` (every int8 recipe: `int8`)."""
    if precision.startswith("int8"):
        return "int8"
    if precision not in TOLERANCE_CLASSES:
        raise PartSpecError(f"unknown precision {precision!r}; precisions: {PRECISIONS}")
    return precision  # fp32/fp16/bf16 name their own class


DType = Literal["float", "int64"]
"""`float` is the engine's activation type (float32 for fp32 engines); ids and indices are int64."""

Fill = Literal["normal", "zeros", "ones", "positions", "last_position"]
"""How a dummy input is filled: random normal, zeros, ones, 0..n-1 along the last axis, or the
last valid index of the `seq` axis (for logit indices)."""


class PartSpecError(ValueError):
    """A part spec contradicts itself or the axis vocabulary (a bug in a family module)."""


@dataclass(frozen=True)
class Axis:
    """One named dynamic axis of the shared vocabulary."""

    name: str
    """The name every spec, graph and manifest uses for this axis."""
    min: int
    """Smallest size the exported graph must accept (0 for an empty cache)."""
    meaning: str
    """What the axis counts, in words."""


AXES: Mapping[str, Axis] = {
    axis.name: axis
    for axis in (
        Axis("batch", 1, "prompts (or rows) run together"),
        Axis("tiles", 1, "image tiles run together (anyres tiles of one or more images)"),
        Axis("seq", 1, "new tokens fed in this call"),
        Axis("past", 0, "tokens already held in the key/value cache (0 for a prefill)"),
        Axis("prefix", 1, "tokens of a group's shared prefix held in a batch-1 key/value cache"),
        Axis("total", 1, "past + seq: the attention mask and the returned cache"),
        Axis("k", 1, "positions whose logits are returned"),
    )
}
"""The one vocabulary of dynamic axis names."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a part."""

    name: str
    """ONNX input/output name, also the key of the arrays the runtime passes."""
    dtype: DType
    """Element type (`float` follows the engine precision)."""
    shape: tuple[int | str, ...]
    """Static sizes as ints, dynamic ones as axis names from `AXES`."""
    fill: Fill = "normal"
    """How the dummy-input generator fills this tensor (inputs only)."""
    padded_by: str | None = None
    """For outputs: the name of a 2-D input mask (batch, axis) whose zeros mark padded positions
    along the output's axis of the same name; those positions are left out of comparisons."""

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """{dimension index: axis name} for the dynamic dimensions."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The shape with each axis name replaced by its size in `sizes`."""
        missing = [d for d in self.dynamic_axes.values() if d not in sizes]
        if missing:
            raise PartSpecError(f"{self.name}: no size given for axes {missing}")
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class Tolerance:
    """Elementwise bound |engine − pytorch| ≤ atol + rtol·|pytorch| on every compared value."""

    atol: float
    """Absolute part of the bound."""
    rtol: float
    """Relative part of the bound."""


@dataclass(frozen=True)
class PartSpec:
    """Everything needed to export and validate one part of one family."""

    name: str
    """Part name: the graph file is `<name>.onnx` and the runtime runs it by this name."""
    inputs: tuple[TensorSpec, ...]
    """Graph inputs, in the order the PyTorch wrapper's forward takes them (lists flattened)."""
    outputs: tuple[TensorSpec, ...]
    """Graph outputs, in the order the wrapper returns them."""
    trace_sizes: Mapping[str, int]
    """Axis sizes of the dummy inputs the graph is traced with."""
    check_sizes: tuple[Mapping[str, int], ...]
    """Axis sizes to validate at; every axis takes at least one size it was not traced at."""
    tolerances: Mapping[ToleranceClass, Tolerance]
    """Per number format, the elementwise bound every output must meet against PyTorch fp32."""
    grouped_inputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Wrapper arguments that are lists of tensors (the cache): argument name → input names."""
    trace_patches: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    """Context manager active while tracing: patches what does not trace as written."""

    def __post_init__(self) -> None:
        names = [t.name for t in (*self.inputs, *self.outputs)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise PartSpecError(f"part {self.name}: tensor names repeat: {repeated}")
        used: set[str] = set()
        for tensor in (*self.inputs, *self.outputs):
            for axis in tensor.dynamic_axes.values():
                if axis not in AXES:
                    raise PartSpecError(
                        f"part {self.name}: {tensor.name} uses axis {axis!r}, not in the "
                        f"vocabulary {sorted(AXES)}"
                    )
                used.add(axis)
        input_axes = {a for t in self.inputs for a in t.dynamic_axes.values()}
        if used - input_axes:
            raise PartSpecError(
                f"part {self.name}: output axes {sorted(used - input_axes)} appear in no input"
            )
        self._check_sizes_cover(used)
        input_names = {t.name for t in self.inputs}
        for tensor in self.outputs:
            if tensor.padded_by is not None and tensor.padded_by not in input_names:
                raise PartSpecError(
                    f"part {self.name}: {tensor.name} is padded_by {tensor.padded_by!r}, "
                    "which is not an input"
                )
        grouped = [n for group in self.grouped_inputs.values() for n in group]
        if set(grouped) - input_names:
            raise PartSpecError(
                f"part {self.name}: grouped inputs {sorted(set(grouped) - input_names)} unknown"
            )
        missing = [p for p in TOLERANCE_CLASSES if p not in self.tolerances]
        if missing:
            raise PartSpecError(f"part {self.name}: no tolerance for number formats {missing}")

    def _check_sizes_cover(self, used: set[str]) -> None:
        for label, sizes in [
            ("trace", self.trace_sizes),
            *(("check", s) for s in self.check_sizes),
        ]:
            if set(sizes) != used:
                raise PartSpecError(
                    f"part {self.name}: {label} sizes name axes {sorted(sizes)}, the tensors "
                    f"use {sorted(used)}"
                )
            small = [a for a, n in sizes.items() if n < AXES[a].min]
            if small:
                raise PartSpecError(f"part {self.name}: {label} sizes below the minimum: {small}")
        if not self.check_sizes:
            raise PartSpecError(f"part {self.name}: no check sizes (validate at untraced shapes)")
        never_untraced = [
            a for a in used if all(s[a] == self.trace_sizes[a] for s in self.check_sizes)
        ]
        if never_untraced:
            raise PartSpecError(
                f"part {self.name}: axes {sorted(never_untraced)} are only checked at their "
                "traced size"
            )

    @property
    def input_names(self) -> tuple[str, ...]:
        """Graph input names in order."""
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Graph output names in order."""
        return tuple(t.name for t in self.outputs)

    def tensor(self, name: str) -> TensorSpec:
        """The input or output called `name`."""
        for tensor in (*self.inputs, *self.outputs):
            if tensor.name == name:
                return tensor
        raise PartSpecError(f"part {self.name} has no tensor {name!r}")

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """optimum-style {tensor name: {dimension: axis name}} over inputs and outputs."""
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}

    def tolerance(self, precision: Precision) -> Tolerance:
        """The bound outputs must meet at `precision` (its number format's)."""
        return self.tolerances[tolerance_class(precision)]

    def dummy_inputs(
        self,
        sizes: Mapping[str, int],
        *,
        device: str = "cpu",
        seed: int = 0,
        float_dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """Inputs of the declared names, dtypes and shapes (`sizes` gives the axes); `float`
        tensors take `float_dtype` (float32 by default: the engine's activation type)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        arrays: dict[str, torch.Tensor] = {}
        for tensor in self.inputs:
            shape = tensor.concrete_shape(sizes)
            dtype = (float_dtype or torch.float32) if tensor.dtype == "float" else torch.int64
            arrays[tensor.name] = _filled(tensor.fill, shape, dtype, sizes, generator).to(device)
        return arrays

    def wrapper_arguments(self, arrays: Mapping[str, torch.Tensor]) -> tuple[object, ...]:
        """Positional arguments of the PyTorch wrapper: grouped inputs become one list."""
        grouped = {n: g for g, names in self.grouped_inputs.items() for n in names}
        arguments: list[object] = []
        seen_groups: set[str] = set()
        for tensor in self.inputs:
            group = grouped.get(tensor.name)
            if group is None:
                arguments.append(arrays[tensor.name])
            elif group not in seen_groups:
                seen_groups.add(group)
                arguments.append([arrays[n] for n in self.grouped_inputs[group]])
        return tuple(arguments)


def _filled(
    fill: Fill,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    sizes: Mapping[str, int],
    generator: torch.Generator,
) -> torch.Tensor:
    import torch

    if fill == "normal":
        return torch.randn(shape, generator=generator).to(dtype)
    if fill == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if fill == "ones":
        return torch.ones(shape, dtype=dtype)
    if fill == "positions":
        # (..., n): 0..n-1 along the last axis, offset by the cache length when there is one.
        offset = sizes.get("past", sizes.get("prefix", 0))
        return (torch.arange(shape[-1], dtype=dtype) + offset).expand(shape).contiguous()
    # last_position: every index points at the last new token.
    return torch.full(shape, sizes["seq"] - 1, dtype=dtype)
