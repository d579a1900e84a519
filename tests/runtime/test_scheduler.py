"""The scheduler's bookkeeping on a fake engine that records what it is asked (no torch).

The fake's answer to a prompt is a function of everything the prompt attends to (prefix cache
contents, suffix embeddings, positions), so a wrong split, a wrong cache, a wrong position or a
row mixed up with another changes the top token; the expected top token is computed here from
the request alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cvs_families.registry import get_family
from cvs_families.requests import ScoringRequest
from cvs_families.spec import PreparedImage
from cvs_runtime.budgets import (
    BudgetError,
    Budgets,
    image_feature_bytes,
    prefix_cache_bytes,
    suffix_row_bytes,
)
from cvs_runtime.chain import SUFFIX_PAD_MULTIPLE, embed_requests, suffix_width
from cvs_runtime.scheduler import MissingSuffixPart, Scheduler, ScoredBatch

SPEC = get_family("tiny-yi")
HIDDEN = SPEC.text_hidden_size
VOCAB = SPEC.vocab_size
KV, DIM, LAYERS = SPEC.text_num_kv_heads, SPEC.text_head_dim, SPEC.text_num_layers
ROOMY = Budgets(2**30, 2**30, 2**30, max_batch=64)


class FakeEngine:
    """Embeddings hold the token id; image features a function of the tile's pixels; the prefix
    cache holds (embedding, position) per token; the suffix part's logits favour
    (Σ attended embeddings + Σ attended positions) mod vocab at each row's last real token."""

    part_names: tuple[str, ...] = ("vision", "embedding", "decoder", "suffix")

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, NDArray[Any]]]] = {p: [] for p in self.part_names}

    def input_names(self, part: str) -> tuple[str, ...]:
        return ()

    def output_names(self, part: str) -> tuple[str, ...]:
        if part == "decoder":
            names = [f"present.{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]
            return ("logits", *names)
        return ()

    def run(
        self, part: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str] | None = None
    ) -> dict[str, NDArray[Any]]:
        self.calls[part].append(dict(inputs))
        if part == "vision":
            pixels = inputs["pixel_values"]  # (tiles, 3, tile, tile)
            per_tile = np.round(pixels.reshape(pixels.shape[0], -1).sum(axis=1)) % 7 + 1
            patches = SPEC.patches_per_side**2
            features = np.broadcast_to(
                per_tile[:, None, None].astype(np.float32), (pixels.shape[0], patches, HIDDEN)
            )
            return {"image_features": features.copy(), "image_newline": np.full(HIDDEN, 2.0)}
        if part == "embedding":
            ids = inputs["input_ids"].astype(np.float32)
            return {"inputs_embeds": np.repeat(ids[:, :, None], HIDDEN, axis=2)}
        if part == "decoder":
            embeds = inputs["inputs_embeds"]  # (1, tokens, hidden)
            tokens = embeds.shape[1]
            cache = np.zeros((1, KV, tokens, DIM), dtype=np.float32)
            cache[0, :, :, 0] = embeds[0, :, 0]
            cache[0, :, :, 1] = inputs["position_ids"][0]
            out = {f"present.{i}.{kind}": cache for i in range(LAYERS) for kind in ("key", "value")}
            return {name: out[name] for name in (outputs or out)}
        prefix = inputs["prefix.0.key"]  # (1, kv, prefix, dim)
        assert prefix.shape[0] == 1, "the prefix cache must be fed once, at batch 1"
        mask = inputs["suffix_mask"]  # (rows, width)
        own = (inputs["inputs_embeds"][:, :, 0] + inputs["position_ids"]) * mask
        total = prefix[0, 0, :, 0].sum() + prefix[0, 0, :, 1].sum() + own.sum(axis=1)
        rows = mask.shape[0]
        logits = np.zeros((rows, 1, VOCAB), dtype=np.float32)
        logits[np.arange(rows), 0, np.round(total).astype(int) % VOCAB] = 10.0
        return {"logits": logits}


class PrefixlessEngine(FakeEngine):
    part_names = ("vision", "embedding", "decoder")


def expected_top(request: ScoringRequest) -> int:
    """What the fake must answer: Σ expanded embeddings + Σ positions, mod vocab."""
    (row,) = embed_requests(FakeEngine(), SPEC, [request], pad_token_id=0)
    n = row.shape[0]
    return round(float(row[:, 0].sum()) + n * (n - 1) / 2) % VOCAB


def image(seed: int, shape: tuple[int, int] = (60, 110)) -> PreparedImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    return SPEC.prepare_image(pixels)


def request(
    ids: list[int], group: str, picture: PreparedImage | None = None, prefix_len: int = 0
) -> ScoringRequest:
    return ScoringRequest(
        input_ids=np.asarray(ids, dtype=np.int64),
        image=picture,
        option_token_ids=np.asarray([3, 4], dtype=np.int64),
        group_key=group,
        prefix_len=prefix_len,
    )


def survey(pictures: Sequence[PreparedImage | None], questions: int = 5) -> list[ScoringRequest]:
    """Per picture (None: text) a group of `questions` prompts sharing 4 prefix tokens, with
    suffixes of 1 to 2 width buckets, interleaved across groups."""
    requests = []
    for q in range(questions):
        for g, picture in enumerate(pictures):
            head = [5, 6, SPEC.image_token_id, 7] if picture is not None else [5, 6, 8, 7]
            tail = [10 + q + g] * (1 + (q * 7) % (SUFFIX_PAD_MULTIPLE + 3))
            requests.append(request(head + tail, f"g{g}", picture, prefix_len=4))
    return requests


def tops(scores: Sequence[Any]) -> list[int]:
    return [int(s.topk_token_ids[0]) for s in scores]


def test_every_answer_is_what_its_whole_prompt_attends_to() -> None:
    requests = survey([None, image(0), image(1)])
    scores = Scheduler(FakeEngine(), SPEC, pad_token_id=0, budgets=ROOMY).score(requests)
    assert tops(scores) == [expected_top(r) for r in requests]


def test_each_group_prefix_runs_once_and_each_image_once_per_run() -> None:
    shared = image(0)
    # Groups g1 and g3 share their image and prefix tokens (their questions differ): one
    # prefix between them, since caches are keyed by content.
    requests = survey([None, shared, image(1), shared])
    engine = FakeEngine()
    scheduler = Scheduler(engine, SPEC, pad_token_id=0, budgets=ROOMY)
    scheduler.score(requests)
    assert len(engine.calls["vision"]) == 2  # distinct images
    assert len(engine.calls["decoder"]) == 3  # distinct prefixes
    scheduler.score(requests)  # a second call in the same run: everything from the caches
    assert len(engine.calls["vision"]) == 2 and len(engine.calls["decoder"]) == 3


def test_image_features_are_cached_by_content_not_by_object() -> None:
    first, twin = image(3), image(3)  # equal pixels, different objects
    assert first is not twin
    engine = FakeEngine()
    scheduler = Scheduler(engine, SPEC, pad_token_id=0, budgets=ROOMY)
    scheduler.score(survey([first]))
    scheduler.score([request([1, SPEC.image_token_id, 2, 9], "other", twin, prefix_len=3)])
    assert len(engine.calls["vision"]) == 1


def test_batches_come_out_as_they_finish_with_their_request_indices() -> None:
    requests = survey([None, image(0)])
    batches = list(Scheduler(FakeEngine(), SPEC, pad_token_id=0, budgets=ROOMY).run(requests))
    assert all(isinstance(b, ScoredBatch) for b in batches)
    seen = [i for b in batches for i in b.indices]
    assert sorted(seen) == list(range(len(requests)))  # each request exactly once
    for batch in batches:
        assert tops(batch.scores) == [expected_top(requests[i]) for i in batch.indices]
        assert len({requests[i].group_key for i in batch.indices}) == 1  # one group per batch


def test_rows_of_a_batch_share_one_width_bucket_and_right_padding() -> None:
    engine = FakeEngine()
    requests = survey([None], questions=8)
    Scheduler(engine, SPEC, pad_token_id=0, budgets=ROOMY).score(requests)
    for call in engine.calls["suffix"]:
        mask = call["suffix_mask"]
        width = mask.shape[1]
        assert width % SUFFIX_PAD_MULTIPLE == 0
        lengths = mask.sum(axis=1)
        assert all(suffix_width(int(n)) == width for n in lengths)  # one bucket
        assert np.all(mask == (np.arange(width)[None] < lengths[:, None]))  # right padding
        np.testing.assert_array_equal(call["logit_index"][:, 0], lengths - 1)
        np.testing.assert_array_equal(call["position_ids"][0], 4 + np.arange(width))


def test_batch_sizes_follow_from_the_activation_budget() -> None:
    requests = survey([None], questions=12)
    counts: dict[int, int] = {}
    for r in requests:
        width = suffix_width(len(r.input_ids) - 4)
        counts[width] = counts.get(width, 0) + 1
    assert len(counts) == 2
    budget = 3 * max(suffix_row_bytes(SPEC, 4, w) for w in counts)
    expected = []
    for width, count in counts.items():
        rows = budget // suffix_row_bytes(SPEC, 4, width)  # by hand: the budget over one row
        expected += [min(rows, count - start) for start in range(0, count, rows)]
    engine = FakeEngine()
    budgets = Budgets(2**30, 2**30, activation_bytes=budget, max_batch=64)
    scores = Scheduler(engine, SPEC, pad_token_id=0, budgets=budgets).score(requests)
    sizes = [call["suffix_mask"].shape[0] for call in engine.calls["suffix"]]
    assert sorted(sizes) == sorted(expected) and len(sizes) > len(counts)  # the budget split
    assert tops(scores) == [expected_top(r) for r in requests]
    capped = FakeEngine()
    Scheduler(capped, SPEC, pad_token_id=0, budgets=Budgets(2**30, 2**30, 2**30, 2)).score(requests)
    assert max(call["suffix_mask"].shape[0] for call in capped.calls["suffix"]) == 2


def test_a_small_prefix_budget_evicts_and_recomputes_with_the_same_answers() -> None:
    pictures = [None, image(0), image(1)]
    requests = survey(pictures)
    one_prefix = max(prefix_cache_bytes(SPEC, 3 + SPEC.num_image_tokens(60, 110)), 1)
    engine = FakeEngine()
    tight = Budgets(2**30, one_prefix, 2**30, max_batch=2)
    scheduler = Scheduler(engine, SPEC, pad_token_id=0, budgets=tight)
    # Interleaved calls: group 0, 1, 2, then 0 again — its prefix was evicted meanwhile.
    order = [[i for i, r in enumerate(requests) if r.group_key == f"g{g}"] for g in (0, 1, 2)]
    got: dict[int, int] = {}
    for chunk in (order[0][:2], order[1], order[2], order[0][2:]):
        scores = scheduler.score([requests[i] for i in chunk])
        got.update(zip(chunk, tops(scores), strict=True))
    assert scheduler.prefix_cache.stats.evictions >= 2
    assert len(engine.calls["decoder"]) == 4  # group 0's prefix computed twice
    assert [got[i] for i in range(len(requests))] == [expected_top(r) for r in requests]


def test_with_caches_off_every_batch_recomputes_vision_and_prefix() -> None:
    requests = survey([image(0)], questions=6)
    engine = FakeEngine()
    off = Budgets(0, 0, 2**30, max_batch=2)
    scores = Scheduler(engine, SPEC, pad_token_id=0, budgets=off).score(requests)
    batches = len(engine.calls["suffix"])
    assert batches >= 3
    assert len(engine.calls["vision"]) == batches and len(engine.calls["decoder"]) == batches
    assert tops(scores) == [expected_top(r) for r in requests]


def test_order_of_requests_does_not_change_answers() -> None:
    requests = survey([None, image(0), image(1)])
    forward = Scheduler(FakeEngine(), SPEC, pad_token_id=0, budgets=ROOMY).score(requests)
    backward = Scheduler(FakeEngine(), SPEC, pad_token_id=0, budgets=ROOMY).score(requests[::-1])
    assert tops(forward) == tops(backward[::-1])


def test_groups_run_image_by_image() -> None:
    a, b = image(0), image(1)
    requests = survey([a, None, b, a])
    engine = FakeEngine()
    plan = Scheduler(engine, SPEC, pad_token_id=0, budgets=ROOMY).plan(requests)
    keys = [g.image_key for g in plan]
    assert keys[0] == ""  # text first
    assert keys == sorted(keys) and len(set(keys)) == 3  # each image's groups consecutive


def test_a_prefix_budget_too_small_for_one_prefix_is_refused_before_any_work() -> None:
    requests = survey([image(0)])
    needed = prefix_cache_bytes(SPEC, 3 + SPEC.num_image_tokens(60, 110))
    engine = FakeEngine()
    scheduler = Scheduler(engine, SPEC, pad_token_id=0, budgets=Budgets(2**30, needed - 1, 2**30))
    with pytest.raises(BudgetError, match=f"prefix-cache-bytes {needed} or more"):
        next(iter(scheduler.run(requests)))
    assert all(not calls for calls in engine.calls.values())


def test_an_image_budget_too_small_for_one_image_is_refused() -> None:
    needed = image_feature_bytes(SPEC, SPEC.num_image_tokens(60, 110))
    scheduler = Scheduler(
        FakeEngine(), SPEC, pad_token_id=0, budgets=Budgets(needed - 1, 2**30, 2**30)
    )
    with pytest.raises(BudgetError, match=f"image-cache-bytes {needed} or more"):
        scheduler.plan(survey([image(0)]))


def test_an_activation_budget_too_small_for_one_row_is_refused() -> None:
    scheduler = Scheduler(FakeEngine(), SPEC, pad_token_id=0, budgets=Budgets(2**30, 2**30, 10))
    with pytest.raises(BudgetError, match="activation budget 10 B cannot hold"):
        scheduler.plan(survey([None]))


def test_an_engine_without_the_suffix_part_is_refused_with_how_to_rebuild() -> None:
    with pytest.raises(MissingSuffixPart, match="cvs-export build --model tiny-yi"):
        Scheduler(PrefixlessEngine(), SPEC, pad_token_id=0)


def test_stage_times_count_calls_and_tokens() -> None:
    requests = survey([None, image(0)], questions=3)
    scheduler = Scheduler(FakeEngine(), SPEC, pad_token_id=0, budgets=ROOMY)
    scheduler.score(requests)
    times = scheduler.times
    assert times.calls["vision"] == 1 and times.calls["prefix"] == 2
    assert times.tokens["prefix"] == 4 + 3 + SPEC.num_image_tokens(60, 110)
    assert times.tokens["suffix"] == sum(len(r.input_ids) - 4 for r in requests)
    assert times.tokens["scores"] == len(requests)
    assert all(seconds >= 0 for seconds in times.seconds.values())
