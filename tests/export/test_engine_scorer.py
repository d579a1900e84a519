"""The engine registry and scorer: survey prompts scored on an ONNX engine match the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvs_evaluator.images import SkippedImage, flag_images, load_rgb
from cvs_evaluator.prompts import build_items, to_request
from cvs_evaluator.questions import load_question_bank
from cvs_families.checkpoint import checkpoint_fingerprint, pad_token_id
from cvs_families.reference import ReferenceScorer
from cvs_runtime.engine_manifest import EngineMismatch
from cvs_runtime.engines import EngineScorer, UnknownEngineError, engine_folder, open_engine

FP32_LOGPROB_TOLERANCE = 1e-4
"""ORT fp32 vs PyTorch fp32 on option log-probs (issue 4's stated tolerance)."""


def _requests(loaded: Any) -> list[Any]:
    bank = load_question_bank()
    questions = [bank.questions[q] for q in ("Q57", "Q58", "Q164", "Q199")]
    spec, tokenizer = loaded.spec, loaded.tokenizer
    requests = []
    for country in ("DEU", "JPN"):
        for item in build_items(questions, [country], "text", [], tokenizer, spec):
            requests.append(to_request(item, tokenizer, spec, None))
    flags = flag_images()
    records = [r for r in flags.records if r.country in ("BRA", "JPN")]
    rng = np.random.default_rng(0)
    for record, shape in zip(records, [(40, 130, 3), (130, 40, 3)], strict=True):
        assert not isinstance(load_rgb(record, flags.root), SkippedImage)
        # A wide and a tall image (noise; the flags are too alike) give two anyres grids.
        prepared = spec.prepare_image(rng.integers(0, 256, shape, dtype=np.uint8))
        for item in build_items(questions, [], "image+country", [record], tokenizer, spec):
            requests.append(to_request(item, tokenizer, spec, prepared))
    grids = {r.image.grid for r in requests if r.image is not None}
    assert len(grids) == 2, f"the flags chosen should give two anyres grids, got {grids}"
    return requests


@pytest.mark.parametrize("family", ["tiny-yi", "tiny-qwen"])
def test_survey_prompts_on_the_ort_engine_match_the_reference(
    engine_shelf: Any, family: str
) -> None:
    built = engine_shelf(family)
    loaded = built.loaded
    parts = open_engine(
        "ort",
        built.folder,
        family=family,
        precision="fp32",
        checkpoint_fingerprint=checkpoint_fingerprint(loaded.path),
    )
    requests = _requests(loaded)
    engine = EngineScorer(
        parts, loaded.spec, pad_token_id=pad_token_id(loaded.spec, loaded.tokenizer)
    )
    got = engine.score_items(requests)
    want = ReferenceScorer(loaded, batch_size=5).score_items(requests)
    diffs = [
        np.abs(g.scores.option_logprobs - w.scores.option_logprobs).max()
        for g, w in zip(got, want, strict=True)
    ]
    worst = int(np.argmax(diffs))
    assert diffs[worst] <= FP32_LOGPROB_TOLERANCE, (
        f"max |Δ option log-prob| {diffs[worst]:.3g} at request {worst} "
        f"({requests[worst].item_id}): engine {got[worst].scores.option_logprobs} vs "
        f"reference {want[worst].scores.option_logprobs}"
    )
    assert [g.status for g in got] == [w.status for w in want]
    top = [int(np.argmax(g.scores.option_logprobs)) for g in got]
    assert top == [int(np.argmax(w.scores.option_logprobs)) for w in want]


def test_an_engine_is_refused_for_another_precision_or_checkpoint(engine_shelf: Any) -> None:
    built = engine_shelf("tiny-yi")
    with pytest.raises(EngineMismatch, match="precision"):
        open_engine("ort", built.folder, family="tiny-yi", precision="fp16")
    with pytest.raises(EngineMismatch, match="fingerprint"):
        open_engine(
            "ort", built.folder, family="tiny-yi", precision="fp32", checkpoint_fingerprint="0" * 64
        )


def test_an_unknown_engine_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownEngineError, match="did you mean 'trt'"):
        open_engine("trtt", tmp_path, family="tiny-yi", precision="fp32")


def test_engine_folders_follow_the_build_layout(tmp_path: Path) -> None:
    assert engine_folder(tmp_path, "ort", "yi34b", "fp16") == tmp_path / "yi34b" / "fp16"
    assert engine_folder(tmp_path, "ort-cuda", "yi34b", "fp16") == tmp_path / "yi34b" / "fp16"
    assert engine_folder(tmp_path, "trt", "yi34b", "fp16") == tmp_path / "yi34b" / "trt-fp16"
