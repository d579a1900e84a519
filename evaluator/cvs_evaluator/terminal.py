"""What a run prints on the terminal: the alignment tables, the condition effects, each item on
request, and where the scoring time went. The files in the run folder carry the same and more."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd

SKIPPED_NAMED = 3
"""Skipped images the terminal line names (the file and the report list them all)."""


def print_skipped_images(skipped: Sequence[Any], total: int, listed_in: Path) -> None:
    """One line: how many of the run's images were skipped, per reason, the first few by name,
    and where the full list is. `skipped`: `images.SkippedImage`s (an image may appear twice:
    the run and the comparison engine both tried it)."""
    first: dict[str, Any] = {}
    for item in skipped:
        first.setdefault(item.record.id, item)
    counts: dict[str, int] = {}
    for item in first.values():
        counts[item.reason] = counts.get(item.reason, 0) + 1
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
    names = ", ".join(f"{i.record.id} ({i.reason})" for i in list(first.values())[:SKIPPED_NAMED])
    more = f" and {len(first) - SKIPPED_NAMED} more" if len(first) > SKIPPED_NAMED else ""
    click.echo(
        f"skipped {len(first)} of {total} image(s) ({reasons}): {names}{more}; reasons in "
        f"{listed_in} and alignment.html"
    )


def print_stage_times(scheduler: Any) -> None:
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


def print_report(
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
