"""The PyTorch reference scorer: HF's own numbers, independent of batching, and parity that fails.

Tiny families (seeded, peaked) carry the numerics tests; `smol` (a real SmolLM2) the end-to-end
one. Requests mix text items and images of three anyres grids.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cvs_evaluator.images import ImageRecord, LoadedImage, flag_images, load_rgb
from cvs_evaluator.prompts import build_items, to_request
from cvs_evaluator.questions import Question
from cvs_families.checkpoint import LoadedModel, ensure_checkpoint, load_model
from cvs_families.reference import (
    ReferenceScorer,
    answer_logits,
    expand_image_placeholder,
    head_logits_float64,
    padded_length,
    plan_batches,
)
from cvs_families.registry import get_family
from cvs_families.requests import ScoringRequest
from cvs_families.scores import OptionScores, option_scores_from_logits

TINY = ("tiny-vicuna", "tiny-yi", "tiny-qwen")
TOLERANCE = 1e-5
"""Option log-probs at fp32: batching, order and caching may not move them more (DESIGN.md)."""
IMAGE_SHAPES = ((30, 70), (90, 40), (64, 64))
"""(height, width) of the test images: three different anyres grids on the tiny families."""

QUESTIONS = tuple(
    Question(
        id=qid, text=text, options=tuple(enumerate(labels, start=1)), ordinal=True, section="TEST"
    )
    for qid, text, labels in (
        (
            "Q1",
            "How important is family in your life?",
            ("Very important", "Rather important", "Not very important", "Not at all important"),
        ),
        ("Q57", "Can most people be trusted?", ("Most people can be trusted", "Be careful")),
        (
            "Q48",
            "How much freedom of choice do you feel you have over your life?",
            tuple(str(n) for n in range(1, 11)),
        ),
        (
            "Q199",
            "How interested are you in politics?",
            ("Very", "Somewhat", "Not very", "Not at all"),
        ),
    )
)


def _records() -> list[ImageRecord]:
    return [
        ImageRecord(
            id=f"img{i}",
            path=Path("/unused"),
            country=country,
            country_name=name,
            category=category,
        )
        for i, (country, name, category) in enumerate(
            [
                ("NGA", "Nigeria", "objects"),
                ("BRA", "Brazil", "tradition"),
                ("VNM", "Viet Nam", "flag"),
            ]
        )
    ]


def _pixels(index: int) -> np.ndarray:
    height, width = IMAGE_SHAPES[index]
    return np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _requests(loaded: LoadedModel) -> list[ScoringRequest]:
    spec, tokenizer = loaded.spec, loaded.tokenizer
    images = {f"img{i}": spec.prepare_image(_pixels(i)) for i in range(len(IMAGE_SHAPES))}
    text = build_items(QUESTIONS, ["NGA", "MEX"], "text", [], tokenizer, spec)
    image = build_items(QUESTIONS, [], "image", _records(), tokenizer, spec)
    return [
        to_request(item, tokenizer, spec, images.get(item.image_id)) for item in [*text, *image]
    ]


@pytest.fixture(scope="module")
def tiny() -> dict[str, tuple[LoadedModel, list[ScoringRequest]]]:
    """Each tiny family, loaded, with its 20 requests (8 text, 12 image)."""
    out = {}
    for name in TINY:
        spec = get_family(name)
        loaded = load_model(spec, ensure_checkpoint(spec))
        out[name] = (loaded, _requests(loaded))
    return out


def _assert_close(name: str, got: Sequence[OptionScores], want: Sequence[OptionScores]) -> float:
    """Max |Δ option log-prob| ≤ TOLERANCE, reported like nanochat's assert_close."""
    diffs = [np.abs(g.option_logprobs - w.option_logprobs) for g, w in zip(got, want, strict=True)]
    worst = int(np.argmax([d.max() for d in diffs]))
    where = int(np.argmax(diffs[worst]))
    biggest = float(diffs[worst][where])
    assert biggest <= TOLERANCE, (
        f"{name}: max diff {biggest:.3g} at item {worst} option {where}: "
        f"{got[worst].option_logprobs[where]!r} vs {want[worst].option_logprobs[where]!r}"
    )
    return biggest


def _min_option_change(
    a: torch.Tensor, b: torch.Tensor, requests: Sequence[ScoringRequest]
) -> float:
    """Smallest over items of the largest option log-prob change between two logit batches."""
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    return min(
        float((la[i, r.option_token_ids] - lb[i, r.option_token_ids]).abs().max())
        for i, r in enumerate(requests)
    )


# --------------------------------------------------------------------------- batching


def test_plan_batches_groups_by_length_bucket_in_order() -> None:
    assert (
        padded_length(1, 32) == 32 and padded_length(32, 32) == 32 and padded_length(33, 32) == 64
    )
    lengths = [40, 10, 50, 70, 33, 5, 64]
    assert plan_batches(lengths, 2, 32) == [[0, 2], [4, 6], [1, 5], [3]]
    assert plan_batches(lengths, 8, 1) == [[i] for i in range(7)]


@pytest.mark.parametrize("family", TINY)
def test_requests_mix_grids_and_text(family: str, tiny: dict) -> None:
    _, requests = tiny[family]
    grids = {r.image.grid for r in requests if r.image is not None}
    assert len(grids) == 3
    assert sum(r.image is None for r in requests) == 8


@pytest.mark.parametrize("family", TINY)
def test_scores_do_not_depend_on_batch_size_or_order(family: str, tiny: dict) -> None:
    loaded, requests = tiny[family]
    one = ReferenceScorer(loaded, batch_size=1).score(requests)
    eight = ReferenceScorer(loaded, batch_size=8).score(requests)
    order = list(range(len(requests)))
    random.Random(13).shuffle(order)
    shuffled = ReferenceScorer(loaded, batch_size=13).score([requests[i] for i in order])
    thirteen = [shuffled[order.index(i)] for i in range(len(requests))]
    _assert_close(f"{family} batch 8 vs 1", eight, one)
    _assert_close(f"{family} batch 13 shuffled vs 1", thirteen, one)


@pytest.mark.parametrize("family", ["tiny-vicuna", "tiny-qwen"])
def test_reference_equals_the_hf_processor_path(family: str, tiny: dict) -> None:
    """HF's own processor (tokenizer + LlavaNextImageProcessorPil) gives the same tokens and the
    same option log-probs as the reference fed by the family's numpy preprocessing."""
    from PIL import Image
    from transformers import AutoProcessor

    loaded, _ = tiny[family]
    spec = loaded.spec
    processor = AutoProcessor.from_pretrained(loaded.path)
    items = build_items(QUESTIONS[:2], [], "image", _records(), loaded.tokenizer, spec)
    scorer = ReferenceScorer(loaded, batch_size=1, pad_multiple=1)
    for item in items:
        index = int(item.image_id[-1])
        request = to_request(item, loaded.tokenizer, spec, spec.prepare_image(_pixels(index)))
        inputs = processor(
            text=item.text, images=Image.fromarray(_pixels(index)), return_tensors="pt"
        )
        assert inputs["input_ids"][0].tolist() == expand_image_placeholder(request, spec).tolist()
        with torch.no_grad():
            hidden = loaded.model.model(**inputs).last_hidden_state[0, -1]
        want = option_scores_from_logits(
            head_logits_float64(loaded.model, hidden).numpy(), request.option_token_ids
        )
        _assert_close(f"{family} {item.item_id}", scorer.score([request]), [want])


# --------------------------------------------------------------------------- mutations


@pytest.mark.parametrize("family", TINY)
def test_answer_position_off_by_one_fails_parity(family: str, tiny: dict) -> None:
    loaded, requests = tiny[family]
    scorer = ReferenceScorer(loaded)
    chunk = requests[:4] + [r for r in requests if r.image is not None][:4]
    batch = scorer.batch(chunk)
    base = answer_logits(loaded.model, batch)
    assert torch.equal(answer_logits(loaded.model, batch), base)  # the control reproduces
    positions = batch.position_ids.clone()
    positions[:, -1] += 1
    shifted = answer_logits(loaded.model, dataclasses.replace(batch, position_ids=positions))
    assert _min_option_change(shifted, base, chunk) > TOLERANCE


@pytest.mark.parametrize("family", TINY)
def test_swapped_tiles_fail_parity(family: str, tiny: dict) -> None:
    loaded, requests = tiny[family]
    chunk = [r for r in requests if r.image is not None][:6]
    assert all(r.image is not None and r.image.pixel_values.shape[0] >= 3 for r in chunk)
    batch = ReferenceScorer(loaded).batch(chunk)
    assert batch.pixel_values is not None
    swapped = batch.pixel_values.clone()
    swapped[:, [1, 2]] = swapped[:, [2, 1]]
    base = answer_logits(loaded.model, batch)
    mutated = answer_logits(loaded.model, dataclasses.replace(batch, pixel_values=swapped))
    assert _min_option_change(mutated, base, chunk) > TOLERANCE


# --------------------------------------------------------------------------- outputs


def test_raw_mass_rule_keeps_low_mass_items_with_their_mass(tiny: dict) -> None:
    loaded, requests = tiny["tiny-yi"]
    scorer = ReferenceScorer(loaded)
    chunk = requests[:3] + requests[-3:]
    # Each request alone: the same padding `score` gives it, so the same numbers.
    logits = torch.cat([answer_logits(loaded.model, scorer.batch([r])) for r in chunk])
    probs = torch.softmax(logits, -1)
    masses = [float(probs[i, r.option_token_ids].sum()) for i, r in enumerate(chunk)]
    kept = scorer.score_items(chunk)
    for item, mass, request in zip(kept, masses, chunk, strict=True):
        assert item.status == "scored" and item.reason == ""
        assert item.raw_mass == pytest.approx(mass, rel=1e-9)
        assert item.distribution is not None
        manual = np.exp(item.scores.option_logprobs) / np.exp(item.scores.option_logprobs).sum()
        np.testing.assert_allclose(item.distribution, manual, rtol=1e-12)
        assert item.distribution.sum() == pytest.approx(1.0, abs=1e-12)
        top = set(torch.topk(logits[chunk.index(request)], 20).indices.tolist())
        assert set(item.scores.topk_token_ids.tolist()) == top
    # Halfway between the second and third lowest masses: exactly two items fall below it. (At
    # the third mass itself, the float32 softmax above and the scorer's float64 reduction can
    # land on either side of the threshold: that depends on the CPU, not on the rule.)
    second, third = sorted(masses)[1:3]
    assert second < third
    cut = (second + third) / 2
    judged = scorer.score_items(chunk, threshold=cut)
    low = [j for j in judged if j.status == "low_mass"]
    assert len(low) == 2
    for item in low:
        assert item.distribution is None and item.topk_distribution is None
        assert item.raw_mass < cut and "below the threshold" in item.reason


def test_continuation_log_likelihoods_equal_whole_sequence_sums(tiny: dict) -> None:
    loaded, requests = tiny["tiny-qwen"]
    tokenizer = loaded.tokenizer
    scorer = ReferenceScorer(loaded, batch_size=2, pad_multiple=1)
    names = [" Nigeria", " Brazil", " Viet Nam and Mexico", " A"]
    continuations = [tokenizer.encode(n, add_special_tokens=False) for n in names]
    assert {len(c) for c in continuations} != {1}
    chosen = [requests[0], next(r for r in requests if r.image is not None)]
    got = scorer.score_continuations(chosen, continuations)
    assert got.shape == (2, 4)
    for row, request in enumerate(chosen):
        for column, tokens in enumerate(continuations):
            ids = np.concatenate([request.input_ids, np.asarray(tokens, dtype=np.int64)])
            whole = dataclasses.replace(request, input_ids=ids)
            batch = scorer.batch([whole])
            with torch.no_grad():
                hidden = loaded.model.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    pixel_values=batch.pixel_values,
                    image_sizes=batch.image_sizes,
                ).last_hidden_state[0]
            logprobs = torch.log_softmax(head_logits_float64(loaded.model, hidden), -1)
            start = hidden.shape[0] - len(tokens) - 1
            want = sum(float(logprobs[start + k, t]) for k, t in enumerate(tokens))
            assert abs(got[row, column] - want) <= TOLERANCE, (row, column, got[row, column], want)


def test_pad_token_may_not_be_the_image_token(tiny: dict) -> None:
    from cvs_families.reference import build_batch

    loaded, requests = tiny["tiny-vicuna"]
    with pytest.raises(ValueError, match="image token"):
        build_batch(
            requests[:1], loaded.spec, pad_token_id=loaded.spec.image_token_id, dtype=torch.float32
        )


# --------------------------------------------------------------------------- end to end


def _check_distributions(items: Sequence[Any], requests: Sequence[ScoringRequest]) -> None:
    for item, request in zip(items, requests, strict=True):
        assert item.status == "scored"
        assert 0.0 < item.raw_mass <= 1.0 + 1e-12
        assert item.distribution.shape == request.option_token_ids.shape
        assert np.all(item.distribution >= 0) and item.distribution.sum() == pytest.approx(
            1, abs=1e-12
        )
        assert np.all(item.scores.option_logprobs <= 0)
        if item.topk_distribution is not None:
            assert item.topk_distribution.sum() == pytest.approx(1, abs=1e-12)
            absent = ~np.isin(request.option_token_ids, item.scores.topk_token_ids)
            assert np.all(item.topk_distribution[absent] == 0)


def test_end_to_end_tiny_family(tiny: dict) -> None:
    loaded, requests = tiny["tiny-vicuna"]
    items = ReferenceScorer(loaded).score_items(requests)
    _check_distributions(items, requests)
    tops = [item.distribution.max() for item in items if item.distribution is not None]
    assert len(tops) == len(items) and np.mean(tops) >= 0.5  # peaked, not uniform


@pytest.mark.slow
def test_end_to_end_smol_text_and_flag_image() -> None:
    """smol (real SmolLM2 weights): text prompts and one real flag, through the reference."""
    spec = get_family("smol")
    loaded = load_model(spec, ensure_checkpoint(spec))
    tokenizer = loaded.tokenizer
    text = build_items(QUESTIONS[:3], ["NGA"], "text", [], tokenizer, spec)
    text_requests = [to_request(item, tokenizer, spec, None) for item in text]
    flags = flag_images()
    record = next(r for r in flags.records if r.country == "NGA")
    image = load_rgb(record, flags.root)
    assert isinstance(image, LoadedImage), image
    image_item = build_items(QUESTIONS[:1], [], "image", [record], tokenizer, spec)[0]
    image_request = to_request(image_item, tokenizer, spec, spec.prepare_image(image.pixels))
    requests = [*text_requests, image_request]
    items = ReferenceScorer(loaded, batch_size=4).score_items(requests)
    _check_distributions(items, requests)
    assert text_requests[0].option_token_ids.tolist() == [49, 50, 51, 52]
    # A real instruct model puts nearly all its mass on the letters.
    assert min(item.raw_mass for item in items[:3]) > 0.9
    single = ReferenceScorer(loaded, batch_size=1).score(text_requests)
    _assert_close("smol text batch 1 vs 4", single, [item.scores for item in items[:3]])
