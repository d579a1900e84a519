"""What a model family is, as data: the numpy half every stage can use without torch.

A `FamilySpec` holds the family's `config.json` (a `LlavaNextConfig` as a dict), its chat
template, its image token and tokenizer kind, and the image geometry; its methods do the
family's numpy pre- and post-processing (anyres tiles, feature packing, token counts). The
runtime reuses them as they are; torch parts live in `checkpoint.py` (loading) and
`checkpoint_build.py` (building).

`derive_tiny_config` makes a tiny stand-in's config from a full one by changing only size keys
(and what they force); `TINY_ALLOWED_DIFFERENCES` is that list, which a test enforces.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from cvs_families import anyres
from cvs_families.tokenizers_offline import TokenizerRecipe

FamilyKind = Literal["real", "tiny", "smol"]
TokenizerKind = Literal["sentencepiece", "byte_bpe"]


@dataclass(frozen=True)
class PreparedImage:
    """One image turned into the vision tower's input (the numpy half of the processor)."""

    pixel_values: NDArray[np.float32]
    """(tiles, 3, tile, tile) float32, normalised; the downscaled base tile first, as HF does."""
    image_size: tuple[int, int]
    """The original (height, width) in pixels: packing and token counts depend on it."""
    grid: tuple[int, int]
    """(rows, cols) of the anyres grid; tiles = 1 + rows * cols."""


@dataclass(frozen=True)
class BuildRecipe:
    """How the project builds a checkpoint for this family itself (tiny and smol only)."""

    builder: str
    """"module:attr" of the torch function `(spec, out_dir: Path) -> None` that writes it."""
    seed: int
    """Seed of every random weight; two builds of one recipe give the same fingerprint."""
    tokenizer: TokenizerRecipe | None = None
    """The tokenizer to train (tiny families); None when the builder brings its own (smol)."""
    init: Mapping[str, float] = field(default_factory=dict)
    """Weight-initialisation settings the builder reads (see `checkpoint_build.py`)."""


@dataclass(frozen=True)
class FamilySpec:
    """Everything model-specific about one family that does not need torch."""

    name: str
    """Registry name, e.g. "yi34b" or "tiny-yi"."""
    kind: FamilyKind
    """"real" (weights from a local HF folder), "tiny" (built, random) or "smol" (converted)."""
    hf_id: str | None
    """The Hugging Face checkpoint the family stands for (None for built ones)."""
    config: Mapping[str, Any]
    """The checkpoint's config.json as a dict (a `LlavaNextConfig`)."""
    chat_template: str
    """Jinja chat template in the HF processor format (messages with typed content parts)."""
    image_token: str
    """The placeholder the template emits where the image goes."""
    image_token_id: int
    """Its id (`config["image_token_index"]`)."""
    tokenizer_kind: TokenizerKind
    """"sentencepiece" (▁ metaspace, byte fallback) or "byte_bpe" (GPT-2 style byte-level)."""
    image_informative: bool
    """False when the vision tower is random (smol): image-condition results mean nothing."""
    image_mean: tuple[float, float, float] = anyres.CLIP_MEAN
    """Per-channel normalisation mean."""
    image_std: tuple[float, float, float] = anyres.CLIP_STD
    """Per-channel normalisation std."""
    build: BuildRecipe | None = None
    """How to build the checkpoint (tiny, smol); None for real families (weights are given)."""
    notes: str = ""
    """Where a fact comes from when it is not the checkpoint's own (e.g. a sibling template)."""

    def __hash__(self) -> int:
        return hash((self.name, self.kind))

    def __post_init__(self) -> None:
        if self.config.get("image_token_index") != self.image_token_id:
            raise ValueError(
                f"{self.name}: image_token_id {self.image_token_id} differs from the config's "
                f"image_token_index {self.config.get('image_token_index')}"
            )
        for height, width in self.grid_pinpoints:
            if height % self.tile_size or width % self.tile_size:
                raise ValueError(f"{self.name}: pinpoint {(height, width)} not a tile multiple")
        if self.tile_size % self.patch_size:
            raise ValueError(f"{self.name}: tile {self.tile_size} not a patch multiple")
        object.__setattr__(self, "config", _frozen(self.config))

    # Geometry ---------------------------------------------------------------------------------

    @property
    def text_config(self) -> Mapping[str, Any]:
        """The language model's config."""
        return self.config["text_config"]

    @property
    def vision_config(self) -> Mapping[str, Any]:
        """The vision tower's config."""
        return self.config["vision_config"]

    @property
    def tile_size(self) -> int:
        """Side of one square tile in pixels (the vision tower's `image_size`)."""
        return int(self.vision_config["image_size"])

    @property
    def patch_size(self) -> int:
        """Side of one vision patch in pixels."""
        return int(self.vision_config["patch_size"])

    @property
    def patches_per_side(self) -> int:
        """Patches along one side of a tile."""
        return self.tile_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        """Patch features per tile after the CLS token is dropped ("default" strategy)."""
        return self.patches_per_side**2

    @property
    def grid_pinpoints(self) -> list[tuple[int, int]]:
        """Allowed (height, width) canvases of the anyres grid."""
        return [(int(h), int(w)) for h, w in self.config["image_grid_pinpoints"]]

    @property
    def max_tiles(self) -> int:
        """Most tiles one image can give (base tile included)."""
        return 1 + max(
            (h // self.tile_size) * (w // self.tile_size) for h, w in self.grid_pinpoints
        )

    # Dimensions -------------------------------------------------------------------------------

    @property
    def text_hidden_size(self) -> int:
        """Width of the language model."""
        return int(self.text_config["hidden_size"])

    @property
    def text_num_layers(self) -> int:
        """Decoder layers."""
        return int(self.text_config["num_hidden_layers"])

    @property
    def text_num_heads(self) -> int:
        """Query heads per decoder layer."""
        return int(self.text_config["num_attention_heads"])

    @property
    def text_num_kv_heads(self) -> int:
        """Key/value heads per decoder layer (grouped-query attention when fewer than queries)."""
        return int(self.text_config.get("num_key_value_heads", self.text_num_heads))

    @property
    def text_head_dim(self) -> int:
        """Width of one attention head."""
        return int(self.text_config.get("head_dim") or self.text_hidden_size // self.text_num_heads)

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding and the output head."""
        return int(self.text_config["vocab_size"])

    @property
    def vision_hidden_size(self) -> int:
        """Width of the vision tower."""
        return int(self.vision_config["hidden_size"])

    # Numpy processing -------------------------------------------------------------------------

    def prepare_image(self, image: NDArray[np.uint8]) -> PreparedImage:
        """(H, W, 3) uint8 RGB → normalised anyres tiles, as `LlavaNextImageProcessorPil` does."""
        rgb = anyres.check_rgb_image(image)
        tiles, grid = anyres.anyres_tiles(rgb, self.grid_pinpoints, self.tile_size)
        pixel_values = np.stack(
            [anyres.normalise(t, self.image_mean, self.image_std) for t in tiles]
        )
        return PreparedImage(
            pixel_values=pixel_values,  # (tiles, 3, tile, tile)
            image_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            grid=grid,
        )

    def image_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the anyres grid for an image of this size."""
        return anyres.grid_shape((height, width), self.grid_pinpoints, self.tile_size)

    def pack_image_features(
        self,
        tile_features: NDArray[np.floating],
        image_size: tuple[int, int],
        newline: NDArray[np.floating],
    ) -> NDArray[np.floating]:
        """(tiles, patches, hidden) projected features → (image_tokens, hidden), spatial_unpad."""
        grid = self.image_grid(*image_size)
        return anyres.pack_features(tile_features, image_size, grid, self.patches_per_side, newline)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Image placeholder tokens an image of this size expands to in the prompt."""
        grid = self.image_grid(height, width)
        return anyres.num_packed_tokens((height, width), grid, self.patches_per_side)


def _frozen(value: Any) -> Any:
    """A read-only deep view: specs are shared, so nobody may edit a config in place."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def config_to_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, mutable, JSON-serialisable deep copy of a (frozen) config."""

    def thaw(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: thaw(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [thaw(v) for v in value]
        return value

    return thaw(config)


def load_packaged_json(filename: str) -> dict[str, Any]:
    """A JSON file from `cvs_families/configs/` (facts about the published checkpoints)."""
    text = resources.files("cvs_families").joinpath("configs", filename).read_text("utf-8")
    return json.loads(text)


# Tiny stand-ins -------------------------------------------------------------------------------

TINY_ALLOWED_DIFFERENCES: frozenset[str] = frozenset(
    {
        # sizes
        "vocab_size",
        "text_config.hidden_size",
        "text_config.intermediate_size",
        "text_config.num_attention_heads",
        "text_config.num_key_value_heads",
        "text_config.num_hidden_layers",
        "text_config.vocab_size",
        "vision_config.hidden_size",
        "vision_config.intermediate_size",
        "vision_config.num_attention_heads",
        "vision_config.num_hidden_layers",
        "vision_config.image_size",
        # forced by a smaller vocabulary
        "image_token_index",
        "text_config.bos_token_id",
        "text_config.eos_token_id",
        "text_config.pad_token_id",
        # forced by the image size (same aspect ratios, scaled)
        "image_grid_pinpoints",
    }
)
"""Dotted config keys a tiny stand-in may change relative to its full family."""


@dataclass(frozen=True)
class TinySizes:
    """The size keys of a tiny stand-in; everything else is copied from the full config."""

    text_hidden: int
    """Language model width."""
    text_intermediate: int
    """MLP width."""
    text_heads: int
    """Query heads."""
    text_kv_heads: int
    """Key/value heads (keep the full family's query:kv ratio)."""
    text_layers: int
    """Decoder layers."""
    vision_hidden: int
    """Vision tower width."""
    vision_intermediate: int
    """Vision MLP width."""
    vision_heads: int
    """Vision attention heads."""
    vision_layers: int
    """Vision encoder layers."""
    tile_size: int
    """Tile side in pixels (a multiple of the family's patch size)."""


def derive_tiny_config(
    full: Mapping[str, Any], sizes: TinySizes, vocab_size: int, token_ids: Mapping[str, int]
) -> dict[str, Any]:
    """A tiny stand-in's config: `full` with only sizes and what they force changed.

    `token_ids` maps "image_token_index" and any of the text config's "bos_token_id",
    "eos_token_id", "pad_token_id" to ids in the smaller vocabulary. Pinpoints are scaled by
    tile / full tile, keeping each aspect ratio.
    """
    tiny = copy.deepcopy(config_to_dict(full))
    text, vision = tiny["text_config"], tiny["vision_config"]
    full_ratio = text["num_attention_heads"] // text.get("num_key_value_heads", 1)
    if (
        sizes.text_heads // sizes.text_kv_heads != full_ratio
        or sizes.text_heads % sizes.text_kv_heads
    ):
        raise ValueError(
            f"tiny heads {sizes.text_heads}:{sizes.text_kv_heads} break the full family's "
            f"query:kv ratio {full_ratio}:1"
        )
    text.update(
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_kv_heads,
        num_hidden_layers=sizes.text_layers,
        vocab_size=vocab_size,
    )
    if "vocab_size" in tiny:
        tiny["vocab_size"] = vocab_size
    full_tile = vision["image_size"]
    if sizes.tile_size % vision["patch_size"]:
        raise ValueError(
            f"tile {sizes.tile_size} is not a multiple of patch {vision['patch_size']}"
        )
    vision.update(
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_intermediate,
        num_attention_heads=sizes.vision_heads,
        num_hidden_layers=sizes.vision_layers,
        image_size=sizes.tile_size,
    )
    tiny["image_grid_pinpoints"] = [
        [h * sizes.tile_size // full_tile, w * sizes.tile_size // full_tile]
        for h, w in tiny["image_grid_pinpoints"]
    ]
    for key, value in token_ids.items():
        if key == "image_token_index":
            tiny[key] = value
        elif key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            text[key] = value
        else:
            raise ValueError(f"unknown token id key {key!r}")
    return tiny


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"text_config.hidden_size": 5120, …}: nested configs as dotted keys, for diffs."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = config_to_dict({"v": value})["v"]
    return flat


def padded_vocab_size(tokens: int, multiple: int) -> int:
    """`tokens` rounded up to a multiple (embedding rows are padded as the conversions did)."""
    return -(-tokens // multiple) * multiple
