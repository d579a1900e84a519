"""The engine chain's steps: requests → option scores through an engine's parts.

Vision part → the family's numpy packing (unpad, newline) → embedding part with the image
features spliced in place of the placeholder → decoder part over each group's shared token
prefix (image, persona, instructions), once, into a batch-1 key/value cache → suffix part: the
group's suffixes, right-padded to a width bucket, against that one cache (shared-prefix
attention, no copy per row). Exact by construction: the split is checked to be a prefix of
every prompt of the group.

Written once against the part interface, so every backend (onnxruntime, TensorRT, PyTorch
wrappers in tests) runs the same steps; `cvs_runtime.scheduler` orders them over a whole run
with caches and budgets. `score_with_parts_copying` is the earlier chain (suffixes left-padded
on the decoder, the prefix cache copied into every row), kept for comparison. Numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cvs_families.requests import ScoringRequest
from cvs_families.scores import OptionScores, option_scores_from_logits
from cvs_runtime.parts import (
    PAST_PREFIX,
    PartRunner,
    cache_names,
    past_from_present,
    shared_prefix_from_present,
)

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec, PreparedImage


def shared_prefix_length(rows: Sequence[NDArray[np.int64]]) -> int:
    """Length of the longest common token prefix of `rows`."""
    length = min(row.shape[0] for row in rows)
    for i in range(length):
        if any(row[i] != rows[0][i] for row in rows[1:]):
            return i
    return length


def image_features(
    parts: PartRunner, spec: FamilySpec, image: PreparedImage
) -> NDArray[np.float32]:
    """(image_tokens, hidden): one image through the vision part and the family's packing."""
    out = parts.run("vision", {"pixel_values": image.pixel_values})  # (tiles, patches, hidden)
    packed = spec.pack_image_features(out["image_features"], image.image_size, out["image_newline"])
    return np.asarray(packed, dtype=np.float32)


def embed_requests(
    parts: PartRunner,
    spec: FamilySpec,
    requests: Sequence[ScoringRequest],
    *,
    pad_token_id: int,
) -> list[NDArray[np.float32]]:
    """Per request (expanded tokens, hidden): token embeddings with the image features spliced
    in place of the placeholder. One embedding call for all requests (right-padded ids)."""
    longest = max(r.input_ids.shape[0] for r in requests)
    ids = np.full((len(requests), longest), pad_token_id, dtype=np.int64)  # (batch, seq)
    for row, request in enumerate(requests):
        ids[row, : request.input_ids.shape[0]] = request.input_ids
    table = parts.run("embedding", {"input_ids": ids})["inputs_embeds"]  # (batch, seq, hidden)
    features: dict[int, NDArray[np.float32]] = {}
    rows = []
    for row, request in enumerate(requests):
        request.check_placeholder(spec.image_token_id)
        embedded = table[row, : request.input_ids.shape[0]]
        if request.image is not None:
            key = id(request.image)
            if key not in features:
                features[key] = image_features(parts, spec, request.image)
            at = int(np.flatnonzero(request.input_ids == spec.image_token_id)[0])
            embedded = np.concatenate([embedded[:at], features[key], embedded[at + 1 :]])
        rows.append(np.asarray(embedded, dtype=np.float32))
    return rows


def expanded_split(request: ScoringRequest, spec: FamilySpec, split: int) -> int:
    """A split point in prompt tokens → the same point in expanded (image-spliced) positions."""
    if request.image is None:
        return split
    at = int(np.flatnonzero(request.input_ids == spec.image_token_id)[0])
    extra = spec.num_image_tokens(*request.image.image_size) - 1
    return split + extra if at < split else split


def group_split(requests: Sequence[ScoringRequest]) -> int:
    """The token split of a group: its checked shared prefix, leaving each suffix ≥ 1 token."""
    rows = [r.input_ids for r in requests]
    common = shared_prefix_length(rows)
    stated = {r.prefix_len for r in requests}
    split = stated.pop() if len(stated) == 1 and 0 not in stated else common
    if split > common:
        raise ValueError(
            f"group {requests[0].group_key!r}: prefix_len {split} exceeds the shared prefix "
            f"({common} tokens)"
        )
    return max(1, min(split, min(row.shape[0] for row in rows) - 1))


def empty_cache(layers: int, batch: int, kv_heads: int, head_dim: int) -> dict[str, NDArray[Any]]:
    """A key/value cache holding no tokens: (batch, kv heads, 0, head dim) per layer."""
    empty = np.zeros((batch, kv_heads, 0, head_dim), dtype=np.float32)
    return dict.fromkeys(cache_names(layers, PAST_PREFIX), empty)


SUFFIX_PAD_MULTIPLE = 16
"""Suffixes are right-padded to a multiple of this many tokens (their width bucket) and batched
only within a bucket, so a suffix is computed at the same width whatever its batch: softmax
sums and matrix products see the same lengths, and scores do not depend on batching."""


def suffix_width(tokens: int, multiple: int = SUFFIX_PAD_MULTIPLE) -> int:
    """`tokens` rounded up to the width bucket."""
    return -(-tokens // multiple) * multiple


def embed_ids(
    parts: PartRunner, rows: Sequence[NDArray[np.int64]], *, pad_token_id: int
) -> list[NDArray[np.float32]]:
    """Per row (tokens, hidden): token embeddings, from one embedding call (right-padded ids)."""
    longest = max(row.shape[0] for row in rows)
    ids = np.full((len(rows), longest), pad_token_id, dtype=np.int64)  # (batch, seq)
    for index, row in enumerate(rows):
        ids[index, : row.shape[0]] = row
    table = parts.run("embedding", {"input_ids": ids})["inputs_embeds"]  # (batch, seq, hidden)
    return [np.asarray(table[i, : row.shape[0]], dtype=np.float32) for i, row in enumerate(rows)]


def splice_image(
    embedded: NDArray[np.float32],
    ids: NDArray[np.int64],
    spec: FamilySpec,
    features: NDArray[np.float32] | None,
) -> NDArray[np.float32]:
    """(tokens, hidden) → (expanded tokens, hidden): `features` in place of the image
    placeholder of `ids` (unchanged when `ids` holds none)."""
    hits = np.flatnonzero(ids == spec.image_token_id)
    if hits.size == 0:
        return embedded
    if features is None:
        raise ValueError("a prompt holds an image placeholder but no image features were given")
    at = int(hits[0])
    return np.concatenate([embedded[:at], features, embedded[at + 1 :]])


def run_prefix(parts: PartRunner, spec: FamilySpec, embeds: NDArray[np.float32]) -> dict[str, Any]:
    """The batch-1 key/value cache of a prefix (tokens, hidden), named as the suffix part's
    `prefix.<layer>.key/value` inputs: (1, kv heads, tokens, head dim) each."""
    tokens = embeds.shape[0]
    out = parts.run(
        "decoder",
        {
            "inputs_embeds": embeds[None],  # (1, tokens, hidden)
            "position_ids": np.arange(tokens, dtype=np.int64)[None],
            "attention_mask": np.ones((1, tokens), dtype=np.int64),
            "logit_index": np.asarray([[tokens - 1]], dtype=np.int64),
            **empty_cache(spec.text_num_layers, 1, spec.text_num_kv_heads, spec.text_head_dim),
        },
        outputs=[n for n in parts.output_names("decoder") if n != "logits"],
    )
    return shared_prefix_from_present(out)


def run_suffixes(
    parts: PartRunner,
    prefix_cache: dict[str, Any],
    prefix_tokens: int,
    suffixes: Sequence[NDArray[np.float32]],
    width: int,
) -> NDArray[np.float32]:
    """(rows, vocab) logits at each suffix's last token: the suffixes (tokens, hidden), right-
    padded to `width`, continue the prefix cache of `prefix_tokens` tokens (positions count on
    from it). The cache is fed once, at batch 1."""
    hidden = suffixes[0].shape[-1]
    rows = len(suffixes)
    embeds = np.zeros((rows, width, hidden), dtype=np.float32)  # (rows, width, hidden)
    mask = np.zeros((rows, width), dtype=np.int64)  # right padding
    for row, suffix in enumerate(suffixes):
        embeds[row, : suffix.shape[0]] = suffix
        mask[row, : suffix.shape[0]] = 1
    lengths = np.asarray([s.shape[0] for s in suffixes], dtype=np.int64)
    out = parts.run(
        "suffix",
        {
            "inputs_embeds": embeds,
            "position_ids": np.tile(prefix_tokens + np.arange(width, dtype=np.int64), (rows, 1)),
            "suffix_mask": mask,
            "logit_index": (lengths - 1)[:, None],
            **prefix_cache,
        },
    )
    return np.asarray(out["logits"][:, 0])  # (rows, vocab)


def score_with_parts_copying(
    parts: PartRunner,
    spec: FamilySpec,
    requests: Sequence[ScoringRequest],
    *,
    pad_token_id: int,
) -> list[OptionScores]:
    """The earlier chain, kept for comparison: per group the prefix runs once, then every
    suffix, left-padded, runs on the decoder against a copy of the prefix cache per row."""
    layers = spec.text_num_layers
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.group_key, []).append(index)
    results: dict[int, OptionScores] = {}
    for members in groups.values():
        group = [requests[i] for i in members]
        if any(r.image is not group[0].image for r in group):
            raise ValueError(f"group {group[0].group_key!r} mixes images")
        rows = embed_requests(parts, spec, group, pad_token_id=pad_token_id)
        split = expanded_split(group[0], spec, group_split(group))
        prefix = rows[0][None, :split]  # (1, split, hidden)
        out = parts.run(
            "decoder",
            {
                "inputs_embeds": prefix,
                "position_ids": np.arange(split, dtype=np.int64)[None],
                "attention_mask": np.ones((1, split), dtype=np.int64),
                "logit_index": np.asarray([[split - 1]], dtype=np.int64),
                **empty_cache(layers, 1, spec.text_num_kv_heads, spec.text_head_dim),
            },
        )
        cache = past_from_present(out)
        suffixes = [row[split:] for row in rows]
        width = max(s.shape[0] for s in suffixes)
        batch = len(suffixes)
        embeds = np.zeros((batch, width, prefix.shape[-1]), dtype=np.float32)
        suffix_mask = np.zeros((batch, width), dtype=np.int64)  # left padding
        for row, suffix in enumerate(suffixes):
            embeds[row, width - suffix.shape[0] :] = suffix
            suffix_mask[row, width - suffix.shape[0] :] = 1
        positions = np.where(suffix_mask == 1, split + np.cumsum(suffix_mask, axis=1) - 1, 1)
        out = parts.run(
            "decoder",
            {
                "inputs_embeds": embeds,  # (batch, width, hidden)
                "position_ids": positions,
                "attention_mask": np.concatenate(
                    [np.ones((batch, split), dtype=np.int64), suffix_mask], axis=1
                ),
                "logit_index": np.full((batch, 1), width - 1, dtype=np.int64),
                **{name: np.repeat(value, batch, axis=0) for name, value in cache.items()},
            },
            outputs=["logits"],
        )
        for row, index in enumerate(members):  # logits: (batch, 1, vocab)
            results[index] = option_scores_from_logits(
                out["logits"][row, 0], requests[index].option_token_ids
            )
    return [results[i] for i in range(len(requests))]
