"""`cvs-data`: import WVS survey files, inspect what is loaded, print human baselines."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import pandas as pd

from cvs_evaluator.countries import (
    INCOME_CLASSIFICATION,
    INCOME_GROUPS,
    STUDY_COUNTRIES,
    UnknownCountry,
    country,
    missing_study_countries,
)
from cvs_evaluator.errors import DataError
from cvs_evaluator.questions import QuestionBank, load_question_bank
from cvs_evaluator.wvs import MAX_WEIGHT_RATIO


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A user's mistake (bad file, unknown code, no data folder) as one line, no traceback."""
    from cvs_families.paths import DataDirMissing

    try:
        yield
    except DataError as exc:
        raise click.ClickException(exc.message) from None
    except (UnknownCountry, DataDirMissing) as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Survey data: WVS wave 7 answers as weighted shares per country and question.

    \b
    Typical use:
      cvs-data import-wvs $CVS_DATA/wvs7/microdata/*.csv.gz --out wvs.parquet
      cvs-data show                      # what the study's data holds ($CVS_DATA, cached)
      cvs-data show --shares wvs.parquet
      cvs-data baselines --study         # human baselines for the study's countries
      cvs-data baselines --country DEU --country JPN
    """


@main.command("import-wvs")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the shares table: a .parquet or .csv file (written atomically).",
)
@click.option(
    "--question",
    "questions",
    multiple=True,
    metavar="QID",
    help="Import only this question (repeatable), e.g. --question Q57.",
)
@click.option(
    "--max-weight-ratio",
    type=click.FloatRange(min=1),
    default=MAX_WEIGHT_RATIO,
    show_default=True,
    callback=lambda _ctx, _param, value: _not_nan(value),
    metavar="FLOAT",
    help="Refuse a W_WEIGHT above this many times its file's median weight (WVS-7's largest is "
    "28.7×; one weight of 1e308 would make one respondent the whole country). inf: no limit.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar over files.")
def import_wvs_command(
    files: tuple[Path, ...],
    out: Path,
    questions: tuple[str, ...],
    max_weight_ratio: float,
    progress: bool,
) -> None:
    """Import WVS-7 respondent files into a table of weighted answer shares.

    FILE may be the v5.0 comma-separated layout or the v6.0 `;`-separated one (byte-order mark,
    quoted header), gzip or plain, one country per file or several (rows grouped by
    B_COUNTRY_ALPHA). W_WEIGHT weights respondents; a file without it is imported unweighted, with
    a warning. Negative codes and non-answers ("Hard to say", "Other answer", …) are missing.
    Summary rows (Avg, Avg_First, Avg_Last) are rejected with a warning.

    A malformed file is refused with one line naming the file, line and column, and nothing is
    written: a row with more or fewer fields than the header, a last line without a line break
    (a file cut short), a weight that is empty, NaN, infinite, 0 or negative, or more than
    --max-weight-ratio times the file's median weight.

    The table has one row per country × question asked × substantive option: country (ISO3),
    question (Q57), option (WVS code), share (weighted, sums to 1 per country and question),
    n (respondents who answered), weighted.

    \b
    Examples:
      cvs-data import-wvs $CVS_DATA/wvs7/microdata/*.csv.gz --out wvs.parquet
      cvs-data import-wvs $CVS_DATA/wvs7/other_releases/IND_v6.0_semicolon.csv.gz --out ind.csv
      cvs-data import-wvs DEU.csv.gz JPN.csv.gz --question Q57 --question Q119 --out trust.csv
      cvs-data import-wvs odd_weights.csv --max-weight-ratio 500 --out odd.csv
    """
    from cvs_evaluator.wvs import import_wvs, wanted_questions, write_shares

    if out.suffix.lower() not in (".parquet", ".csv"):
        raise click.BadParameter("must end in .parquet or .csv", param_hint="--out")
    _check_writable(out)
    with _user_errors():
        bank = load_question_bank()
        try:
            wanted = wanted_questions(bank, questions or None)
        except DataError as exc:
            raise click.ClickException(f"--question: {exc.message}") from None
        start = time.perf_counter()
        result = import_wvs(
            list(files),
            bank=bank,
            progress=progress,
            questions=wanted,
            max_weight_ratio=max_weight_ratio,
        )
        try:
            write_shares(result.shares, out)
        except OSError as exc:
            raise click.ClickException(
                f"--out {out}: cannot write the table ({exc.strerror or exc})"
            ) from None
        seconds = time.perf_counter() - start
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    shares = result.shares
    unweighted = f", {len(result.unweighted)} unweighted" if result.unweighted else ""
    click.echo(
        f"imported {shares['country'].nunique()} countries "
        f"({sum(result.respondents.values()):,} respondents{unweighted}), "
        f"{shares['question'].nunique()} questions, {len(shares):,} rows → {out} "
        f"in {seconds:.1f} s"
    )


def _not_nan(value: float) -> float:
    """click's FloatRange lets NaN through (every comparison with NaN is false), and a NaN limit
    would turn the weight check off unseen."""
    if math.isnan(value):
        raise click.BadParameter("must be a number ≥ 1, not nan")
    return value


def _check_writable(out: Path) -> None:
    """Refuse an --out that can't be written before the import's work, leaving nothing behind:
    its nearest existing folder must be a folder we can create a file in."""
    folder = out.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise click.BadParameter(f"{folder} is a file, not a folder", param_hint="--out")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"can't write in {folder} ({exc.strerror or exc})", param_hint="--out"
        ) from None


@main.command("show")
@click.option(
    "--shares",
    "shares_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A table written by import-wvs (default: every WVS-7 file in $CVS_DATA, cached).",
)
def show_command(shares_path: Path | None) -> None:
    """Print what is loaded: countries × questions × sections, unweighted and missing countries.

    \b
    Examples:
      cvs-data show
      cvs-data show --shares wvs.parquet
    """
    with _user_errors():
        shares, source = _load_shares(shares_path)
        bank = load_question_bank()
    for line in describe_shares(shares, bank, source):
        click.echo(line)


def describe_shares(shares: pd.DataFrame, bank: QuestionBank, source: str) -> list[str]:
    """The lines `cvs-data show` prints."""
    from cvs_evaluator.questions import question_sort_key

    asked = shares[["country", "question"]].drop_duplicates()
    countries = sorted(asked["country"].unique())
    lines = [
        f"{source}: {len(countries)} countries × {asked['question'].nunique()} questions "
        f"× {len(bank.sections)} sections ({len(shares):,} rows)",
        "",
        f"{'section':<48} {'questions':>9} {'with data':>9} {'countries':>9}",
    ]
    section_of = bank.section_of()
    asked = asked.assign(section=asked["question"].map(section_of))
    for section, questions in bank.by_section().items():
        here = asked[asked["section"] == section]
        note = "  (no value questions)" if not questions else ""
        lines.append(
            f"{section:<48} {len(questions):>9} {here['question'].nunique():>9} "
            f"{here['country'].nunique():>9}{note}"
        )
    unknown = sorted(set(asked["question"]) - set(section_of), key=question_sort_key)
    if unknown:
        lines.append(f"questions not in the bank: {', '.join(unknown)}")
    per_country = asked.groupby("country")["question"].nunique()
    weighted = shares.groupby("country")["weighted"].all()
    lines += ["", f"{'country':<34} {'income group':<20} {'questions':>9}  weights"]
    for code in countries:
        entry = country(code)
        group = entry.income_group or "—"
        weights = "W_WEIGHT" if weighted[code] else "unweighted"
        lines.append(f"{code} {entry.name:<30} {group:<20} {per_country[code]:>9}  {weights}")
    unweighted = [c for c in countries if not weighted[c]]
    missing = missing_study_countries(countries)
    groups = dict.fromkeys(INCOME_GROUPS, 0)
    unclassified: list[str] = []
    for code in countries:
        income = country(code).income_group
        if income is None:
            unclassified.append(code)
        else:
            groups[income] += 1
    lines += [
        "",
        "unweighted (no W_WEIGHT): " + (", ".join(unweighted) or "none"),
        "study countries present: " + ", ".join(c for c in STUDY_COUNTRIES if c in set(countries)),
        "study countries missing: "
        + (", ".join(f"{c} ({country(c).name})" for c in missing) or "none"),
        f"income groups ({INCOME_CLASSIFICATION}): "
        + ", ".join(f"{group} {count}" for group, count in groups.items())
        + (
            f"; no classification: {', '.join(unclassified)} "
            f"({len(unclassified)} left out of income splits)"
            if unclassified
            else ""
        ),
    ]
    return lines


@main.command("baselines")
@click.option(
    "--country",
    "codes",
    multiple=True,
    metavar="ISO3",
    help="A country to print (repeatable); ISO3, ISO2 or NIR.",
)
@click.option("--study", is_flag=True, help="The study's 10 countries (default without --country).")
@click.option(
    "--shares",
    "shares_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A table written by import-wvs (default: every WVS-7 file in $CVS_DATA, cached).",
)
def baselines_command(codes: tuple[str, ...], study: bool, shares_path: Path | None) -> None:
    """Print per-section human baselines: what a model's similarity score is worth.

    For each country and section, the mean similarity (1 − Jensen–Shannon distance) to the
    country's answers of: the uniform distribution (uniform), the other countries' answers pooled
    with equal weights (others_pooled), the single best other country (best_other) and the average
    other country (mean_other). A model scoring below others_pooled knows less about the country
    than the rest of the world's answers do.

    \b
    Examples:
      cvs-data baselines                 # the study's countries
      cvs-data baselines --country DEU --country JPN
      cvs-data baselines --study --country DEU --shares wvs.parquet
    """
    try:
        from cvs_evaluator.baselines import section_baselines
    except ImportError as exc:
        raise click.ClickException(f"the baselines module is not available ({exc})") from None
    try:  # before the data is loaded: a typo costs no import
        requested = [country(code).iso3 for code in codes]
    except UnknownCountry as exc:
        raise click.ClickException(f"{exc}; check --country") from None
    with _user_errors():
        shares, source = _load_shares(shares_path)
        bank = load_question_bank()
    if study or not requested:
        requested = [*STUDY_COUNTRIES, *requested]
    requested = list(dict.fromkeys(requested))
    present = set(shares["country"])
    chosen = [code for code in requested if code in present]
    missing = [code for code in requested if code not in present]
    if missing:
        click.echo(
            "missing from the data (not substituted): "
            + ", ".join(f"{code} ({country(code).name})" for code in missing)
        )
    if not chosen:
        raise click.ClickException(f"none of the requested countries is in {source}")
    weighted = shares.groupby("country")["weighted"].all()
    unweighted = [code for code in chosen if not weighted[code]]
    if unweighted:
        click.echo("imported unweighted (no W_WEIGHT): " + ", ".join(unweighted))
    table = section_baselines(shares, bank, chosen)
    click.echo(f"human baselines from {source} (similarity = 1 − JS distance; higher is closer)")
    click.echo(format_baselines(table, bank.sections, chosen))


def format_baselines(table: pd.DataFrame, sections: Sequence[str], countries: Sequence[str]) -> str:
    """The baselines as one block per country: sections × baselines, with question counts."""
    order = ["uniform", "others_pooled", "best_other", "mean_other"]
    blocks = []
    for code in countries:
        rows = table[table["country"] == code]
        if rows.empty:
            continue
        wide = rows.pivot_table(
            index="section", columns="baseline", values="similarity", aggfunc="first"
        )
        counts = rows.groupby("section")["n_questions"].max()
        wide = wide.reindex([s for s in sections if s in wide.index])
        wide = wide[[b for b in order if b in wide.columns]]
        wide.insert(0, "questions", counts.reindex(wide.index).astype(int))
        wide.index.name = None
        wide.columns.name = None
        blocks.append(
            f"\n{code} ({country(code).name})\n" + wide.to_string(float_format=lambda v: f"{v:.3f}")
        )
    return "\n".join(blocks)


def _load_shares(shares_path: Path | None) -> tuple[pd.DataFrame, str]:
    """The shares table and a name for where it came from."""
    from cvs_evaluator.wvs import load_study_import, read_shares

    if shares_path is not None:
        try:
            return read_shares(shares_path), str(shares_path)
        except DataError as exc:
            raise click.ClickException(f"--shares: {exc.message}") from None
    result = load_study_import(progress=True)
    return result.shares, "WVS-7 study data ($CVS_DATA)"
