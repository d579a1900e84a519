"""The families' numpy preprocessing and packing equal transformers' own, bit for bit.

Reference: `LlavaNextImageProcessorPil` (the processor the checkpoints ship, PIL backend),
`LlavaNextProcessor`'s placeholder count, and `LlavaNextModel.pack_image_features`. Checked on
the full-size 336 px geometry and on the tiny 42 px one, over sizes and aspect ratios that pick
every grid pinpoint and both unpadding directions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cvs_families.registry import get_family
from cvs_families.spec import FamilySpec, config_to_dict

SIZES = [
    (336, 336),
    (480, 640),
    (640, 480),
    (300, 1000),
    (1000, 300),
    (97, 1500),
    (57, 91),
    (13, 7),
    (200, 130),
    (1, 500),
    (701, 333),
    (640, 330),
]
"""(height, width): square, landscape, portrait, extreme ratios, tiny and odd sizes."""
TINY_SIZES = [
    (42, 42),
    (30, 100),
    (100, 30),
    (57, 91),
    (7, 13),
    (126, 40),
    (85, 84),
    (500, 9),
    (80, 41),
]
SPECS = ["vicuna13b", "tiny-yi"]
"""The 336 px geometry (shared by the three real families and smol) and the tiny 42 px one."""


def _sizes(spec: FamilySpec) -> list[tuple[int, int]]:
    return SIZES if spec.tile_size == 336 else TINY_SIZES


def _image(height: int, width: int, seed: int) -> np.ndarray:
    # Noise plus a gradient: resampling differences show up in every pixel.
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(height, width, 3))
    ramp = np.linspace(0, 255, width)[None, :, None]
    return ((noise + ramp) / 2).astype(np.uint8)


def _hf_image_processor(spec: FamilySpec) -> Any:
    from transformers import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.tile_size},
        crop_size={"height": spec.tile_size, "width": spec.tile_size},
        image_grid_pinpoints=[list(p) for p in spec.grid_pinpoints],
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        resample=3,
        do_pad=True,
    )


@pytest.mark.parametrize("name", SPECS)
def test_prepare_image_equals_the_hf_processor(name: str) -> None:
    spec = get_family(name)
    processor = _hf_image_processor(spec)
    grids = set()
    for index, (height, width) in enumerate(_sizes(spec)):
        image = _image(height, width, seed=index)
        ours = spec.prepare_image(image)
        theirs = processor(images=[image], return_tensors="np", input_data_format="channels_last")
        expected = theirs["pixel_values"][0]  # (tiles, 3, tile, tile)
        assert ours.pixel_values.dtype == np.float32
        assert ours.pixel_values.shape == expected.shape, (height, width)
        assert np.array_equal(ours.pixel_values, expected), (height, width)
        assert ours.image_size == tuple(theirs["image_sizes"][0]) == (height, width)
        assert ours.pixel_values.shape[0] == 1 + ours.grid[0] * ours.grid[1]
        grids.add(ours.grid)
    # The sizes exercise every pinpoint of the anyres grid.
    tile = spec.tile_size
    assert grids == {(h // tile, w // tile) for h, w in spec.grid_pinpoints}


def _hf_packed(
    spec: FamilySpec, tiles: np.ndarray, size: tuple[int, int], newline: np.ndarray
) -> np.ndarray:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**config_to_dict(spec.config)))
    packed, lengths = model.model.pack_image_features(
        [torch.from_numpy(tiles)],
        torch.tensor([size]),
        vision_feature_select_strategy="default",
        image_newline=torch.from_numpy(newline),
    )
    assert int(lengths[0]) == packed[0].shape[0]
    return np.asarray(packed[0].numpy())


@pytest.mark.parametrize("name", SPECS)
def test_pack_image_features_equals_the_model(name: str) -> None:
    spec = get_family(name)
    rng = np.random.default_rng(0)
    hidden = 8
    newline = rng.standard_normal(hidden).astype(np.float32)
    for height, width in _sizes(spec):
        rows, cols = spec.image_grid(height, width)
        tiles = rng.standard_normal((1 + rows * cols, spec.tokens_per_tile, hidden)).astype(
            np.float32
        )
        ours = spec.pack_image_features(tiles, (height, width), newline)
        theirs = _hf_packed(spec, tiles, (height, width), newline)
        assert ours.shape == theirs.shape, (height, width)
        assert np.array_equal(ours, theirs), (height, width)
        assert ours.shape[0] == spec.num_image_tokens(height, width)


@pytest.mark.parametrize("name", SPECS)
def test_num_image_tokens_equals_the_hf_processor_count(name: str) -> None:
    from transformers import LlavaNextProcessor

    spec = get_family(name)

    class _Tokenizer:  # the count needs no real tokenizer, only the image token's id
        image_token = spec.image_token
        image_token_id = spec.image_token_id

    processor = LlavaNextProcessor.__new__(LlavaNextProcessor)
    processor.image_processor = _hf_image_processor(spec)
    processor.num_additional_image_tokens = 1
    processor.vision_feature_select_strategy = "default"
    processor.patch_size = spec.patch_size
    del _Tokenizer
    for height, width in _sizes(spec):
        counted = processor._get_number_of_features(height, width, spec.tile_size, spec.tile_size)
        assert spec.num_image_tokens(height, width) == counted - 1, (height, width)


def test_full_size_geometry_matches_the_study() -> None:
    spec = get_family("yi34b")
    assert (spec.tile_size, spec.patch_size, spec.tokens_per_tile, spec.max_tiles) == (
        336,
        14,
        576,
        5,
    )
    # A 336x336 image fits 336x672 without scaling and with least waste: grid 1x2. Its
    # features, 24x48 patches, lose 12 padding columns on each side: 24 rows of 24 + newline.
    assert spec.image_grid(336, 336) == (1, 2)
    assert spec.num_image_tokens(336, 336) == 576 + 24 * 25
    # 1000x300 (portrait) picks the 1008x336 canvas: three tiles in a column.
    assert spec.image_grid(1000, 300) == (3, 1)


def test_pack_refuses_a_tile_count_that_does_not_match_the_grid() -> None:
    spec = get_family("tiny-yi")
    rows, cols = spec.image_grid(42, 84)
    tiles = np.zeros((rows * cols, spec.tokens_per_tile, 4), dtype=np.float32)  # base missing
    with pytest.raises(ValueError, match="tiles"):
        spec.pack_image_features(tiles, (42, 84), np.zeros(4, dtype=np.float32))


def test_pack_refuses_a_newline_of_the_wrong_width() -> None:
    spec = get_family("tiny-yi")
    rows, cols = spec.image_grid(42, 84)
    tiles = np.zeros((1 + rows * cols, spec.tokens_per_tile, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="newline"):
        spec.pack_image_features(tiles, (42, 84), np.zeros(5, dtype=np.float32))


def test_prepare_image_refuses_a_float_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        get_family("tiny-yi").prepare_image(np.zeros((10, 10, 3), dtype=np.float32))


def test_prepare_image_refuses_a_greyscale_array() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        get_family("tiny-yi").prepare_image(np.zeros((10, 10), dtype=np.uint8))


def test_prepare_image_refuses_an_empty_image() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        get_family("tiny-yi").prepare_image(np.zeros((0, 10, 3), dtype=np.uint8))
