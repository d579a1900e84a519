"""int8 engines: an fp32 export quantized by onnxruntime.quantization, recipe by recipe.

Why this module exists: the int8 recipes differ only in how the decoder's weight MatMuls are
rewritten, so one function takes a finished fp32 engine folder and writes an int8 one:

- the vision and embedding graphs stay fp32; onnx rewrites them with their weights into one
  `weights.bin` (they share no tensor with each other);
- the two language-model graphs (`decoder`, which runs each group's prefix, and `suffix`, which
  scores the questions against it) are quantized by onnxruntime one after the other, then their
  initializers are merged by name and content into one external data file, `int8-weights.bin`:
  both graphs read the same quantized weights, stored once (int8 weights, plus fp32 for the
  layers a recipe keeps). A tied embedding/head is stored twice when the head stays fp32: the
  format of a quantized graph cannot point into another graph's fp32 tensor. The manifest states
  the folder size.

Only MatMuls whose second input is a weight are quantized (attention's activation × activation
products stay float), and a recipe's `keep` groups (`precision.KEEP_GROUPS`) are excluded by
weight name. The static Q/DQ recipe is symmetric int8 for activations and weights (zero-points
0: TensorRT's form), calibrated with MinMax on real survey prompts, one prompt per calibration
call. SmoothQuant (Xiao et al. 2023) migrates activation outliers into the weights before
export: per input channel j of the q/k/v and gate/up projections, s_j = max|X_j|^α /
max|W_j|^(1−α); the preceding RMSNorm's weight is divided by s and the projections' columns
multiplied by it, which leaves the fp32 function unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx.external_data_helper import set_external_data
from torch import nn

from cvs_export.precision import KEEP_GROUPS, QuantizedRecipe

QUANTIZED_PARTS = ("decoder", "suffix")
"""The parts the int8 recipes quantize (the language model's two graphs)."""
INT8_WEIGHTS = "int8-weights.bin"
"""The one external data file of the quantized graphs."""
INLINE_BYTES = 1024
"""Initializers smaller than this stay inside their graph (shape constants, scalars)."""
FLOAT_WEIGHTS = "weights.bin"
"""The fp32 parts' weight file in an int8 engine."""
WEIGHT_ONLY_BLOCK = 32
"""Weights per scale and zero-point in the weight-only recipe (MatMulNBits block size, along
the input dimension). Asymmetric blocks measured better than symmetric ones on smol (mean JS
0.009 vs 0.017 on 96 survey prompts) — but smol's weights come from a Q4_1 GGUF, whose
asymmetric 32-weight blocks an asymmetric 8-bit block-32 grid nearly contains: on a bf16
checkpoint the gap will be smaller."""


class QuantizeError(RuntimeError):
    """A recipe could not be applied (no calibration data, an unknown keep group, …)."""


@dataclass(frozen=True)
class QuantizedDecoder:
    """What quantization did to the decoder."""

    quantized: tuple[str, ...]
    """Weight names of the MatMuls quantized."""
    kept: tuple[str, ...]
    """Weight names of the MatMuls left in fp32 by the recipe's `keep`."""


def weight_matmuls(model: onnx.ModelProto) -> dict[str, str]:
    """MatMul node name → the weight (initializer) it multiplies by."""
    initializers = {i.name for i in model.graph.initializer}
    return {
        node.name: node.input[1]
        for node in model.graph.node
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in initializers
    }


def kept_nodes(matmuls: Mapping[str, str], keep: Sequence[str]) -> list[str]:
    """Node names of `matmuls` whose weight belongs to one of the `keep` groups."""
    unknown = [g for g in keep if g not in KEEP_GROUPS]
    if unknown:
        raise QuantizeError(f"unknown keep groups {unknown}; groups: {sorted(KEEP_GROUPS)}")
    patterns = [p for g in keep for p in KEEP_GROUPS[g]]
    return [node for node, weight in matmuls.items() if any(p in weight for p in patterns)]


def copy_float_parts(source: Path, staging: Path, parts: Mapping[str, str]) -> None:
    """Rewrite the unquantized graphs of `source` with their fp32 weights in `weights.bin`."""
    for part, file in parts.items():
        if part in QUANTIZED_PARTS:
            continue
        model = onnx.load(str(source / file))  # external data loaded
        onnx.save_model(
            model,
            str(staging / file),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=FLOAT_WEIGHTS,
            size_threshold=1024,  # shape constants stay inline: onnxruntime folds them at load
        )


@dataclass
class CalibrationFeeds:
    """onnxruntime CalibrationDataReader over one part's feeds: one prompt per call."""

    feeds: Sequence[Mapping[str, NDArray[Any]]]
    """The part's inputs, one prompt each (batch 1)."""
    _next: int = 0

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        """The next prompt's feeds, or None when all were given."""
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return dict(self.feeds[self._next - 1])

    def rewind(self) -> None:
        """Start again from the first prompt."""
        self._next = 0

    def __iter__(self) -> Iterator[dict[str, NDArray[Any]]]:
        return (dict(f) for f in self.feeds)


class _QuantizerChatter(logging.Filter):
    """Drops records up to WARNING that onnxruntime.quantization's own files log."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or not record.pathname.startswith(self.folder)


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs every node at INFO (and a warning per skipped node) through
    the root logger: for the duration of one call, drop its records up to WARNING and raise its
    named loggers to ERROR, leaving every other logger and the process's settings as they were."""
    import onnxruntime.quantization

    root = logging.getLogger()
    named = logging.getLogger("onnxruntime.quantization")
    chatter = _QuantizerChatter(str(Path(onnxruntime.quantization.__file__).parent))
    previous = named.level
    root.addFilter(chatter)
    named.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(chatter)
        named.setLevel(previous)


def quantize_part(
    source: Path,
    staging: Path,
    part: str,
    recipe: QuantizedRecipe,
    *,
    calibration: Sequence[Mapping[str, NDArray[Any]]] = (),
) -> QuantizedDecoder:
    """Quantize `source/<part>.onnx` by `recipe` into `staging/<part>.onnx` (+ its data)."""
    if recipe.needs_calibration and not calibration:
        raise QuantizeError(f"{recipe.name}: static Q/DQ needs calibration prompts")
    # A loaded proto, not the path: given a path, onnxruntime writes its shape-inferred copy
    # beside the source graph, i.e. into the fp32 engine folder.
    graph = onnx.load(str(source / f"{part}.onnx"))
    matmuls = weight_matmuls(graph)
    excluded = kept_nodes(matmuls, recipe.keep)
    chosen = [n for n in matmuls if n not in excluded]
    with quiet_quantizer():
        recipe.quantize_graph(
            graph,
            staging / f"{part}.onnx",
            chosen=chosen,
            excluded=excluded,
            calibration=calibration,
        )
    return QuantizedDecoder(
        quantized=tuple(matmuls[n] for n in chosen),
        kept=tuple(matmuls[n] for n in excluded),
    )


def quantize_dynamic_graph(
    graph: onnx.ModelProto,
    out_path: Path,
    chosen: Sequence[str],
    *,
    per_channel: bool,
    reduce_range: bool,
) -> None:
    """Dynamic int8 MatMulInteger on the `chosen` weight MatMuls."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        graph,
        out_path,
        op_types_to_quantize=["MatMul"],
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=list(chosen),
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_qdq_graph(
    graph: onnx.ModelProto,
    out_path: Path,
    chosen: Sequence[str],
    calibration: Sequence[Mapping[str, NDArray[Any]]],
    *,
    per_channel: bool,
) -> None:
    """Static symmetric int8 Q/DQ on the `chosen` weight MatMuls, MinMax over `calibration`."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(
        graph,
        out_path,
        CalibrationFeeds(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=list(chosen),
        use_external_data_format=True,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "MatMulConstBOnly": True,
        },
    )


def quantize_weight_only_graph(
    graph: onnx.ModelProto, out_path: Path, excluded: Sequence[str], accuracy_level: int | None
) -> None:
    """Weight-only 8-bit MatMulNBits on every weight MatMul but the `excluded` ones."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=WEIGHT_ONLY_BLOCK,
        is_symmetric=False,
        bits=8,
        accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(
        graph,
        bits=8,
        block_size=WEIGHT_ONLY_BLOCK,
        is_symmetric=False,
        accuracy_level=accuracy_level,
        nodes_to_exclude=list(excluded),
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_path), use_external_data_format=True)


def share_quantized_weights(staging: Path, parts: Sequence[str]) -> int:
    """Merge the external data of the quantized graphs of `parts` into `INT8_WEIGHTS`, each
    initializer stored once by (name, content); returns the bytes written. The graphs' own data
    files are removed."""
    written: dict[tuple[str, str], tuple[int, int]] = {}
    offset = 0
    old_files = {
        p.name
        for p in staging.iterdir()
        if p.is_file() and p.suffix != ".onnx" and p.name != FLOAT_WEIGHTS
    }
    merged = staging / (INT8_WEIGHTS + ".partial")
    with merged.open("wb") as out:
        for part in parts:
            path = staging / f"{part}.onnx"
            model = onnx.load(str(path))  # external data read in
            for tensor in model.graph.initializer:
                raw = tensor.raw_data
                if not raw or len(raw) < INLINE_BYTES:
                    continue
                key = (tensor.name, hashlib.sha256(raw).hexdigest())
                if key not in written:
                    padding = -offset % 64
                    out.write(b"\0" * padding)
                    offset += padding
                    out.write(raw)
                    written[key] = (offset, len(raw))
                    offset += len(raw)
                where, length = written[key]
                set_external_data(tensor, INT8_WEIGHTS, offset=where, length=length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            onnx.save_model(model, str(path))
    for name in old_files:
        (staging / name).unlink()
    merged.rename(staging / INT8_WEIGHTS)
    unknown = [
        p.name
        for p in staging.iterdir()
        if p.is_file() and p.name not in {INT8_WEIGHTS, FLOAT_WEIGHTS} and p.suffix != ".onnx"
    ]
    if unknown:
        raise QuantizeError(f"{staging}: unexpected data files after merging: {unknown}")
    return offset


def build_int8_folder(
    source: Path,
    staging: Path,
    recipe: QuantizedRecipe,
    parts: Mapping[str, str],
    *,
    calibration: Mapping[str, Sequence[Mapping[str, NDArray[Any]]]] | None = None,
) -> QuantizedDecoder:
    """An int8 engine folder in `staging` from the fp32 engine graphs in `source`;
    `calibration` gives each quantized part its own feeds (static Q/DQ only)."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    copy_float_parts(source, staging, parts)
    done = [
        quantize_part(source, staging, part, recipe, calibration=(calibration or {}).get(part, ()))
        for part in QUANTIZED_PARTS
        if part in parts
    ]
    share_quantized_weights(staging, [p for p in QUANTIZED_PARTS if p in parts])
    return QuantizedDecoder(
        quantized=tuple(dict.fromkeys(w for d in done for w in d.quantized)),
        kept=tuple(dict.fromkeys(w for d in done for w in d.kept)),
    )


# SmoothQuant ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothedPair:
    """One norm → projections pair whose scales were migrated."""

    norm: str
    """Module path of the RMSNorm whose weight was divided by s."""
    projections: tuple[str, ...]
    """Module paths of the linears whose input columns were multiplied by s."""
    max_scale: float
    """Largest s_j (how much an outlier channel was tamed)."""


def smoothing_pairs(model: nn.Module) -> list[tuple[str, nn.Module, list[tuple[str, nn.Linear]]]]:
    """(norm path, norm, [(path, linear)…]) for every decoder layer: input_layernorm → q/k/v,
    post_attention_layernorm → gate/up (Llama and Qwen2 layers alike)."""
    pairs: list[tuple[str, nn.Module, list[tuple[str, nn.Linear]]]] = []
    for path, module in model.named_modules():
        attention = getattr(module, "self_attn", None)
        mlp = getattr(module, "mlp", None)
        if attention is None or mlp is None or not hasattr(module, "input_layernorm"):
            continue
        pairs.append(
            (
                f"{path}.input_layernorm",
                module.input_layernorm,
                [
                    (f"{path}.self_attn.{n}", getattr(attention, n))
                    for n in ("q_proj", "k_proj", "v_proj")
                ],
            )
        )
        pairs.append(
            (
                f"{path}.post_attention_layernorm",
                module.post_attention_layernorm,
                [(f"{path}.mlp.{n}", getattr(mlp, n)) for n in ("gate_proj", "up_proj")],
            )
        )
    return pairs


def input_channel_maxima(
    model: nn.Module, prompts: Sequence[NDArray[np.int64]], linears: Sequence[nn.Linear]
) -> dict[int, torch.Tensor]:
    """id(linear) → max |input| per input channel over every token of `prompts` (text only)."""
    maxima: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0)  # (in,)
        key = id(module)
        maxima[key] = seen if key not in maxima else torch.maximum(maxima[key], seen)

    handles = [linear.register_forward_pre_hook(hook) for linear in linears]
    try:
        with torch.no_grad():
            for ids in prompts:
                model(input_ids=torch.from_numpy(ids[None, :]))  # (1, seq)
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def smoothed_copy(
    model: nn.Module, prompts: Sequence[NDArray[np.int64]], alpha: float
) -> tuple[nn.Module, list[SmoothedPair]]:
    """A deep copy of `model` with SmoothQuant scales migrated (same fp32 function).

    Holds a second copy of the weights: fine for the models quantized here (smol); a large
    checkpoint would smooth in place after export of the reference.
    """
    if not prompts:
        raise QuantizeError("SmoothQuant needs calibration prompts")
    twin = copy.deepcopy(model)
    pairs = smoothing_pairs(twin)
    linears = [linear for _, _, group in pairs for _, linear in group]
    maxima = input_channel_maxima(twin, prompts, linears)
    done: list[SmoothedPair] = []
    with torch.no_grad():
        for norm_path, norm, group in pairs:
            act = torch.stack([maxima[id(linear)] for _, linear in group]).amax(dim=0)  # (in,)
            weight = torch.cat([linear.weight.abs() for _, linear in group]).amax(dim=0)  # (in,)
            scale = (act.clamp(min=1e-5) ** alpha / weight.clamp(min=1e-5) ** (1 - alpha)).clamp(
                min=1e-5
            )
            cast(torch.Tensor, norm.weight).div_(scale)
            for _, linear in group:
                linear.weight.mul_(scale[None, :])  # (out, in) columns
            done.append(
                SmoothedPair(
                    norm=norm_path,
                    projections=tuple(p for p, _ in group),
                    max_scale=float(scale.max()),
                )
            )
    return twin, done
