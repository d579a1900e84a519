"""`cvs-eval`: score a model on WVS questions and compare it with each country's answers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pandas as pd

from cvs_evaluator.prompts import CONDITIONS, Condition

if TYPE_CHECKING:
    from cvs_evaluator.images import ImageSet

ENGINES = ("torch", "ort", "ort-cuda", "ort-trt", "trt")


class ByteSize(click.ParamType):
    """A size like `512MiB`, `2GiB` or `1500MB` (plain bytes when there is no unit)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from cvs_runtime.budgets import BudgetError, parse_size

        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except BudgetError as error:
            self.fail(str(error), param, ctx)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--model",
    default="smol",
    show_default=True,
    help="Model family (cvs-export plan --list shows them).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="torch",
    show_default=True,
    help="torch: the PyTorch reference; ort (CPU), ort-cuda, ort-trt (onnxruntime providers) "
    "and trt (TensorRT): engines built by `cvs-export build` under --engines.",
)
@click.option(
    "--engines",
    "engines_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("engines"),
    show_default=True,
    help="Engines root: <root>/<model>/<precision>/ (TensorRT: <root>/<model>/trt-<precision>/).",
)
@click.option("--precision", default="fp32", show_default=True, help="Engine precision.")
@click.option(
    "--weights",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local Hugging Face checkpoint folder (real families; tiny ones and smol are built).",
)
@click.option(
    "--condition",
    "conditions",
    type=click.Choice(CONDITIONS),
    multiple=True,
    default=("text",),
    show_default=True,
    help="Repeat for several: text (country in a persona), image, image+country.",
)
@click.option(
    "--country",
    "countries",
    multiple=True,
    help="ISO3 code; repeat. Default: the study's countries present in the data.",
)
@click.option(
    "--question",
    "questions",
    multiple=True,
    help="WVS id (Q57); repeat. Default: a subset from every section.",
)
@click.option(
    "--per-section",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Questions per section in the default subset.",
)
@click.option("--all-questions", is_flag=True, help="Ask all 239 value questions.")
@click.option(
    "--images",
    default="flags",
    show_default=True,
    help="Image conditions: 'flags', a folder <country>/<category>/<file>, or a Dollar Street CSV.",
)
@click.option(
    "--include-uninformative-images",
    is_flag=True,
    help="Score image conditions on a model whose vision tower carries no information (smol).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Most prompts per forward pass (torch: 8; engines: 64, fewer when --activation-bytes "
    "says so). Results do not depend on it.",
)
@click.option(
    "--image-cache-bytes",
    type=ByteSize(),
    default=None,
    help="Engines: image features kept across the run, e.g. 512MiB [default: 5% of memory].",
)
@click.option(
    "--prefix-cache-bytes",
    type=ByteSize(),
    default=None,
    help="Engines: prefix key/value caches kept across the run [default: 10% of memory].",
)
@click.option(
    "--activation-bytes",
    type=ByteSize(),
    default=None,
    help="Engines: activations of one pass (a group's prefix, or one suffix batch: the batch "
    "size follows from it) [default: 20% of memory].",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Engines: keep no image features or prefix caches (recomputed for every batch); for "
    "measuring what the caches save.",
)
@click.option(
    "--share-weight-pages",
    is_flag=True,
    help="onnxruntime: no weight prepacking, so processes share one copy of the weights (slower).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder of result stores; a rerun resumes where the last one stopped.",
)
@click.option(
    "--show-items", is_flag=True, help="Print each item's distribution beside the human one."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--allow-failed-engine",
    is_flag=True,
    help="Use a lower-precision engine whose build verdict (accuracy against fp32) failed.",
)
def main(
    model: str,
    engine: str,
    engines_root: Path,
    precision: str,
    weights: Path | None,
    conditions: tuple[Condition, ...],
    countries: tuple[str, ...],
    questions: tuple[str, ...],
    per_section: int,
    all_questions: bool,
    images: str,
    include_uninformative_images: bool,
    batch_size: int | None,
    image_cache_bytes: int | None,
    prefix_cache_bytes: int | None,
    activation_bytes: int | None,
    no_cache: bool,
    share_weight_pages: bool,
    out: Path,
    show_items: bool,
    no_progress: bool,
    allow_failed_engine: bool,
) -> None:
    """Ask MODEL the WVS value questions and compare its answers with each country's.

    Each item is one forward pass: the option letters' probabilities at the answer position,
    renormalised over the options, compared with the country's weighted answer shares
    (similarity = 1 − Jensen–Shannon distance). Results are written batch by batch to
    OUT/<model>-<engine>-<precision>.jsonl; rerunning resumes.

    On an engine (ort, ort-cuda, ort-trt, trt) each image goes through the vision part once and
    each group's shared prefix (image, persona, instructions) through the decoder once per run;
    every question of the group is then scored against that one prefix cache. The caches and the
    batch size are bounded by the three byte budgets; the stage timings are printed at the end.

    \b
    Examples:
      cvs-eval                                    # smol, text condition, study countries
      cvs-eval --country DEU --question Q57 --question Q58 --show-items
      cvs-eval --model tiny-yi --condition image --images flags --country JPN
      cvs-eval --engine trt --model yi34b --weights /models/llava-v1.6-34b-hf
    """
    from cvs_evaluator.countries import UnknownCountry
    from cvs_evaluator.errors import DataError
    from cvs_families.checkpoint import CheckpointError
    from cvs_families.paths import DataDirMissing
    from cvs_families.registry import UnknownFamilyError
    from cvs_runtime.budgets import Budgets, default_budgets
    from cvs_runtime.ort_gpu import GpuProviderError
    from cvs_runtime.scheduler import MissingSuffixPart
    from cvs_runtime.trt_backend import TensorRTUnavailable

    user_errors = (
        DataError, DataDirMissing, CheckpointError, UnknownFamilyError, UnknownCountry,
        GpuProviderError, TensorRTUnavailable, MissingSuffixPart,
    )  # fmt: skip
    try:
        defaults = default_budgets()
        budgets = Budgets(
            image_cache_bytes=_given(image_cache_bytes, defaults.image_cache_bytes, no_cache),
            prefix_cache_bytes=_given(prefix_cache_bytes, defaults.prefix_cache_bytes, no_cache),
            activation_bytes=_given(activation_bytes, defaults.activation_bytes),
            max_batch=batch_size or 64,
        )
        options = RunOptions(
            batch_size=batch_size or 8, budgets=budgets, share_weight_pages=share_weight_pages
        )
        _run(
            model, engine, engines_root, precision, weights, conditions, countries, questions,
            None if all_questions else per_section, images, include_uninformative_images,
            options, out, show_items, not no_progress, allow_failed_engine,
        )  # fmt: skip
    except (*user_errors, ValueError, FileNotFoundError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        raise click.ClickException(message) from error


def _given(value: int | None, default: int, off: bool = False) -> int:
    return 0 if off else default if value is None else value


@dataclass(frozen=True)
class RunOptions:
    """How the scoring itself runs (never what it computes)."""

    batch_size: int
    """The PyTorch reference's batch size."""
    budgets: Any
    """Engines: cache and activation budgets (`cvs_runtime.budgets.Budgets`)."""
    share_weight_pages: bool = False
    """onnxruntime: weight prepacking off everywhere."""


def _run(
    model: str,
    engine: str,
    engines_root: Path,
    precision: str,
    weights: Path | None,
    conditions: tuple[Condition, ...],
    countries: tuple[str, ...],
    questions: tuple[str, ...],
    per_section: int | None,
    images: str,
    include_uninformative_images: bool,
    options: RunOptions,
    out: Path,
    show_items: bool,
    progress: bool,
    allow_failed_engine: bool = False,
) -> None:
    from cvs_evaluator import evaluate
    from cvs_evaluator.countries import STUDY_COUNTRIES, country
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.results import ResultStore
    from cvs_evaluator.wvs import load_study_shares
    from cvs_families.registry import get_family

    spec = get_family(model)
    image_conditions = [c for c in conditions if c != "text"]
    if image_conditions and not spec.image_informative and not include_uninformative_images:
        raise click.ClickException(
            f"{model}'s vision tower is random (no vision weights can be had here), so the "
            f"{'/'.join(image_conditions)} condition carries no information; pass "
            "--include-uninformative-images to score it anyway"
        )
    bank = load_question_bank()
    shares = load_study_shares()
    present = set(shares["country"])
    wanted = [country(code).iso3 for code in countries] or list(STUDY_COUNTRIES)
    missing = [code for code in wanted if code not in present]
    if missing and "text" in conditions:
        click.echo(f"not in the survey data (left out, never substituted): {', '.join(missing)}")
        wanted = [code for code in wanted if code in present]
    chosen = evaluate.select_questions(bank, per_section=per_section, only=questions)
    image_set = _image_source(images) if image_conditions else None
    settings = evaluate.EvalSettings(
        model=model,
        engine=engine,
        precision=precision,
        conditions=conditions,
        countries=tuple(wanted),
        batch_size=options.batch_size,
        images=tuple(image_set.records) if image_set else (),
    )
    if image_set is not None and image_set.skipped:
        click.echo(f"{len(image_set.skipped)} image(s) skipped by the source (see --show-items)")

    engine_scorer = None
    if engine == "torch":
        scorer, tokenizer = _torch_scorer(spec, weights, options.batch_size)
    else:
        engine_scorer, tokenizer = _engine_scorer(
            spec, weights, engine, engines_root, precision, allow_failed_engine, options
        )
        scorer = engine_scorer.stream
    asked = set(zip(shares["country"], shares["question"], strict=True))
    items, notes = evaluate.build_items(settings, chosen, tokenizer, spec, asked=asked)
    for line in notes:
        click.echo(f"not asked: {line}")
    store = ResultStore(evaluate.default_store_path(out, settings))
    if engine_scorer is not None:
        sizes = _image_sizes(image_set) if image_set else {}
        evaluate.check_budgets(items, tokenizer, spec, sizes, engine_scorer.scheduler)
    click.echo(
        f"{model} on {engine}/{precision}: {len(items)} items ({len(chosen)} questions × "
        f"{len(wanted)} countries × {', '.join(conditions)}) → {store.path}"
    )
    prepare = _image_preparer(image_set, spec) if image_set else _no_images
    evaluate.run_evaluation(
        settings, items, store, scorer=scorer, tokenizer=tokenizer, spec=spec,
        prepare_image=prepare, progress=progress,
    )  # fmt: skip
    if engine_scorer is not None:
        _print_stage_times(engine_scorer.scheduler)
    order = {item.item_id: index for index, item in enumerate(items)}
    rows = store.frame()
    rows = rows[rows["item_id"].isin(order)]
    rows = rows.sort_values("item_id", key=lambda ids: ids.map(order), kind="stable")
    tables = evaluate.alignment_tables(rows, shares, bank)
    _print_report(tables, bank, show_items, rows, shares)


def _torch_scorer(spec: Any, weights: Path | None, batch_size: int) -> tuple[Any, Any]:
    from cvs_families.checkpoint import ensure_checkpoint, load_model
    from cvs_families.reference import ReferenceScorer

    loaded = load_model(spec, ensure_checkpoint(spec, weights))
    scorer = ReferenceScorer(loaded, batch_size=batch_size)
    return scorer.stream, loaded.tokenizer


def _engine_scorer(
    spec: Any,
    weights: Path | None,
    engine: str,
    root: Path,
    precision: str,
    allow_failed_engine: bool,
    options: RunOptions,
) -> tuple[Any, Any]:
    from cvs_families.checkpoint import (
        checkpoint_fingerprint,
        ensure_checkpoint,
        load_tokenizer,
        pad_token_id,
    )
    from cvs_runtime.caches import content_hash
    from cvs_runtime.engines import EngineScorer, engine_folder, open_engine

    checkpoint = ensure_checkpoint(spec, weights)
    tokenizer = load_tokenizer(spec, checkpoint)
    folder = engine_folder(root, engine, spec.name, precision)
    if not (folder / "manifest.json").is_file():
        raise click.ClickException(
            f"no {precision} engine for {spec.name} in {folder}: build it with "
            f"`cvs-export build --model {spec.name} --precision {precision}` (or `make engines`)"
        )
    parts = open_engine(
        engine,
        folder,
        family=spec.name,
        precision=precision,
        checkpoint_fingerprint=checkpoint_fingerprint(checkpoint),
        allow_failed_verdict=allow_failed_engine,
        share_weight_pages=options.share_weight_pages,
    )
    scorer = EngineScorer(
        parts,
        spec,
        pad_token_id=pad_token_id(spec, tokenizer),
        budgets=options.budgets,
        engine_id=content_hash((folder / "manifest.json").read_bytes()),
    )
    return scorer, tokenizer


def _image_sizes(image_set: ImageSet) -> dict[str, tuple[int, int]]:
    from cvs_evaluator.images import image_dimensions

    sizes = {}
    for record in image_set.records:
        size = image_dimensions(record, image_set.root)
        if size is not None:
            sizes[record.id] = size
    return sizes


def _print_stage_times(scheduler: Any) -> None:
    """Where the run's time went, stage by stage, and what the caches did."""
    times = scheduler.times
    total = sum(times.seconds.values())
    click.echo("\nstage times (this run):")
    for stage, seconds in times.seconds.items():
        share = seconds / total if total else 0.0
        click.echo(
            f"  {stage:<10} {seconds:8.2f} s {share:6.1%}  {times.calls[stage]:>6} calls  "
            f"{times.tokens[stage]:>9} tokens"
        )
    for cache in (scheduler.image_cache, scheduler.prefix_cache):
        stats = cache.stats
        click.echo(
            f"  {cache.name} cache: {stats.hits} hits, {stats.misses} misses, "
            f"{stats.evictions} evictions, peak {stats.peak_bytes / 2**20:.1f} MiB of "
            f"{cache.budget_bytes / 2**20:.0f} MiB"
        )


def _image_source(images: str) -> ImageSet:
    from cvs_evaluator.images import dollar_street_images, flag_images, folder_images

    if images == "flags":
        return flag_images()
    path = Path(images)
    return dollar_street_images(path) if path.suffix.lower() == ".csv" else folder_images(path)


def _image_preparer(image_set: ImageSet, spec: Any) -> Any:
    from cvs_evaluator.images import load_rgb

    by_id = {record.id: record for record in image_set.records}

    def prepare(image_id: str) -> Any:
        outcome = load_rgb(by_id[image_id], image_set.root)
        pixels = getattr(outcome, "pixels", None)
        if pixels is None:
            raise ValueError(f"image {image_id} could not be loaded: {outcome}")
        return spec.prepare_image(pixels)

    return prepare


def _no_images(image_id: str) -> Any:
    raise ValueError(f"item asks for image {image_id!r} but no image source was given")


def _print_report(
    tables: Any, bank: Any, show_items: bool, rows: pd.DataFrame, shares: pd.DataFrame
) -> None:
    """Per model × condition: sections (mean over countries) and countries (mean over
    sections), each beside the human baselines over the same (country, question) pairs."""
    sections = tables.sections
    baselines = [c for c in ("uniform", "others_pooled", "best_other") if c in sections]
    columns = ["similarity", *baselines]
    three = {c: (lambda v: f"{v:.3f}") for c in columns}
    if tables.low_mass:
        click.echo(f"{tables.low_mass} item(s) kept but not scored: raw option mass too low")
    order = {name: index for index, name in enumerate(bank.sections)}
    for (model, condition), group in sections.groupby(["model", "condition"]):
        click.echo(
            f"\n{model}, {condition} condition — similarity = 1 − Jensen–Shannon distance "
            "(model), beside human baselines (uniform answers; the other countries pooled; "
            "the closest other country)"
        )
        by_section = group.groupby("section").agg(
            countries=("country", "nunique"), questions=("n_questions", "max"),
            **{c: (c, "mean") for c in columns},
        )  # fmt: skip
        by_section = by_section.sort_index(key=lambda index: index.map(order))
        click.echo(by_section.rename(columns={"similarity": "model"}).to_string(
            formatters={("model" if c == "similarity" else c): f for c, f in three.items()}
        ))  # fmt: skip
        by_country = group.groupby("country").agg(
            sections=("section", "nunique"), **{c: (c, "mean") for c in columns}
        )
        click.echo("\nper country (mean over sections):")
        click.echo(by_country.rename(columns={"similarity": "model"}).to_string(
            formatters={("model" if c == "similarity" else c): f for c, f in three.items()}
        ))  # fmt: skip
        overall = group[columns].mean()
        click.echo(
            "\noverall: model {:.3f} | uniform {:.3f} | others pooled {:.3f} | "
            "closest other country {:.3f}".format(*overall.to_list())
        )
    for image_condition in ("image", "image+country"):
        if {"text", image_condition} <= set(sections["condition"]):
            _print_effect(tables.items, bank, image_condition)
    if show_items:
        _print_items(tables.items, rows, shares)


def _print_effect(items: pd.DataFrame, bank: Any, condition: str) -> None:
    from cvs_evaluator.evaluate import condition_effects

    effects = condition_effects(items, bank, "text", condition)
    order = {name: index for index, name in enumerate([*bank.sections, "all"])}
    click.echo(
        f"\n{condition} vs text: change of the mean similarity over the same (country, "
        "question) pairs, with a paired sign-flip permutation test (10,000 resamples)"
    )
    for model, group in effects.groupby("model"):
        view = group.set_index("section").sort_index(key=lambda index: index.map(order))
        view = view[["n_pairs", "mean_a", "mean_b", "percent_change", "p_value"]].rename(
            columns={"mean_a": "text", "mean_b": condition, "percent_change": "change %"}
        )
        click.echo(f"{model}:")
        click.echo(view.to_string(float_format=lambda v: f"{v:.3f}"))


def _print_items(items: pd.DataFrame, rows: pd.DataFrame, shares: pd.DataFrame) -> None:
    similarities = items.set_index(["condition", "country", "question", "image"])["similarity"]
    people = shares.set_index(["country", "question", "option"])["share"]
    for row in rows.to_dict("records"):
        where = f"{row['condition']} {row['image']}".strip()
        header = f"\n{row['country']} {row['question']} [{where}]"
        if row["status"] != "scored":
            click.echo(f"{header}: not scored ({row['reason']})")
            continue
        key = (row["condition"], row["country"], row["question"], row["image"])
        click.echo(
            f"{header}: similarity {float(similarities[key]):.3f}, "
            f"raw option mass {row['raw_mass']:.3f}"
        )
        for code, prob in zip(row["option_codes"], row["distribution"], strict=True):
            person = float(people[(row["country"], row["question"], code)])
            click.echo(f"  option {code:>3}: model {prob:6.3f}   people {person:6.3f}")


if __name__ == "__main__":
    sys.exit(main())
