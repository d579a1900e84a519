"""Plan an export without weights: parameters, parts, shapes, file sizes, peak memory.

The model is instantiated on the meta device from the family's config (no storage, a fraction of
a second even for 72B), and each part wrapper says which tensors its graph reads. From that:
the parameter count, each part's tensors and input/output shapes, the size of the shared weight
file and the graphs, and the memory the export will need at its peak.

The memory model follows `onnx_export`: graphs are traced from a meta twin (no weight copy) and
the weights are streamed into the file in slices, so the export peak is the loaded model, plus
one slice being transposed or cast, plus the exporter's own state: a fixed part (its modules and
op registry, loaded on first use) and the traced graphs, which grow with the number of layers,
not with their width. The build prints the measured peak (from /proc, RSS high-water mark) next
to this prediction.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvs_export.llava_next import PART_NAMES, as_config, dims_of, part_specs, part_tensors
from cvs_export.onnx_export import SLICE_BYTES, engine_dtype
from cvs_export.parts import Precision

TRACE_BYTES_PER_LAYER = 8 * 2**20
"""Tracer and ONNX IR state per decoder or vision layer while exporting (measured on smol:
≈ 220 MB over 30 + 2 layers)."""
EXPORTER_BYTES = 128 * 2**20
"""The exporter's modules and op registry, loaded on first use (measured ≈ 0.1 GiB)."""
GRAPH_BYTES_PER_LAYER = 24 * 2**10
"""Serialized graph size per layer without weights (smol: 660 kB for 30 decoder layers)."""
GRAPH_BYTES_BASE = 16 * 2**10
"""Serialized graph size of a part besides its layers."""
MANIFEST_BYTES = 64 * 2**10
"""Generous size of manifest.json."""


@dataclass(frozen=True)
class PartPlan:
    """One part of a planned engine."""

    name: str
    """Part name."""
    params: int
    """Elements of the tensors its graph reads."""
    weight_bytes: int
    """Their bytes at the engine precision."""
    graph_bytes: int
    """Predicted size of its graph file (no weights)."""
    inputs: list[tuple[str, tuple[int | str, ...]]]
    """(name, shape) of each input; axis names for dynamic sizes."""
    outputs: list[tuple[str, tuple[int | str, ...]]]
    """(name, shape) of each output."""


@dataclass(frozen=True)
class ExportPlan:
    """A planned engine and the memory its export needs."""

    family: str
    """Family name."""
    precision: Precision
    """Engine precision."""
    params: int
    """Parameters of the whole model (meta device)."""
    model_bytes: int
    """The loaded model at the engine precision (every parameter and buffer, ties once)."""
    parts: list[PartPlan]
    """The parts."""
    weights_file_bytes: int
    """The shared weight file: the union of the parts' tensors, each once."""
    engine_bytes: int
    """Weight file + graphs + manifest."""
    largest_tensor_bytes: int
    """The largest single tensor (written in slices, never copied whole)."""
    predicted_export_peak_bytes: int
    """Predicted resident memory of the export above the process baseline: the loaded model,
    one write slice, and the exporter's fixed and per-layer state."""
    layers: int
    """Decoder plus vision layers traced."""

    def table(self) -> str:
        """The plan as text."""
        gib = 2**30
        lines = [
            f"{self.family} at {self.precision}: {self.params / 1e9:.3f}B parameters, "
            f"model {self.model_bytes / gib:.2f} GiB in memory",
            f"{'part':<10} {'params':>14} {'weights GiB':>12} {'graph MiB':>10}  shapes",
        ]
        for part in self.parts:
            shapes = "; ".join(
                f"{n} {_shape(s)}" for n, s in (*part.inputs[:4], ("→", ()), *part.outputs[:2])
            )
            more = len(part.inputs) - 4
            lines.append(
                f"{part.name:<10} {part.params:>14,} {part.weight_bytes / gib:>12.3f} "
                f"{part.graph_bytes / 2**20:>10.2f}  {shapes}"
                + (f" (+{more} cache inputs/outputs)" if more > 0 else "")
            )
        lines += [
            f"engine folder: {self.engine_bytes / gib:.3f} GiB (weight file "
            f"{self.weights_file_bytes / gib:.3f} GiB, one copy shared by all parts)",
            f"export peak above baseline: {self.predicted_export_peak_bytes / gib:.2f} GiB = "
            f"model {self.model_bytes / gib:.2f} + write slice {SLICE_BYTES / gib:.2f} + "
            f"exporter {EXPORTER_BYTES / gib:.2f} + tracing {self.layers} layers "
            f"{self.layers * TRACE_BYTES_PER_LAYER / gib:.2f} "
            f"({self.predicted_export_peak_bytes / self.weights_file_bytes:.2f}× the weights)",
        ]
        return "\n".join(lines)


def _shape(shape: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if shape else ""


def _bytes(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    size = dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
    return int(tensor.numel()) * int(size)


def plan_export(
    family: str, config: Mapping[str, Any], precision: Precision = "fp32"
) -> ExportPlan:
    """Plan the engine of a family's config at `precision`, on the meta device."""
    from transformers import LlavaNextForConditionalGeneration

    dtype = engine_dtype(precision)
    cfg = as_config(config)
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(cfg)
    everything = {id(t): t for t in (*model.parameters(), *model.buffers())}  # ties counted once
    specs = part_specs(cfg)
    dims = dims_of(cfg)
    layer_counts = {
        "vision": dims.vision_layers_run,
        "embedding": 0,
        "decoder": dims.layers,
        "suffix": dims.layers,
    }
    parts: list[PartPlan] = []
    union: dict[int, torch.Tensor] = {}
    for name in PART_NAMES:
        tensors = part_tensors(model, name)
        union.update((id(t), t) for t in tensors.values())
        spec = specs[name]
        parts.append(
            PartPlan(
                name=name,
                params=sum(int(t.numel()) for t in tensors.values()),
                weight_bytes=sum(_bytes(t, dtype) for t in tensors.values()),
                graph_bytes=GRAPH_BYTES_BASE + GRAPH_BYTES_PER_LAYER * layer_counts[name],
                inputs=[(t.name, t.shape) for t in spec.inputs],
                outputs=[(t.name, t.shape) for t in spec.outputs],
            )
        )
    weights_file = sum(_bytes(t, dtype) for t in union.values())
    model_bytes = sum(_bytes(t, dtype) for t in everything.values())
    largest = max(_bytes(t, dtype) for t in union.values())
    layers = sum(layer_counts.values())  # every traced graph's layers (decoder and suffix alike)
    return ExportPlan(
        family=family,
        precision=precision,
        params=sum(int(p.numel()) for p in model.parameters()),
        model_bytes=model_bytes,
        parts=parts,
        weights_file_bytes=weights_file,
        engine_bytes=weights_file + sum(p.graph_bytes for p in parts) + MANIFEST_BYTES,
        largest_tensor_bytes=largest,
        predicted_export_peak_bytes=(
            model_bytes + SLICE_BYTES + EXPORTER_BYTES + layers * TRACE_BYTES_PER_LAYER
        ),
        layers=layers,
    )


class PeakMemory:
    """Resident-memory high-water mark of this process over a phase (Linux /proc).

    `start()` resets the kernel's peak (VmHWM, via /proc/self/clear_refs) where allowed;
    `peak()` reads it. Without that reset the peak is the process lifetime's (getrusage).
    """

    def __init__(self) -> None:
        self.resettable = False
        """Whether the phase peak could be reset (else lifetime peak)."""

    def start(self) -> int:
        """Reset the peak; return the current resident memory (bytes)."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        return _status_field("VmRSS")

    def peak(self) -> int:
        """Peak resident memory (bytes) since `start`, or over the process lifetime."""
        if self.resettable:
            return _status_field("VmHWM")
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _status_field(name: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
