"""One `cvs-eval` run, start to finish: a run folder scored, compared, and reported.

`execute` checks every image's header first (an unusable image is skipped with its reason:
`cvs_evaluator.skipped_images`), builds the prompts, opens the run folder (a kernel lock for the
whole run; rows reused only under the same identity), screens the images when asked, scores
what the store lacks, scores a sample on the comparison engine into `RUN/compare/`, and writes
the reports, with `results.parquet` last. `rebuild_reports` writes the reports again from the
stores, scoring nothing. Stage timings (prompt building, image preprocessing, the engine's
stages, the metric) go to the latency report; scoring itself, local or on Ray, is
`cvs_evaluator.run_scoring`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvs_evaluator import evaluate, run_scoring
from cvs_evaluator.durable import write_json, write_text
from cvs_evaluator.images import (
    ImageSkipped,
    SkippedImage,
    check_images,
    image_hashes,
    image_preparer,
    image_source,
    no_images,
)
from cvs_evaluator.prompts import PROMPT_TEMPLATE_VERSION, Condition, PromptItem
from cvs_evaluator.results_table import results_frame
from cvs_evaluator.run_scoring import StageClock
from cvs_evaluator.scorers import RunScorer
from cvs_evaluator.skipped_images import (
    SKIPPED_FILE,
    read_skipped,
    record_skipped,
    refuse_if_all_skipped,
)

PARITY_SEED = 0
"""Seeds the parity sample."""
SETTINGS_FILE = "settings.json"
"""What the run asked for (conditions, countries, questions, human source): `report` reads it."""
TIMINGS_FILE = "timings.json"
"""Per-call stage seconds and cache statistics of the run and its comparison, and the check of
each one's first scored batch (`output_check`)."""


@dataclass(frozen=True)
class RunRequest:
    """Everything `cvs-eval run` was asked, in the CLI's words."""

    model: str
    engine: str
    engines_root: Path
    precision: str
    weights: Path | None
    conditions: tuple[Condition, ...]
    countries: tuple[str, ...]
    questions: tuple[str, ...]
    per_section: int | None
    images: str
    include_uninformative_images: bool
    out: Path
    fresh: bool
    compare_to: str | None
    parity_sample: int
    screen: int | None
    human_source: str
    goqa_file: Path | None
    batch_size: int
    budgets: Any
    share_weight_pages: bool = False
    allow_failed_engine: bool = False
    verify_engine: str = "cached"
    ray: Any = None
    """`cvs_evaluator.ray_run.RaySettings` to score on a Ray cluster; None: in this process."""
    progress: bool = True
    show_items: bool = False
    command_line: tuple[str, ...] = field(default_factory=lambda: tuple(sys.argv))


def parity_sample(items: Sequence[PromptItem], size: int, seed: int = PARITY_SEED) -> list[str]:
    """Item ids to score on the comparison engine, in run order: all when there are no more
    than `size`; else whole (country, question) pairs drawn in a seeded order, each with all of
    its items (text and image alike, so the image − text effect can be compared), until `size`
    items are taken (the last pair may be cut short)."""
    if len(items) <= size:
        return [item.item_id for item in items]
    pairs: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(items):
        pairs.setdefault((item.country, item.question_id), []).append(index)
    keys = sorted(pairs)
    chosen: list[int] = []
    for position in np.random.default_rng(seed).permutation(len(keys)):
        chosen.extend(pairs[keys[position]][: size - len(chosen)])
        if len(chosen) == size:
            break
    return [items[i].item_id for i in sorted(chosen)]


def identity_of(model: str, scorer: RunScorer) -> Any:
    """What a stored row must share with this run to be reused."""
    from cvs_evaluator.run_folder import RunIdentity

    return RunIdentity(
        model=model,
        engine=scorer.engine,
        precision=scorer.precision,
        checkpoint_fingerprint=scorer.checkpoint_fingerprint,
        engine_manifest_sha256=scorer.engine_manifest_sha256,
        template_version=PROMPT_TEMPLATE_VERSION,
        scoring_variant=evaluate.SCORING_VARIANT,
    )


def settings_record(
    request: RunRequest,
    countries: Sequence[str],
    questions: Sequence[str],
    items: Sequence[PromptItem] = (),
    scorer: RunScorer | None = None,
    parity_skipped: str | None = None,
) -> dict[str, Any]:
    """What `report` needs to rebuild the reports: the run's choices, resolved."""
    record = asdict(request)
    record.update(countries=list(countries), questions=list(questions))
    record["budgets"] = None if request.budgets is None else asdict(request.budgets)
    record["item_ids"] = [item.item_id for item in items]
    record["scorer"] = asdict_scorer(scorer) if scorer is not None else {}
    record["scorer"]["parity_skipped"] = parity_skipped
    return record


def final_frames(
    run_dir: Path, order: Sequence[str] | None, shares: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(results, comparison results) from the stores; the run's rows in `order` (item ids)."""
    from cvs_evaluator.results import ResultStore

    results = results_frame(ResultStore(run_dir / "store.jsonl").frame(), shares, order)
    compare_store = run_dir / "compare" / "store.jsonl"
    compare = None
    if compare_store.is_file():
        compare = results_frame(ResultStore(compare_store).frame(), shares)
        compare = compare[compare["item_id"].isin(set(results["item_id"]))]
    return results, compare


def human_shares(source: str, goqa_file: Path | None, bank: Any) -> tuple[pd.DataFrame, list[str]]:
    """The human answer distributions and one line per thing that did not map (GlobalOpinionQA)."""
    from cvs_evaluator.wvs import load_study_shares

    if source == "wvs":
        if goqa_file is not None:
            raise ValueError("--goqa-file is read only with --human-source goqa")
        return load_study_shares(), []
    if goqa_file is None:
        raise ValueError("--human-source goqa needs --goqa-file FILE (GlobalOpinionQA's CSV)")
    from cvs_evaluator.globalopinion import load_goqa_shares

    mapped = load_goqa_shares(goqa_file, bank)
    if mapped.shares.empty:
        raise ValueError(
            f"nothing in {goqa_file} matched the question bank: {'; '.join(mapped.describe())}"
        )
    return mapped.shares, mapped.describe()


def execute(request: RunRequest, echo: Callable[[str], None]) -> Path:
    """Run `request` into its run folder; returns the folder."""
    from cvs_evaluator import scorers, terminal
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.run_checks import check_request
    from cvs_evaluator.run_folder import open_run
    from cvs_families.registry import get_family

    check_request(request)  # the CLI's refusals, for library callers too
    spec = get_family(request.model)
    compare_to, skipped_because = _compare_target(request, echo)
    image_conditions = [c for c in request.conditions if c != "text"]
    clock = StageClock()
    bank = load_question_bank()
    shares, unmatched = human_shares(request.human_source, request.goqa_file, bank)
    for line in unmatched:
        echo(line)
    wanted = _wanted_countries(request, set(shares["country"]), echo)
    chosen = evaluate.select_questions(
        bank, per_section=request.per_section, only=request.questions
    )
    image_set = image_source(request.images) if image_conditions else None
    records, skipped, sizes, candidates = _checked_images(image_set, wanted)
    has_text = "text" in request.conditions
    refuse_if_all_skipped(candidates, skipped, has_text=has_text)
    scorer = run_scoring.run_scorer(request, spec)
    if compare_to is not None:  # before any scoring: both sides must score one checkpoint
        scorers.check_same_checkpoint(
            scorer, compare_to, spec, request.weights, request.engines_root
        )
    hashes = image_hashes(records, image_set.root) if image_set else {}
    with open_run(request.out, identity_of(request.model, scorer), fresh=request.fresh) as run:
        screening = None
        if request.screen is not None and image_set is not None:
            screening = _screen(request, spec, scorer, image_set, records, echo, skipped)
            kept = set(screening["image_id"][screening["kept"]])
            records = tuple(r for r in records if r.id in kept)
            write_text(run.path / "screening.csv", screening.to_csv(index=False))
        record_skipped(run.path, skipped if image_set else None)
        refuse_if_all_skipped(candidates, skipped, has_text=has_text)
        settings = evaluate.EvalSettings(
            model=request.model, engine=request.engine, precision=request.precision,
            conditions=request.conditions, countries=tuple(wanted),
            batch_size=request.batch_size, images=records,
        )  # fmt: skip
        asked = set(zip(shares["country"], shares["question"], strict=True))
        with clock.timed("prompt"):
            items, notes = evaluate.build_items(
                settings, chosen, scorer.tokenizer, spec, asked=asked
            )
        for line in notes:
            echo(f"not asked: {line}")
        record = settings_record(
            request, wanted, [q.id for q in chosen], items, scorer, skipped_because
        )
        write_json(run.path / SETTINGS_FILE, record)
        prepare = image_preparer(image_set, spec) if image_set else no_images
        log = evaluate.ScoringLog(skipped_images=skipped)  # decoding failures join the list
        announce = (
            f"{request.model} on {request.engine}/{request.precision}: {len(items)} items "
            f"({len(chosen)} questions × {len(wanted)} countries × "
            f"{', '.join(request.conditions)}) → {run.path}"
        )
        timings: dict[str, Any] = {"run": _score_run(
            request, run, scorer, items, settings, spec=spec, prepare=prepare, hashes=hashes,
            sizes=sizes, clock=clock, log=log, echo=echo, announce=announce,
        ), "compare": None}  # fmt: skip
        if scorer.scheduler is not None:
            terminal.print_stage_times(scorer.scheduler)
        record_skipped(run.path, skipped if image_set else None)
        refuse_if_all_skipped(candidates, skipped, has_text=has_text)
        if compare_to is not None:
            timings["compare"] = _compare(
                request, run, compare_to, spec, items, settings, prepare, hashes, echo, log
            )
            record_skipped(run.path, skipped if image_set else None)
        if skipped:
            terminal.print_skipped_images(skipped, len(candidates), run.path / SKIPPED_FILE)
        write_json(run.path / TIMINGS_FILE, timings)
        results = write_run_reports(run.path, items, shares, bank, record, clock)
    rows = _store_rows(run.path)
    rows = rows[rows["item_id"].isin(set(results["item_id"]))]
    tables = evaluate.alignment_tables(rows, shares, bank)
    terminal.print_report(tables, bank, request.show_items, rows, shares)
    echo(f"\nreport: {run.path / 'alignment.html'}")
    return run.path


def _score_run(
    request: RunRequest,
    run: Any,
    scorer: RunScorer,
    items: Sequence[PromptItem],
    settings: evaluate.EvalSettings,
    *,
    spec: Any,
    prepare: Callable[[str], Any],
    hashes: dict[str, str],
    sizes: dict[str, tuple[int, int]],
    clock: StageClock,
    log: evaluate.ScoringLog,
    echo: Callable[[str], None],
    announce: str,
) -> dict[str, Any]:
    """Score what the run's store lacks, here or on Ray workers, every group first checked
    against the engine's budgets (then `announce` is echoed); returns the run's timing
    record."""
    with run_scoring.dispatch_for(request, scorer, echo) as dispatch:
        if dispatch is not None:
            dispatch.check_budgets(items, sizes)
        elif scorer.scheduler is not None:
            evaluate.check_budgets(items, scorer.tokenizer, spec, sizes, scorer.scheduler)
        echo(announce)
        return run_scoring.score_into(
            run, scorer, items, settings, spec=spec, prepare_image=prepare, hashes=hashes,
            clock=clock, log=log, dispatch=dispatch,
            progress=request.progress and (dispatch is None or sys.stderr.isatty()),
        )  # fmt: skip


def _wanted_countries(
    request: RunRequest, present: set[str], echo: Callable[[str], None]
) -> list[str]:
    """ISO3 codes asked for (default: the study's); for a text condition, those the survey data
    lacks are left out, with one line saying so (never substituted)."""
    from cvs_evaluator.countries import STUDY_COUNTRIES, country

    wanted = [country(code).iso3 for code in request.countries] or list(STUDY_COUNTRIES)
    missing = [code for code in wanted if code not in present]
    if missing and "text" in request.conditions:
        echo(f"not in the survey data (left out, never substituted): {', '.join(missing)}")
        wanted = [code for code in wanted if code in present]
    return wanted


def _checked_images(
    image_set: Any, wanted: Sequence[str]
) -> tuple[tuple[Any, ...], list[SkippedImage], dict[str, tuple[int, int]], set[str]]:
    """(usable records, skipped images, sizes, every candidate id) of the wanted countries'
    images: the only ones checked, hashed, screened and scored; every header is read here,
    before the model loads."""
    if image_set is None:
        return (), [], {}, set()
    records = tuple(r for r in image_set.records if r.country in wanted)
    checked = check_images(records, image_set.root)
    skipped = [s for s in image_set.skipped if s.record.country in wanted] + checked.skipped
    candidates = {r.id for r in records} | {s.record.id for s in skipped}
    return tuple(r for r in records if r.id in checked.sizes), skipped, checked.sizes, candidates


def _compare_target(
    request: RunRequest, echo: Callable[[str], None]
) -> tuple[tuple[str, str] | None, str | None]:
    """(the comparison engine, why there is none): `--compare-to`, else torch/fp32 for engine
    runs where torch is importable; none for torch runs and with `--compare-to none`."""
    from cvs_evaluator import scorers

    if request.compare_to is not None:
        if request.compare_to == "none":
            return None, "not asked (--compare-to none)"
        return scorers.parse_compare_to(request.compare_to), None
    if request.engine == "torch":
        return None, "the run is the PyTorch reference"
    if not scorers.torch_available():
        echo("parity: skipped (torch not installed)")
        return None, "torch not installed"
    return ("torch", "fp32"), None


def _screen(
    request: RunRequest,
    spec: Any,
    scorer: RunScorer,
    image_set: Any,
    records: Sequence[Any],
    echo: Callable[[str], None],
    skipped: list[SkippedImage],
) -> pd.DataFrame:
    """Rank every candidate country for each of `records` (the wanted countries' images; the
    PyTorch reference scores the country names as continuations) and keep the top `--screen`.
    An image that cannot be decoded is added to `skipped`, not screened."""
    from cvs_evaluator.screening import candidates_from_records, screen_images

    reference = scorer.reference
    if reference is None:
        reference = run_scoring.open_scorer(request, "torch", "fp32", spec).reference
    prepare = image_preparer(image_set, spec)
    pairs = []
    for record in records:
        try:
            pairs.append((record, prepare(record.id)))
        except ImageSkipped as error:
            skipped.append(error.skipped)
    columns = ["image_id", "country", "category", "rank", "kept", "top"]
    if not pairs:
        return pd.DataFrame(columns=columns).astype({"kept": bool})
    records = [record for record, _ in pairs]
    result = screen_images(
        reference, pairs, candidates_from_records(records), scorer.tokenizer, spec,
        k=int(request.screen or 0),
    )  # fmt: skip
    category = {record.id: record.category for record in records}
    table = pd.DataFrame(
        [
            {
                "image_id": image.image_id,
                "country": image.country,
                "category": category[image.image_id],
                "rank": image.rank,
                "kept": image.kept,
                "top": " ".join(image.ranking[: result.k]),
            }
            for image in result.images
        ],
        columns=columns,
    )
    echo(
        f"screening (top {result.k} of {len(result.candidates)} countries): kept "
        f"{int(table['kept'].sum())} of {len(table)} images (accuracy {result.accuracy:.1%}, "
        f"chance {result.chance:.1%})"
    )
    return table


def _compare(
    request: RunRequest,
    run: Any,
    target: tuple[str, str],
    spec: Any,
    items: Sequence[PromptItem],
    settings: evaluate.EvalSettings,
    prepare: Callable[[str], Any],
    hashes: dict[str, str],
    echo: Callable[[str], None],
    log: evaluate.ScoringLog,
) -> dict[str, Any]:
    """Score the parity sample on the comparison engine into `RUN/compare/` (its own identity
    and lock, inside the run's); images it cannot decode join `log`'s skipped images."""
    engine, precision = target
    sample = set(parity_sample(items, request.parity_sample))
    chosen = [item for item in items if item.item_id in sample]
    echo(f"parity: {len(chosen)} item(s) on {engine}/{precision} → {run.path / 'compare'}")
    scorer = run_scoring.open_scorer(request, engine, precision, spec)
    twin = evaluate.EvalSettings(
        model=settings.model, engine=engine, precision=precision,
        conditions=settings.conditions, countries=settings.countries,
        batch_size=settings.batch_size, images=settings.images,
    )  # fmt: skip
    with run.compare(identity_of(request.model, scorer), fresh=request.fresh) as folder:
        return run_scoring.score_into(
            folder, scorer, chosen, twin, spec=spec, prepare_image=prepare, hashes=hashes,
            clock=StageClock(), progress=request.progress,
            log=evaluate.ScoringLog(skipped_images=log.skipped_images),
        )  # fmt: skip


def write_run_reports(
    run_dir: Path,
    items: Sequence[PromptItem] | None,
    shares: pd.DataFrame,
    bank: Any,
    record: dict[str, Any],
    clock: StageClock | None = None,
) -> pd.DataFrame:
    """Every report of the run folder from its stores and `record` (`settings_record`), then
    `results.parquet` last."""
    from cvs_evaluator.countries import income_groups
    from cvs_evaluator.reports import LatencyRecord, collect_provenance, write_reports
    from cvs_evaluator.run_folder import write_parquet_atomic

    metric_clock = clock or StageClock()
    order = [item.item_id for item in items] if items is not None else record.get("item_ids")
    with metric_clock.timed("metric"):
        results, compare = final_frames(run_dir, order, shares)
    timings_file = run_dir / TIMINGS_FILE
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    latency = compare_latency = None
    if timings.get("run"):
        stages = dict(timings["run"]["stages"])
        stages["metric"] = metric_clock.samples["metric"]
        latency = LatencyRecord(**{**timings["run"], "stages": stages})
    if timings.get("compare"):
        compare_latency = LatencyRecord(**timings["compare"])
    facts = record.get("scorer", {})
    manifest = facts.get("manifest_path")
    provenance = collect_provenance(
        list(record.get("command_line", [])),
        {"engine": Path(manifest)} if manifest else {},
        facts.get("checkpoint_fingerprint", ""),
        _data_files(record),
        {"parity_sample": PARITY_SEED, "bootstrap": 0, "permutation": 0},
    )
    screening_file = run_dir / "screening.csv"
    screening = pd.read_csv(screening_file) if screening_file.is_file() else None
    write_reports(
        run_dir, results, shares, bank, compare=compare, latency=latency,
        compare_latency=compare_latency, screening=screening, provenance=provenance,
        skipped_images=read_skipped(run_dir),
        precision=str(record.get("precision", "fp32")), income_of=income_groups(),
        parity_skipped=facts.get("parity_skipped"), notes=_notes(record),
    )  # fmt: skip
    write_parquet_atomic(results, run_dir / "results.parquet")
    return results


def rebuild_reports(run_dir: Path) -> Path:
    """Write every report of `run_dir` again from its stores, scoring nothing (under the run's
    lock: a run still scoring into it is waited for, not raced)."""
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.run_folder import open_existing_run

    settings_file = run_dir / SETTINGS_FILE
    if not settings_file.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder ({SETTINGS_FILE} missing): make one with "
            "`cvs-eval --out RUN …`"
        )
    with open_existing_run(run_dir):
        record = json.loads(settings_file.read_text(encoding="utf-8"))
        bank = load_question_bank()
        goqa = record.get("goqa_file")
        shares, _ = human_shares(record["human_source"], Path(goqa) if goqa else None, bank)
        write_run_reports(run_dir, None, shares, bank, record)
    return run_dir


def _notes(record: dict[str, Any]) -> list[str]:
    """Sentences the alignment page leads with."""
    from cvs_families.registry import get_family

    images = [c for c in record.get("conditions", ()) if c != "text"]
    if images and not get_family(record["model"]).image_informative:
        return [
            f"{record['model']}'s vision tower has random weights (no vision weights can be had "
            f"here): its {'/'.join(images)} results carry no information about the images; they "
            "exercise the pipeline only."
        ]
    return []


def asdict_scorer(scorer: RunScorer) -> dict[str, Any]:
    """What the reports need of a scorer, as plain data."""
    return {
        "checkpoint_fingerprint": scorer.checkpoint_fingerprint,
        "manifest_path": str(scorer.manifest_path) if scorer.manifest_path else None,
    }


def _data_files(asked: dict[str, Any]) -> list[Path]:
    from cvs_evaluator.wvs import study_files

    files = list(study_files())
    if asked.get("goqa_file"):
        files.append(Path(asked["goqa_file"]))
    return files


def _store_rows(run_dir: Path) -> pd.DataFrame:
    from cvs_evaluator.results import ResultStore

    return ResultStore(run_dir / "store.jsonl").frame()
