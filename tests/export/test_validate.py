"""Validation fails loudly: comparisons, the end-to-end chain, and the mutations it must catch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cvs_export.parts import Tolerance
from cvs_export.validate import (
    CHAIN_TOLERANCES,
    ChainComparison,
    ParityError,
    TorchParts,
    ValidationReport,
    compare,
    compare_chain,
    enforce,
    validate_engine,
    validation_set,
)
from cvs_families.reference import ReferenceScorer, pad_token_for
from cvs_runtime.chain import score_with_parts_copying
from cvs_runtime.ort_backend import OrtParts
from cvs_runtime.scheduler import score_with_parts

TINY_FAMILIES = ("tiny-vicuna", "tiny-yi", "tiny-qwen")
Feeds = dict[str, NDArray[Any]]


class MutatedParts:
    """An engine whose inputs (or outputs) are deliberately wrong for one part."""

    def __init__(
        self,
        inner: Any,
        part: str,
        before: Callable[[Feeds], Feeds] = lambda feeds: feeds,
        after: Callable[[Feeds], Feeds] = lambda out: out,
    ) -> None:
        self.inner, self.part, self.before, self.after = inner, part, before, after

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(self.inner.part_names)

    def input_names(self, part: str) -> tuple[str, ...]:
        return tuple(self.inner.input_names(part))

    def output_names(self, part: str) -> tuple[str, ...]:
        return tuple(self.inner.output_names(part))

    def run(
        self, part: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str] | None = None
    ) -> Feeds:
        if part != self.part:
            return dict(self.inner.run(part, inputs, outputs))
        return self.after(dict(self.inner.run(part, self.before(dict(inputs)), outputs)))


def suffix_positions_off_by_one(feeds: Feeds) -> Feeds:
    """The suffixes' positions continue one past the end of the shared prefix."""
    return {**feeds, "position_ids": feeds["position_ids"] + 1}


def shared_prefix_cut(feeds: Feeds) -> Feeds:
    """The suffixes see the shared prefix cache without its last token."""
    return {k: v[:, :, :-1] if k.startswith("prefix.") else v for k, v in feeds.items()}


def tiles_swapped(feeds: Feeds) -> Feeds:
    pixels = feeds["pixel_values"]
    order = np.arange(pixels.shape[0])
    order[[0, 1]] = order[[1, 0]]  # the base tile and the first grid tile change places
    return {**feeds, "pixel_values": pixels[order]}


@pytest.fixture(scope="module")
def chain_setup(engine_shelf: Any) -> dict[str, tuple[Any, Any, list[Any]]]:
    """Per family: the engine, its validation requests and the reference scores."""
    out = {}
    for family in TINY_FAMILIES:
        built = engine_shelf(family)
        engine = OrtParts.open(built.folder, family=family, precision="fp32")
        requests = validation_set(built.loaded).requests
        out[family] = (engine, requests, ReferenceScorer(built.loaded).score(requests))
    return out


def _chain(engine: Any, built: Any, requests: Any, reference: list[Any]) -> ChainComparison:
    got = score_with_parts(
        engine, built.loaded.spec, requests, pad_token_id=pad_token_for(built.loaded)
    )
    return compare_chain(got, reference, CHAIN_TOLERANCES["fp32"])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_engine_chain_matches_the_reference_scorer(
    family: str, engine_shelf: Any, chain_setup: Any
) -> None:
    engine, requests, reference = chain_setup[family]
    result = _chain(engine, engine_shelf(family), requests, reference)
    assert result.passed and result.max_logprob_diff <= 1e-4, result
    assert result.top1_agreement == 1.0 and result.max_js_distance < 1e-3
    # The images of the validation set fall on two different anyres grids.
    grids = {r.image.grid for r in requests if r.image is not None}
    assert len(grids) == 2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_copying_chain_kept_for_comparison_matches_too(
    family: str, engine_shelf: Any, chain_setup: Any
) -> None:
    engine, requests, reference = chain_setup[family]
    built = engine_shelf(family)
    got = score_with_parts_copying(
        engine, built.loaded.spec, requests, pad_token_id=pad_token_for(built.loaded)
    )
    assert compare_chain(got, reference, CHAIN_TOLERANCES["fp32"]).passed


@pytest.mark.parametrize(
    "part,mutation",
    [
        ("suffix", suffix_positions_off_by_one),
        ("vision", tiles_swapped),
        ("suffix", shared_prefix_cut),
    ],
    ids=["positions-off-by-one", "tiles-swapped", "prefix-split-off-by-one"],
)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_mutations_fail_chain_parity(
    family: str,
    part: str,
    mutation: Callable[[Feeds], Feeds],
    engine_shelf: Any,
    chain_setup: Any,
) -> None:
    engine, requests, reference = chain_setup[family]
    result = _chain(MutatedParts(engine, part, mutation), engine_shelf(family), requests, reference)
    assert not result.passed
    assert result.max_logprob_diff > 10 * CHAIN_TOLERANCES["fp32"]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chain_scores_do_not_depend_on_grouping(
    family: str, engine_shelf: Any, chain_setup: Any
) -> None:
    import dataclasses

    engine, requests, _ = chain_setup[family]
    built = engine_shelf(family)
    pad = pad_token_for(built.loaded)
    grouped = score_with_parts(engine, built.loaded.spec, requests, pad_token_id=pad)
    alone = [
        score_with_parts(
            engine,
            built.loaded.spec,
            [dataclasses.replace(r, group_key=f"alone-{i}", prefix_len=0)],
            pad_token_id=pad,
        )[0]
        for i, r in enumerate(requests)
    ]
    # Different prefix splits mean different matrix shapes, hence different fp32 summation
    # orders in onnxruntime: measured up to 1.2e-5 on option log-probs (peaked tiny models have
    # large logits). The bound is the engine's fp32 parity tolerance; a wrong split or position
    # costs > 1e-3 (the mutation tests).
    bound = CHAIN_TOLERANCES["fp32"]
    for a, b in zip(grouped, alone, strict=True):
        np.testing.assert_allclose(a.option_logprobs, b.option_logprobs, rtol=0, atol=bound)


def test_the_chain_on_pytorch_parts_matches_the_reference(
    engine_shelf: Any, chain_setup: Any
) -> None:
    built = engine_shelf("tiny-qwen")
    _, requests, reference = chain_setup["tiny-qwen"]
    torch_parts = TorchParts(built.loaded.model, built.specs)
    result = _chain(torch_parts, built, requests, reference)
    assert result.max_logprob_diff <= 1e-5, result


def test_a_drifting_decoder_stops_validation_with_the_table(engine_shelf: Any) -> None:
    built = engine_shelf("tiny-vicuna")
    engine = OrtParts.open(built.folder)

    def drift(out: Feeds) -> Feeds:
        return {**out, "logits": out["logits"] + 1e-3} if "logits" in out else out

    report = validate_engine(
        built.loaded, MutatedParts(engine, "decoder", after=drift), built.specs, "fp32"
    )
    with pytest.raises(ParityError) as raised:
        enforce(report)
    message = str(raised.value)
    assert "decoder    logits" in message and "FAIL" in message
    assert "vision     image_features" in message  # the whole table, passing rows included


def test_the_build_records_a_passing_validation_in_the_manifest(engine_shelf: Any) -> None:
    manifest = engine_shelf("tiny-yi").manifest
    assert manifest.validation["passed"] is True
    assert manifest.validation["chain"]["max_logprob_diff"] <= 1e-4
    cases = {(c["part"], c["case"]) for c in manifest.validation["parts"]}
    assert ("decoder", "batch=3 seq=11 past=0 total=11 k=1") in cases


def test_compare_fails_beyond_atol_plus_rtol_and_reports_the_worst_value() -> None:
    reference = np.array([[1.0, 100.0], [0.0, -2.0]])
    engine = reference + np.array([[0.0, 0.05], [2e-3, 0.0]])
    result = compare("p", "y", "n=2", engine, reference, Tolerance(atol=1e-3, rtol=1e-3))
    assert not result.passed
    assert result.where == (1, 0)  # 0.05 is within 1e-3 + 1e-3·100; 2e-3 at 0.0 is not
    assert result.max_abs == pytest.approx(0.05)
    assert compare("p", "y", "n=2", engine, reference, Tolerance(atol=3e-3, rtol=1e-3)).passed


def test_compare_ignores_masked_positions_only() -> None:
    reference = np.zeros((2, 3))
    engine = reference.copy()
    engine[0, 0] = 5.0
    valid = np.array([[False, True, True], [True, True, True]])
    assert compare("p", "y", "", engine, reference, Tolerance(1e-6, 0), valid).passed
    assert not compare("p", "y", "", engine, reference, Tolerance(1e-6, 0)).passed


def test_compare_fails_on_nan() -> None:
    reference = np.ones(4)
    engine = reference.copy()
    engine[2] = np.nan
    result = compare("p", "y", "", engine, reference, Tolerance(1.0, 1.0))
    assert not result.passed and result.max_abs == np.inf


def test_an_empty_report_does_not_pass() -> None:
    assert not ValidationReport(precision="fp32").passed


def test_validation_prompts_speak_the_survey_wording(engine_shelf: Any) -> None:
    """The validation prompts end at the survey's answer position, with its rules: the export
    stage checks what the evaluator will ask (one wording, `cvs_families.prompt_text`)."""
    from cvs_families import prompt_text

    loaded = engine_shelf("tiny-yi").loaded
    requests = validation_set(loaded).requests
    assert {r.group_key for r in requests} == {"text", "image-0", "image-1"}
    for request in requests:
        text = loaded.tokenizer.decode(request.input_ids)
        assert text.endswith(prompt_text.ANSWER_PREFIX), text[-80:]
        assert prompt_text.RULES in text and "Survey question:" in text
