"""LLaVA-NeXT "anyres" image preprocessing and feature packing, in numpy.

Every LLaVA-NeXT family shares these steps; they live here once so that the runtime can prepare
images and pack vision features without torch. Each function mirrors one step of transformers'
`LlavaNextImageProcessorPil` (grid choice, resize, pad, tiles, rescale, normalise) or of
`LlavaNextModel.pack_image_features` (unpad, newline column, base tile first), and tests check
the results equal transformers' own on many image sizes.

Sizes are (height, width) throughout, as in transformers; images are (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP normalisation mean (openai/clip-vit-large-patch14-336 preprocessor config)."""
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP normalisation std (same source)."""
RESCALE_FACTOR = 1 / 255
"""uint8 → [0, 1], as the processor's `rescale_factor`."""


def select_best_resolution(
    image_size: tuple[int, int], pinpoints: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The pinpoint (height, width) that keeps most of the image and wastes least canvas.

    Same rule and tie-breaking as transformers' `select_best_resolution`.
    """
    original_height, original_width = image_size
    best: tuple[int, int] | None = None
    max_effective = 0
    min_wasted = float("inf")
    for height, width in pinpoints:
        scale = min(width / original_width, height / original_height)
        down_w, down_h = int(original_width * scale), int(original_height * scale)
        effective = min(down_w * down_h, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted = effective, wasted
            best = (int(height), int(width))
    if best is None:
        raise ValueError(f"no grid pinpoint fits an image of size {image_size}: {pinpoints}")
    return best


def grid_shape(
    image_size: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile_size: int
) -> tuple[int, int]:
    """(rows, cols) of tiles the anyres grid cuts an image of `image_size` into."""
    height, width = select_best_resolution(image_size, pinpoints)
    return height // tile_size, width // tile_size


def resized_size_within(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Largest (height, width) with the image's aspect ratio that fits `target` (rounded up)."""
    original_height, original_width = image_size
    target_height, target_width = target
    scale_w = target_width / original_width
    scale_h = target_height / original_height
    if scale_w < scale_h:
        return min(math.ceil(original_height * scale_w), target_height), target_width
    return target_height, min(math.ceil(original_width * scale_h), target_width)


def resize_bicubic(image: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 → (size[0], size[1], 3) uint8 with PIL's bicubic filter."""
    height, width = size
    resized = Image.fromarray(image).resize((width, height), resample=Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def pad_centered(image: NDArray[np.uint8], target: tuple[int, int]) -> NDArray[np.uint8]:
    """Zero-pad (H, W, 3) to `target`, centred; the odd pixel goes to the bottom/right."""
    height, width = image.shape[:2]
    top, extra_y = divmod(target[0] - height, 2)
    left, extra_x = divmod(target[1] - width, 2)
    padding = ((top, top + extra_y), (left, left + extra_x), (0, 0))
    return np.pad(image, padding, mode="constant", constant_values=0)


def normalise(
    tile: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]
) -> NDArray[np.float32]:
    """(T, T, 3) uint8 → (3, T, T) float32: rescale in float64, then normalise in float32.

    The same arithmetic and dtypes as transformers' `rescale` and `normalize`, so results are
    bit-identical.
    """
    rescaled = (tile.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)  # (T, T, 3)
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((rescaled - mean32) / std32).transpose(2, 0, 1))  # (3, T, T)


def anyres_tiles(
    image: NDArray[np.uint8], pinpoints: Sequence[Sequence[int]], tile_size: int
) -> tuple[list[NDArray[np.uint8]], tuple[int, int]]:
    """Cut an (H, W, 3) image into the base tile followed by the grid tiles, row-major.

    Returns the uint8 tiles (each (tile, tile, 3)) and the grid (rows, cols).
    """
    best = select_best_resolution(image.shape[:2], pinpoints)
    if best[0] % tile_size or best[1] % tile_size:
        raise ValueError(f"grid pinpoint {best} is not a multiple of the tile size {tile_size}")
    resized = resize_bicubic(image, resized_size_within(image.shape[:2], best))
    canvas = pad_centered(resized, best)  # (best_h, best_w, 3)
    rows, cols = best[0] // tile_size, best[1] // tile_size
    tiles = [resize_bicubic(image, (tile_size, tile_size))]
    for row in range(rows):
        for col in range(cols):
            y, x = row * tile_size, col * tile_size
            tiles.append(canvas[y : y + tile_size, x : x + tile_size])
    return tiles, (rows, cols)


def check_rgb_image(image: NDArray[np.generic]) -> NDArray[np.uint8]:
    """The image as (H, W, 3) uint8, or a one-line error saying what is wrong with it."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image, got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {array.shape}")
    return array


def unpadded_feature_shape(
    image_size: tuple[int, int], grid: tuple[int, int], patches_per_side: int
) -> tuple[int, int]:
    """(rows, cols) of patch features kept after removing the grid's padding.

    The same rounding as transformers' `unpad_image` and the processor's token count.
    """
    original_height, original_width = image_size
    current_height, current_width = grid[0] * patches_per_side, grid[1] * patches_per_side
    if original_width / original_height > current_width / current_height:
        new_height = int(round(original_height * (current_width / original_width), 7))
        padding = (current_height - new_height) // 2
        return current_height - 2 * padding, current_width
    new_width = int(round(original_width * (current_height / original_height), 7))
    padding = (current_width - new_width) // 2
    return current_height, current_width - 2 * padding


def pack_features(
    tile_features: NDArray[np.floating],
    image_size: tuple[int, int],
    grid: tuple[int, int],
    patches_per_side: int,
    newline: NDArray[np.floating],
) -> NDArray[np.floating]:
    """Pack one image's tile features into its sequence of image tokens.

    (tiles, patches, hidden) → (tokens, hidden): the base tile's patches first, then the grid's
    patch rows with the padding removed, each row followed by the `newline` vector. This is
    LLaVA-NeXT's "spatial_unpad" packing (`pack_image_features`).
    """
    rows, cols = grid
    side = patches_per_side
    tiles, patches, hidden = tile_features.shape
    if tiles != 1 + rows * cols:
        raise ValueError(f"expected {1 + rows * cols} tiles for a {rows}x{cols} grid, got {tiles}")
    if patches != side * side:
        raise ValueError(f"expected {side * side} patches per tile, got {patches}")
    if newline.shape != (hidden,):
        raise ValueError(f"newline must have shape ({hidden},), got {newline.shape}")
    base = tile_features[0]  # (side*side, hidden)
    grid_features = tile_features[1:].reshape(rows, cols, side, side, hidden)
    grid_features = grid_features.transpose(0, 2, 1, 3, 4).reshape(rows * side, cols * side, hidden)
    kept_h, kept_w = unpadded_feature_shape(image_size, grid, side)
    top = (rows * side - kept_h) // 2
    left = (cols * side - kept_w) // 2
    kept = grid_features[top : top + kept_h, left : left + kept_w]  # (kept_h, kept_w, hidden)
    newline_column = np.broadcast_to(newline.astype(kept.dtype), (kept_h, 1, hidden))
    with_newlines = np.concatenate([kept, newline_column], axis=1)  # (kept_h, kept_w+1, hidden)
    packed = np.concatenate([base, with_newlines.reshape(-1, hidden)], axis=0)
    return np.ascontiguousarray(packed)  # (tokens, hidden)


def num_packed_tokens(image_size: tuple[int, int], grid: tuple[int, int], side: int) -> int:
    """How many image tokens `pack_features` makes: base tile + kept rows × (cols + newline)."""
    kept_h, kept_w = unpadded_feature_shape(image_size, grid, side)
    return side * side + kept_h * (kept_w + 1)
