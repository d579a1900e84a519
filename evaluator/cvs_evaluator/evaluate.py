"""The evaluation: WVS questions × countries (× images) → model option distributions → alignment.

`run_evaluation` builds the prompts, scores them on an engine batch by batch into a resumable
`ResultStore`, and `alignment_tables` compares the stored distributions with each country's
human answers, section by section, beside the human baselines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cvs_evaluator.aggregate import permutation_tests, question_similarities, section_means
from cvs_evaluator.baselines import section_baselines
from cvs_evaluator.metrics import item_similarities
from cvs_evaluator.prompts import Condition, PromptItem, build_prompt_set, to_request
from cvs_evaluator.questions import Question, QuestionBank
from cvs_evaluator.results import ResultRow, ResultStore, model_long

if TYPE_CHECKING:
    from cvs_evaluator.images import ImageRecord
    from cvs_families.spec import FamilySpec, PreparedImage
    from cvs_runtime.requests import ScoredItem, ScoringRequest

Scorer = Callable[[Sequence["ScoringRequest"]], list["ScoredItem"]]
"""Scores a batch of requests (the reference scorer's `score_items`, or an engine's)."""


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
    """Requests per scorer call (results do not depend on it)."""
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


def run_evaluation(
    settings: EvalSettings,
    items: Sequence[PromptItem],
    store: ResultStore,
    *,
    scorer: Scorer,
    tokenizer: Any,
    spec: FamilySpec,
    prepare_image: Callable[[str], PreparedImage],
    progress: bool = True,
) -> int:
    """Score the items not yet in `store`, writing each batch as it finishes; returns how many
    were scored now. Items of one group are kept together so a prefix cache can serve them."""
    done = store.done_ids()
    todo = sorted(
        (item for item in items if item.item_id not in done),
        key=lambda item: item.group_key,
    )
    images: dict[str, PreparedImage] = {}
    bar = tqdm(total=len(todo), unit="item", disable=not progress, desc=f"{settings.model}")
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start : start + settings.batch_size]
        requests = []
        for item in batch:
            prepared = None
            if item.image_id:
                if item.image_id not in images:
                    images[item.image_id] = prepare_image(item.image_id)
                prepared = images[item.image_id]
            requests.append(to_request(item, tokenizer, spec, prepared))
        scored = scorer(requests)
        store.append(
            _row(settings, item, result) for item, result in zip(batch, scored, strict=True)
        )
        bar.update(len(batch))
    bar.close()
    return len(todo)


def _row(settings: EvalSettings, item: PromptItem, result: ScoredItem) -> ResultRow:
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
    tests["percent_change"] = (tests["mean_b"] - tests["mean_a"]) / tests["mean_a"] * 100
    return tests


def default_store_path(out_dir: Path, settings: EvalSettings) -> Path:
    """`<out>/<model>-<engine>-<precision>.jsonl`: one store per model, engine and precision."""
    return out_dir / f"{settings.model}-{settings.engine}-{settings.precision}.jsonl"
