"""The evaluation: WVS questions × countries (× images) → model option distributions → alignment.

`run_evaluation` builds the prompts, hands them to a scorer image by image (all text prompts
at once), writes each batch to a resumable `ResultStore` as the scorer finishes it (the first
batch only once `output_guard` found it informative; an image that cannot be decoded is skipped
and logged, never fatal), and `alignment_tables` compares the stored distributions with each
country's human answers, section by section, beside the human baselines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from cvs_evaluator.aggregate import (
    percent_change,
    permutation_tests,
    question_similarities,
    section_means,
)
from cvs_evaluator.baselines import section_baselines
from cvs_evaluator.images import ImageSkipped
from cvs_evaluator.metrics import item_similarities
from cvs_evaluator.output_guard import OutputCheck, check_finite, check_first_batch
from cvs_evaluator.prompts import (
    Condition,
    PromptItem,
    build_prompt_set,
    encode_prompt,
    to_request,
)
from cvs_evaluator.questions import Question, QuestionBank
from cvs_evaluator.results import ResultRow, ResultStore, model_long

if TYPE_CHECKING:
    from cvs_evaluator.images import ImageRecord, SkippedImage
    from cvs_families.requests import ScoredItem, ScoringRequest
    from cvs_families.spec import FamilySpec, PreparedImage

ScoredBatches = Iterable[tuple[Sequence[int], Sequence["ScoredItem"]]]
"""(request indices, their scored items) per finished batch, in any order."""
Scorer = Callable[[Sequence["ScoringRequest"]], ScoredBatches]
"""Scores a run's requests batch by batch (the reference scorer's `stream`, or an engine's)."""


def in_batches(
    score_items: Callable[[Sequence[ScoringRequest]], list[ScoredItem]], batch_size: int
) -> Scorer:
    """A `Scorer` from a function that scores a list at once, called on slices of
    `batch_size` requests."""
    if batch_size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {batch_size}")

    def stream(requests: Sequence[ScoringRequest]) -> Iterator[tuple[list[int], list[Any]]]:
        for start in range(0, len(requests), batch_size):
            indices = list(range(start, min(start + batch_size, len(requests))))
            yield indices, score_items([requests[i] for i in indices])

    return stream


@dataclass(frozen=True)
class EvalSettings:
    """What one evaluation run scores, and where."""

    model: str
    """Model family name."""
    engine: str
    """`torch` (the PyTorch reference), `ort` or `trt`."""
    precision: str
    """Weights' precision on that engine."""
    conditions: tuple[Condition, ...]
    """Conditions to score."""
    countries: tuple[str, ...]
    """ISO3 codes; for image conditions, the images' true countries to keep."""
    batch_size: int = 8
    """Most requests per forward pass (results do not depend on it)."""
    images: tuple[ImageRecord, ...] = field(default=())
    """Images for the image conditions."""


def select_questions(
    bank: QuestionBank, *, per_section: int | None, only: Sequence[str] = ()
) -> list[Question]:
    """The questions to ask: `only` if given (ids, checked), else `per_section` questions from
    every section that has value questions, spread evenly over the section (all if None)."""
    if only:
        unknown = [qid for qid in only if qid not in bank.questions]
        if unknown:
            raise ValueError(f"not value questions of the bank: {', '.join(unknown)}")
        return [bank.questions[qid] for qid in only]
    chosen: list[Question] = []
    for questions in bank.by_section().values():
        if not questions:
            continue
        if per_section is None or per_section >= len(questions):
            chosen.extend(questions)
            continue
        picks = np.linspace(0, len(questions) - 1, per_section).round().astype(int)
        chosen.extend(questions[i] for i in sorted(set(picks.tolist())))
    return chosen


def build_items(
    settings: EvalSettings,
    questions: Sequence[Question],
    tokenizer: Any,
    spec: FamilySpec,
    *,
    asked: set[tuple[str, str]] | None = None,
) -> tuple[list[PromptItem], list[str]]:
    """Every prompt of the run, and one line per thing left out: questions that could not be
    asked (too many options), and items whose (country, question) is not in `asked` (the
    country's survey did not ask it, so there is nothing to compare with)."""
    items: list[PromptItem] = []
    notes: list[str] = []
    for condition in settings.conditions:
        images = [] if condition == "text" else list(settings.images)
        built = build_prompt_set(questions, settings.countries, condition, images, tokenizer, spec)
        items.extend(built.items)
        notes.extend(sorted(set(built.too_many_options)))
    if asked is not None:
        kept = [item for item in items if (item.country, item.question_id) in asked]
        left_out = sorted({(i.country, i.question_id) for i in items} - asked)
        if left_out:
            pairs = ", ".join(f"{c} {q}" for c, q in left_out[:8])
            more = f" and {len(left_out) - 8} more" if len(left_out) > 8 else ""
            notes.append(
                f"{len(items) - len(kept)} item(s) left out: their country's survey did not ask "
                f"the question ({pairs}{more})"
            )
        items = kept
    return items, notes


class BudgetCheck(Protocol):
    """What `check_budgets` asks of a scheduler (`cvs_runtime.scheduler.Scheduler`)."""

    def check_budgets(
        self, key: str, prefix_tokens: int, image_tokens: int | None, suffix_tokens: int
    ) -> None: ...


def check_budgets(
    items: Sequence[PromptItem],
    tokenizer: Any,
    spec: FamilySpec,
    image_sizes: Mapping[str, tuple[int, int]],
    scheduler: BudgetCheck,
) -> None:
    """Before any scoring: every group's prefix, image and widest suffix against the engine's
    budgets (`BudgetError` names the bytes needed). Image sizes come from file headers; an image
    whose header cannot be read is left to the scoring run."""
    groups: dict[str, list[PromptItem]] = {}
    for item in items:
        groups.setdefault(item.group_key, []).append(item)
    for key, members in groups.items():
        first = members[0]
        prefix = len(encode_prompt(tokenizer, first.text[: first.prefix_chars]))
        image_tokens = None
        if first.image_id:
            if first.image_id not in image_sizes:
                continue
            image_tokens = spec.num_image_tokens(*image_sizes[first.image_id])
        widest = max(len(encode_prompt(tokenizer, item.text)) for item in members) - prefix
        extra = image_tokens - 1 if image_tokens is not None else 0
        scheduler.check_budgets(key, prefix + extra, image_tokens, max(widest, 1))


@dataclass
class ScoringLog:
    """What `run_evaluation` saw besides the rows it stored, filled in as it goes."""

    skipped_images: list[SkippedImage] = field(default_factory=list)
    """Images that could not be decoded: none of their items was scored or stored."""
    output_check: OutputCheck | None = None
    """The check of the first batch scored (None: nothing was scored)."""


PreparedUnits = Iterator[tuple[list[PromptItem], list["ScoringRequest"]]]
"""Work units with their requests, built as they are pulled (one prepared image at a time)."""
UnitBatches = Iterator[tuple[list[PromptItem], Sequence[int], Sequence["ScoredItem"]]]
"""(a unit's items, indices into them, their scored items) per finished batch, in any order."""


class UnitDispatch(Protocol):
    """Where a run's work units are scored: this process (`LocalDispatch`) or a Ray cluster
    (`cvs_evaluator.ray_run.RayDispatch`). The writer (`run_evaluation`) stays in this process."""

    def split(self, items: Sequence[PromptItem]) -> list[list[PromptItem]]:
        """The pending items as work units, in the order they are handed out."""
        ...

    def __call__(self, units: PreparedUnits) -> UnitBatches:
        """Score the units as they are pulled; yield each batch when it is done."""
        ...

    def status(self) -> str:
        """A short line for the progress bar (per worker progress), or ""."""
        ...


class LocalDispatch:
    """Scores in this process: one unit per image (all text items together), so the scorer
    groups, caches and batches within it."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def split(self, items: Sequence[PromptItem]) -> list[list[PromptItem]]:
        units: dict[str, list[PromptItem]] = {}
        for item in items:
            units.setdefault(item.image_id, []).append(item)
        return list(units.values())

    def __call__(self, units: PreparedUnits) -> UnitBatches:
        for unit, requests in units:
            for indices, scored in self.scorer(requests):
                yield unit, indices, scored

    def status(self) -> str:
        return ""


def run_evaluation(
    settings: EvalSettings,
    items: Sequence[PromptItem],
    store: ResultStore,
    *,
    scorer: Scorer | None = None,
    dispatch: UnitDispatch | None = None,
    tokenizer: Any,
    spec: FamilySpec,
    prepare_image: Callable[[str], PreparedImage],
    progress: bool = True,
    row_identity: Callable[[PromptItem], Mapping[str, str]],
    done: set[str] | None = None,
    clock: StageTiming | None = None,
    log: ScoringLog | None = None,
    engine_folder: Path | None = None,
) -> int:
    """Score the items not yet in `store`; returns how many were scored now.

    The pending items are split into work units by `dispatch` (default: `LocalDispatch` on
    `scorer`, one unit per image, the text items together), each unit's image prepared once as
    the unit is handed out (at most one prepared image per unit in flight); each batch is
    written to the store by this process as soon as it is scored (a crash loses at most the
    batches in flight). `row_identity(item)`: what identifies the weights, engine, image and
    scoring in each row (`row_identity`); `done`: item ids to skip (default: the store's);
    `clock` times prompt building and image preprocessing.

    The first batch is checked before it is stored (`output_guard.check_first_batch`: uniform
    over `spec.vocab_size` or NaN/inf raises `DegenerateOutputError`, naming `engine_folder`
    to verify), later ones for NaN/inf. With a `log`, an image `prepare_image` rejects
    (`ImageSkipped`) is recorded there and its items left out; without one it is raised."""
    if dispatch is None:
        if scorer is None:
            raise ValueError("run_evaluation needs a scorer or a dispatch")
        dispatch = LocalDispatch(scorer)
    done = store.done_ids() if done is None else done
    timing = clock or _NoClock()
    who = f"{settings.model} on {settings.engine}/{settings.precision}"
    remedy = (
        f"run `cvs-export verify {engine_folder}`"
        if engine_folder is not None
        else "check the checkpoint the weights were loaded from"
    )
    units = dispatch.split([item for item in items if item.item_id not in done])
    todo = sum(len(unit) for unit in units)
    bar = tqdm(total=todo, unit="item", disable=not progress, desc=f"{settings.model}")

    def skip(unit: list[PromptItem], skipped: ImageSkipped) -> None:
        nonlocal todo
        if log is None:
            raise skipped
        log.skipped_images.append(skipped.skipped)
        todo -= len(unit)
        bar.total = todo

    prepared = _prepared_units(units, tokenizer, spec, prepare_image, timing, skip)
    checked = False
    for unit, indices, scored in dispatch(prepared):
        logprobs = [result.scores.option_logprobs for result in scored]
        ids = [unit[i].item_id for i in indices]
        if not checked and logprobs:  # the first batch with items in it
            check = check_first_batch(
                logprobs, spec.vocab_size, who=who, remedy=remedy, item_ids=ids
            )
            checked = True
            if log is not None:
                log.output_check = check
        else:
            check_finite(logprobs, who=who, remedy=remedy, item_ids=ids)
        store.append(
            _row(settings, unit[i], result, row_identity(unit[i]))
            for i, result in zip(indices, scored, strict=True)
        )
        bar.update(len(scored))
        status = dispatch.status()
        if status:
            bar.set_postfix_str(status, refresh=False)
    bar.close()
    return todo


def _prepared_units(
    units: Sequence[list[PromptItem]],
    tokenizer: Any,
    spec: FamilySpec,
    prepare_image: Callable[[str], PreparedImage],
    timing: StageTiming,
    skip: Callable[[list[PromptItem], ImageSkipped], None],
) -> PreparedUnits:
    """Each unit with its requests, its image prepared once when the unit is pulled; a unit
    whose image `prepare_image` rejects goes to `skip` instead."""
    for unit in units:
        image = None
        if unit[0].image_id:
            try:
                with timing.timed("image_preprocess"):
                    image = prepare_image(unit[0].image_id)
            except ImageSkipped as skipped:
                skip(unit, skipped)
                continue
        requests = []
        for item in unit:
            with timing.timed("prompt"):
                requests.append(to_request(item, tokenizer, spec, image))
        yield unit, requests


SCORING_VARIANT = "letters-renorm-v1"
"""How a row's numbers are made from the forward pass: the option letters' full-vocabulary
log-probs at the answer position, renormalised; the raw-mass rule; the top-20 variant. Changes
whenever any of that changes (a stored row is reused only under the same variant)."""


def row_identity(
    checkpoint_fingerprint: str,
    engine_manifest_sha256: str,
    image_hashes: Mapping[str, str] | None = None,
) -> Callable[[PromptItem], dict[str, str]]:
    """What identifies an item's row besides its id: the weights, the engine ("" for torch),
    the image's bytes ("" for text) and the scoring variant."""
    hashes = image_hashes or {}

    def identity(item: PromptItem) -> dict[str, str]:
        return {
            "checkpoint_fingerprint": checkpoint_fingerprint,
            "engine_manifest_sha256": engine_manifest_sha256,
            "image_sha256": hashes.get(item.image_id, "") if item.image_id else "",
            "scoring_variant": SCORING_VARIANT,
        }

    return identity


class StageTiming(Protocol):
    """Times the evaluator's own stages (`run_scoring.StageClock`)."""

    def timed(self, stage: str) -> AbstractContextManager[None]: ...


class _NoClock:
    def timed(self, stage: str) -> AbstractContextManager[None]:
        return nullcontext()


def _row(
    settings: EvalSettings, item: PromptItem, result: ScoredItem, extras: Mapping[str, Any]
) -> ResultRow:
    def listed(values: np.ndarray | None) -> list[float] | None:
        return None if values is None else [float(v) for v in values]

    return ResultRow(
        item_id=item.item_id,
        model=settings.model,
        engine=settings.engine,
        precision=settings.precision,
        template_version=item.template_version,
        condition=item.condition,
        country=item.country,
        question=item.question_id,
        section=item.section,
        image=item.image_id,
        group_key=item.group_key,
        option_codes=list(item.option_codes),
        option_logprobs=[float(v) for v in result.scores.option_logprobs],
        raw_mass=result.raw_mass,
        status=result.status,
        reason=result.reason,
        distribution=listed(result.distribution),
        topk_distribution=listed(result.topk_distribution),
        **extras,
    )


@dataclass(frozen=True)
class AlignmentTables:
    """Model alignment per section beside the human baselines."""

    items: pd.DataFrame
    """One row per scored item with its similarity."""
    sections: pd.DataFrame
    """Mean similarity per model × condition × country × section, with baselines beside."""
    low_mass: int
    """Items kept but not scored (raw option mass below the threshold)."""


def alignment_tables(
    rows: pd.DataFrame, shares: pd.DataFrame, bank: QuestionBank
) -> AlignmentTables:
    """Similarity of each stored item to its country's answers; section means beside the
    human baselines computed over the same questions."""
    low_mass = int((rows["status"] != "scored").sum())
    items = item_similarities(model_long(rows), shares)
    per_question = question_similarities(items)
    sections = section_means(per_question, bank.section_of())
    # Baselines over the questions the model was asked, so both columns average the same pairs.
    asked = shares[shares["question"].isin(set(items["question"]))]
    baselines = section_baselines(asked, bank, sorted(set(sections["country"])))
    wide = baselines.pivot_table(
        index=["country", "section"], columns="baseline", values="similarity"
    ).reset_index()
    merged = sections.merge(wide, on=["country", "section"], how="left")
    return AlignmentTables(items=items, sections=merged, low_mass=low_mass)


def condition_effects(
    items: pd.DataFrame, bank: QuestionBank, condition_a: str, condition_b: str, *, seed: int = 0
) -> pd.DataFrame:
    """Per model × section (and "all"): the change from `condition_a` to `condition_b` over the
    (country, question) pairs scored under both, in percent of `condition_a`'s mean, with the
    paired sign-flip permutation test's two-sided p-value (10,000 resamples, seeded)."""
    tests = permutation_tests(
        question_similarities(items), bank.section_of(), condition_a, condition_b, seed=seed
    )
    tests["percent_change"] = percent_change(tests["mean_a"], tests["mean_b"])
    return tests
