"""LLaVA-NeXT parts to export: vision encoder + projector, token embedding, decoder with cache.

Every LLaVA-NeXT family (Llama text models with or without grouped key/value heads, Qwen2 text
models with qkv bias) exports through the same three wrappers; what differs comes from the
config (sizes, feature layer, select strategy, tied head) and from the weights (biases), never
from a branch on the family name. The anyres packing, unpadding and newline joining are the
family's numpy code (cvs_families), not part of any graph; the vision part therefore returns
per-tile features plus the `image_newline` vector the packing needs.

Parts:
- `vision`: (tiles, 3, tile, tile) pixels → (tiles, patches, hidden) projected features.
- `embedding`: (batch, seq) token ids → (batch, seq, hidden) embeddings.
- `decoder`: embeddings, positions, a 2-D attention mask over past + new tokens, a key/value
  cache of any length (0 for a prefill) and `logit_index` (batch, k) → logits (batch, k, vocab)
  at those positions and the cache extended by the new tokens. One graph serves prefill and
  continuation; the runtime uses it for each group's shared prefix.
- `suffix`: a batch of right-padded suffixes against ONE batch-1 prefix cache, through
  shared-prefix attention (`cvs_export.cascade`) → logits (batch, k, vocab). The prefix cache is
  never copied along batch or across head groups, and no cache is returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LlavaNextConfig
from transformers.cache_utils import DynamicCache

from cvs_export.cascade import PREFIX_KWARG, cascade_attention_on, suffix_attention_mask
from cvs_export.parts import PartSpec, TensorSpec, Tolerance, ToleranceClass
from cvs_runtime.parts import PAST_PREFIX, PRESENT_PREFIX, SHARED_PREFIX, cache_names

PART_NAMES: tuple[str, ...] = ("vision", "embedding", "decoder", "suffix")
"""The parts every LLaVA-NeXT engine holds, in the order they run."""


@dataclass(frozen=True)
class LlavaNextDims:
    """The sizes part shapes are made of, read from a LlavaNextConfig."""

    text_hidden: int
    """Width of the language model (and of projected image features)."""
    vocab: int
    """Rows of the embedding and of the output head."""
    layers: int
    """Decoder layers (one key and one value cache tensor each)."""
    kv_heads: int
    """Key/value heads (fewer than query heads under grouped-query attention)."""
    head_dim: int
    """Width of one attention head."""
    tile: int
    """Tile side in pixels (the vision tower's image size)."""
    patches: int
    """Feature vectors one tile yields (the CLS vector dropped under the `default` strategy)."""
    vision_layers_run: int
    """Vision encoder layers the selected feature layer needs (the rest are never run)."""
    feature_layers: tuple[int, ...]
    """hidden_states indices concatenated into the projector's input (0 = embeddings)."""


def as_config(config: Mapping[str, Any] | LlavaNextConfig) -> LlavaNextConfig:
    """A LlavaNextConfig from a config.json mapping (defaults filled in by transformers)."""
    if isinstance(config, LlavaNextConfig):
        return config
    return LlavaNextConfig(**_plain(config))


def _plain(value: Any) -> Any:
    """Deep copy of a (possibly read-only) mapping as dicts and lists, as config.json has it."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dims_of(config: Mapping[str, Any] | LlavaNextConfig) -> LlavaNextDims:
    """The part dimensions of a family's config."""
    cfg = as_config(config)
    text, vision = cfg.text_config, cfg.vision_config
    heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or int(text.hidden_size) // heads
    layer_spec = cfg.vision_feature_layer
    requested = [layer_spec] if isinstance(layer_spec, int) else list(layer_spec)
    n_states = int(vision.num_hidden_layers) + 1  # hidden_states: embeddings, then each layer
    feature_layers = tuple(i if i >= 0 else n_states + i for i in requested)
    if any(not 0 <= i < n_states for i in feature_layers):
        raise ValueError(f"vision_feature_layer {layer_spec} outside 0..{n_states - 1}")
    grid = int(vision.image_size) // int(vision.patch_size)
    with_cls = cfg.vision_feature_select_strategy == "full"
    return LlavaNextDims(
        text_hidden=int(text.hidden_size),
        vocab=int(text.vocab_size),
        layers=int(text.num_hidden_layers),
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        tile=int(vision.image_size),
        patches=grid * grid + (1 if with_cls else 0),
        vision_layers_run=max(feature_layers),
        feature_layers=feature_layers,
    )


# Tolerances. fp32 bounds are what ORT vs PyTorch must meet on inputs the model produces; they
# stand a decade above the differences measured on the tiny families and smol (see the export
# report), far below what a wrong position, tile or cache produces. Lower-precision bounds (vs
# PyTorch fp32) are recorded per comparison in the manifest; an engine's verdict is decided by
# the distribution-level targets of `cvs_export.precision`, which is what the issue measures.
# The embedding is a gather: exact at fp32, one rounding (2^-11 fp16, 2^-8 bf16) below.
VISION_TOLERANCES: dict[ToleranceClass, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4),
    "fp16": Tolerance(atol=5e-2, rtol=5e-2),
    "bf16": Tolerance(atol=2e-1, rtol=1e-1),
    "int8": Tolerance(atol=0.5, rtol=0.2),
}
EMBEDDING_TOLERANCES: dict[ToleranceClass, Tolerance] = {
    "fp32": Tolerance(atol=0.0, rtol=0.0),  # a gather: exact
    "fp16": Tolerance(atol=1e-6, rtol=1e-3),
    "bf16": Tolerance(atol=1e-6, rtol=8e-3),
    "int8": Tolerance(atol=0.0, rtol=0.0),  # int8 recipes keep the embedding in fp32
}
DECODER_TOLERANCES: dict[ToleranceClass, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4),
    "fp16": Tolerance(atol=5e-2, rtol=5e-2),
    "bf16": Tolerance(atol=2e-1, rtol=1e-1),
    "int8": Tolerance(atol=1.0, rtol=0.2),
}


def part_specs(config: Mapping[str, Any] | LlavaNextConfig) -> dict[str, PartSpec]:
    """The export specs of the three parts for a family's config."""
    d = dims_of(config)
    vision = PartSpec(
        name="vision",
        inputs=(TensorSpec("pixel_values", "float", ("tiles", 3, d.tile, d.tile)),),
        outputs=(
            TensorSpec("image_features", "float", ("tiles", d.patches, d.text_hidden)),
            TensorSpec("image_newline", "float", (d.text_hidden,)),
        ),
        trace_sizes={"tiles": 2},
        check_sizes=({"tiles": 1}, {"tiles": 5}),
        tolerances=VISION_TOLERANCES,
    )
    embedding = PartSpec(
        name="embedding",
        inputs=(TensorSpec("input_ids", "int64", ("batch", "seq"), fill="zeros"),),
        outputs=(TensorSpec("inputs_embeds", "float", ("batch", "seq", d.text_hidden)),),
        trace_sizes={"batch": 2, "seq": 5},
        check_sizes=({"batch": 1, "seq": 9}, {"batch": 3, "seq": 2}),
        tolerances=EMBEDDING_TOLERANCES,
    )
    past = cache_names(d.layers, PAST_PREFIX)
    present = cache_names(d.layers, PRESENT_PREFIX)
    cache_shape = ("batch", d.kv_heads, "past", d.head_dim)
    decoder = PartSpec(
        name="decoder",
        inputs=(
            TensorSpec("inputs_embeds", "float", ("batch", "seq", d.text_hidden)),
            TensorSpec("position_ids", "int64", ("batch", "seq"), fill="positions"),
            TensorSpec("attention_mask", "int64", ("batch", "total"), fill="ones"),
            TensorSpec("logit_index", "int64", ("batch", "k"), fill="last_position"),
            *(TensorSpec(name, "float", cache_shape) for name in past),
        ),
        outputs=(
            TensorSpec("logits", "float", ("batch", "k", d.vocab)),
            *(
                TensorSpec(
                    name,
                    "float",
                    ("batch", d.kv_heads, "total", d.head_dim),
                    padded_by="attention_mask",
                )
                for name in present
            ),
        ),
        # Traced with a non-empty cache; checked with an empty one (a prefill), a one-token
        # continuation and other batch sizes: one graph serves all of them.
        trace_sizes={"batch": 2, "seq": 5, "past": 3, "total": 8, "k": 2},
        check_sizes=(
            {"batch": 3, "seq": 11, "past": 0, "total": 11, "k": 1},
            {"batch": 1, "seq": 1, "past": 10, "total": 11, "k": 1},
            {"batch": 4, "seq": 4, "past": 7, "total": 11, "k": 3},
        ),
        tolerances=DECODER_TOLERANCES,
        grouped_inputs={"past": past},
    )
    shared = cache_names(d.layers, SHARED_PREFIX)
    suffix = PartSpec(
        name="suffix",
        inputs=(
            TensorSpec("inputs_embeds", "float", ("batch", "seq", d.text_hidden)),
            TensorSpec("position_ids", "int64", ("batch", "seq"), fill="positions"),
            TensorSpec("suffix_mask", "int64", ("batch", "seq"), fill="ones"),
            TensorSpec("logit_index", "int64", ("batch", "k"), fill="last_position"),
            *(TensorSpec(name, "float", (1, d.kv_heads, "prefix", d.head_dim)) for name in shared),
        ),
        outputs=(TensorSpec("logits", "float", ("batch", "k", d.vocab)),),
        # Checked at a one-token prefix, a one-token suffix, and batches it was not traced at;
        # the validation inputs right-pad row 0 (`cvs_export.validate.suffix_inputs`).
        trace_sizes={"batch": 2, "seq": 5, "prefix": 3, "k": 2},
        check_sizes=(
            {"batch": 3, "seq": 11, "prefix": 1, "k": 1},
            {"batch": 1, "seq": 1, "prefix": 10, "k": 1},
            {"batch": 4, "seq": 6, "prefix": 7, "k": 3},
        ),
        tolerances=DECODER_TOLERANCES,
        grouped_inputs={"prefix": shared},
    )
    return {"vision": vision, "embedding": embedding, "decoder": decoder, "suffix": suffix}


class VisionPart(nn.Module):
    """Vision tower up to the feature layer, CLS handling, and the multimodal projector."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        config = as_config(model.config)
        self.dims = dims_of(config)
        inner = model.model
        tower = inner.vision_tower
        self.embeddings = tower.embeddings
        self.pre_layrnorm = tower.pre_layrnorm
        # Only the layers the selected hidden state needs: the rest never reach the graph, so
        # their weights never reach the engine.
        self.layers = nn.ModuleList(list(tower.encoder.layers[: self.dims.vision_layers_run]))
        self.projector = inner.multi_modal_projector
        self.newline = inner.image_newline
        self.drop_cls = config.vision_feature_select_strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (tiles, 3, tile, tile) → (tiles, 1 + grid², vision hidden)
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden, None)
            states.append(hidden)
        selected = torch.cat([states[i] for i in self.dims.feature_layers], dim=-1)
        if self.drop_cls:
            selected = selected[:, 1:]
        # (tiles, patches, text hidden)
        features = self.projector(selected)
        return features, self.newline * 1.0


class EmbeddingPart(nn.Module):
    """The language model's token embedding, read from the transposed table.

    The decoder's head reads the table as (hidden, vocab); gathering columns of that same
    layout here lets a tied head and embedding share one stored tensor (an exporter otherwise
    stores the head transposed beside the embedding). Same values as `embed_tokens(input_ids)`.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.embed_tokens = model.model.language_model.embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.embed_tokens.weight.t()  # (hidden, vocab)
        columns = torch.index_select(table, 1, input_ids.reshape(-1))  # (hidden, batch·seq)
        # (batch, seq) → (batch, seq, hidden)
        return columns.t().reshape(input_ids.shape[0], input_ids.shape[1], table.shape[0])


class DecoderPart(nn.Module):
    """Language model with a key/value cache and logits at the requested positions only."""

    unused = (
        "language_model.embed_tokens.weight",
        "language_model.rotary_emb.original_inv_freq",
    )
    """Held (inside the language model) but never read: the decoder takes embeddings, and the
    rotary embedding keeps its original frequencies only for dynamic rope scaling."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.layers = int(as_config(model.config).text_config.num_hidden_layers)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logit_index: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        # past: 2·layers tensors (batch, kv heads, past, head dim), key then value per layer.
        cache = DynamicCache(
            ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)],
            config=self.language_model.config,
        )
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state  # (batch, seq, hidden)
        index = logit_index[:, :, None].expand(-1, -1, hidden.shape[-1])  # (batch, k, hidden)
        logits = self.lm_head(torch.gather(hidden, 1, index))  # (batch, k, vocab)
        present: list[torch.Tensor] = []
        for layer in out.cache.layers:  # each (batch, kv heads, past + seq, head dim)
            present += [layer.keys, layer.values]
        return (logits, *present)


class SuffixPart(nn.Module):
    """Language model over right-padded suffixes that continue one shared prefix cache."""

    unused = DecoderPart.unused
    """As the decoder: the embedding table and the original rotary frequencies are never read."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        suffix_mask: torch.Tensor,
        logit_index: torch.Tensor,
        prefix: list[torch.Tensor],
    ) -> torch.Tensor:
        # prefix: 2·layers tensors (1, kv heads, prefix, head dim), key then value per layer.
        mask = suffix_attention_mask(suffix_mask, inputs_embeds.dtype)  # (batch, 1, seq, seq)
        with cascade_attention_on(self.language_model.config):
            out = self.language_model(
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                attention_mask=mask,
                use_cache=False,
                **{PREFIX_KWARG: prefix},
            )
        hidden = out.last_hidden_state  # (batch, seq, hidden)
        index = logit_index[:, :, None].expand(-1, -1, hidden.shape[-1])  # (batch, k, hidden)
        return self.lm_head(torch.gather(hidden, 1, index))  # (batch, k, vocab)


_WRAPPERS: dict[str, type[nn.Module]] = {
    "vision": VisionPart,
    "embedding": EmbeddingPart,
    "decoder": DecoderPart,
    "suffix": SuffixPart,
}


def part_tensors(model: Any, part: str) -> dict[str, torch.Tensor]:
    """The model's tensors (by their first name in `model`) that `part`'s graph reads."""
    canonical: dict[int, str] = {}
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        canonical.setdefault(id(tensor), name)
    wrapper = part_module(model, part)
    unused = set(getattr(wrapper, "unused", ()))
    read: dict[int, torch.Tensor] = {}
    for path, tensor in (
        *wrapper.named_parameters(remove_duplicate=False),
        *wrapper.named_buffers(remove_duplicate=False),
    ):
        if path not in unused:
            read[id(tensor)] = tensor
    return {canonical[key]: tensor for key, tensor in read.items()}


def part_module(model: Any, part: str) -> nn.Module:
    """The PyTorch wrapper of `part` around `model` (a LlavaNextForConditionalGeneration)."""
    if part not in _WRAPPERS:
        raise KeyError(f"unknown part {part!r}; parts are {sorted(_WRAPPERS)}")
    return _WRAPPERS[part](model).eval()
