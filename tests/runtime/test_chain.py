"""The earlier (copying) chain's bookkeeping, kept for comparison, on a fake engine that records
what it is asked (no torch). The scheduler's chain is tested in test_scheduler.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cvs_families.registry import get_family
from cvs_families.requests import ScoringRequest
from cvs_runtime.chain import (
    embed_requests,
    expanded_split,
    group_split,
)
from cvs_runtime.chain import score_with_parts_copying as score_with_parts

SPEC = get_family("tiny-yi")
HIDDEN = SPEC.text_hidden_size
VOCAB = SPEC.vocab_size


class FakeEngine:
    """Embeddings hold the token id, image features the tile index; the decoder's cache holds
    positions, and its logits favour token (sum of attended positions) mod vocab."""

    part_names = ("vision", "embedding", "decoder")

    def __init__(self) -> None:
        self.decoder_calls: list[dict[str, NDArray[Any]]] = []

    def input_names(self, part: str) -> tuple[str, ...]:
        return ()

    def output_names(self, part: str) -> tuple[str, ...]:
        return ()

    def run(
        self, part: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str] | None = None
    ) -> dict[str, NDArray[Any]]:
        if part == "vision":
            tiles = inputs["pixel_values"].shape[0]
            patches = SPEC.patches_per_side**2
            features = np.broadcast_to(
                -np.arange(1, tiles + 1, dtype=np.float32)[:, None, None], (tiles, patches, HIDDEN)
            )
            return {"image_features": features.copy(), "image_newline": np.full(HIDDEN, -99.0)}
        if part == "embedding":
            ids = inputs["input_ids"].astype(np.float32)
            return {"inputs_embeds": np.repeat(ids[:, :, None], HIDDEN, axis=2)}
        self.decoder_calls.append(dict(inputs))
        positions = inputs["position_ids"].astype(np.float32)  # (batch, seq)
        batch, seq = positions.shape
        new = np.broadcast_to(
            positions[:, None, :, None],
            (batch, SPEC.text_num_kv_heads, seq, SPEC.text_head_dim),
        )
        out: dict[str, NDArray[Any]] = {}
        for name, past in inputs.items():
            if name.startswith("past."):
                out["present." + name[5:]] = np.concatenate([past, new], axis=2)
        cached = out["present.0.key"][:, 0, :, 0]  # (batch, total) positions held
        total = (cached * inputs["attention_mask"]).sum(axis=1)
        logits = np.zeros((batch, 1, VOCAB), dtype=np.float32)
        logits[np.arange(batch), 0, total.astype(int) % VOCAB] = 10.0
        out["logits"] = logits
        return out


def request(ids: list[int], group: str, image: Any = None, prefix_len: int = 0) -> ScoringRequest:
    return ScoringRequest(
        input_ids=np.asarray(ids, dtype=np.int64),
        image=image,
        option_token_ids=np.asarray([3, 4], dtype=np.int64),
        group_key=group,
        prefix_len=prefix_len,
    )


def test_each_group_prefix_runs_once_and_suffixes_continue_its_positions() -> None:
    engine = FakeEngine()
    requests = [
        request([1, 2, 3, 4, 5, 6], "a", prefix_len=3),
        request([1, 2, 3, 7], "a", prefix_len=3),
        request([9, 8, 7], "b"),
    ]
    score_with_parts(engine, SPEC, requests, pad_token_id=0)
    prefill = [c for c in engine.decoder_calls if c["past.0.key"].shape[2] == 0]
    assert len(prefill) == 2  # one per group
    group_a = engine.decoder_calls[1]
    assert group_a["past.0.key"].shape[:3] == (2, SPEC.text_num_kv_heads, 3)  # repeated per row
    np.testing.assert_array_equal(group_a["past.0.key"][:, 0, :, 0], [[0, 1, 2], [0, 1, 2]])
    # Left-padded suffixes [4, 5, 6] and [7]: positions continue at 3; padding gets 1.
    np.testing.assert_array_equal(group_a["position_ids"], [[3, 4, 5], [1, 1, 3]])
    np.testing.assert_array_equal(
        group_a["attention_mask"], [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1]]
    )
    np.testing.assert_array_equal(group_a["logit_index"], [[2], [2]])
    np.testing.assert_array_equal(group_a["inputs_embeds"][:, :, 0], [[4, 5, 6], [0, 0, 7]])


def test_scores_come_back_in_request_order() -> None:
    # The fake's top token is the sum of attended positions: 0+1+…+(n−1) for an n-token prompt.
    requests = [request([5] * 4, "x"), request([6] * 3, "y"), request([5] * 4 + [1], "x")]
    scores = score_with_parts(FakeEngine(), SPEC, requests, pad_token_id=0)
    tops = [int(s.topk_token_ids[0]) for s in scores]
    assert tops == [6, 3, 10]


def test_the_image_features_replace_the_placeholder_in_place() -> None:
    rng = np.random.default_rng(0)
    image = SPEC.prepare_image(rng.integers(0, 256, (60, 110, 3), dtype=np.uint8))
    tokens = SPEC.num_image_tokens(60, 110)
    ids = [1, SPEC.image_token_id, 2, 3]
    (row,) = embed_requests(FakeEngine(), SPEC, [request(ids, "i", image)], pad_token_id=0)
    assert row.shape == (len(ids) - 1 + tokens, HIDDEN)
    assert row[0, 0] == 1 and row[-2, 0] == 2 and row[-1, 0] == 3
    assert np.all(row[1 : 1 + tokens, 0] < 0)  # tile features and newlines, nothing else
    assert expanded_split(request(ids, "i", image), SPEC, 2) == 2 + tokens - 1
    assert expanded_split(request(ids, "i", image), SPEC, 1) == 1


def test_a_stated_prefix_longer_than_the_shared_one_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix_len 3 exceeds the shared prefix"):
        group_split(
            [request([1, 2, 3, 4], "g", prefix_len=3), request([1, 2, 9, 4], "g", prefix_len=3)]
        )


def test_every_suffix_keeps_at_least_one_token() -> None:
    assert group_split([request([1, 2, 3], "g"), request([1, 2, 3], "g")]) == 2


def test_a_group_mixing_images_is_refused() -> None:
    rng = np.random.default_rng(1)
    first, second = (
        SPEC.prepare_image(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)) for _ in range(2)
    )
    ids = [1, SPEC.image_token_id, 2]
    requests = [request(ids, "g", first), dataclasses.replace(request(ids, "g", second))]
    with pytest.raises(ValueError, match="mixes images"):
        score_with_parts(FakeEngine(), SPEC, requests, pad_token_id=0)
