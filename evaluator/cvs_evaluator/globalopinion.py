"""GlobalOpinionQA's WVS rows as a long table: the human distributions the study itself used.

The study took its human answer distributions from GlobalOpinionQA
(`Anthropic/llm_global_opinions`), a CSV with one row per question: `question` (text),
`options` (a Python list literal of option labels), `selections` (the text of a
`defaultdict(<class 'list'>, {'Country': [fraction per option], …})`), and `source` (WVS or
GAS). Loading it beside our own WVS import lets a reader compare the two sources. Only
`source == "WVS"` rows are kept.

Options are numbered by their **1-based position** in the row's `options` list (`option`), with
the label beside it (`option_label`): GlobalOpinionQA carries no WVS codes or question ids, so
rows are keyed by question text and CSV row (`item`). Countries are mapped from names to ISO3
(`countries.country_by_name`); a name the table doesn't know stays as given in `country` and is
listed in `frame.attrs["unmapped_countries"]`. Fractions are renormalised to sum to 1 per country
and question; `n` is unknown (<NA>) and so is `weighted`.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pandas as pd

from cvs_evaluator.countries import UnknownCountry, country_by_name
from cvs_evaluator.errors import DataError

COLUMNS = ("question", "selections", "options", "source")
"""Columns the CSV must have."""
OUTPUT_COLUMNS = (
    "country",
    "country_name",
    "question",
    "item",
    "option",
    "option_label",
    "share",
    "n",
    "weighted",
)
"""Columns of the table `load_globalopinion` returns."""

_DEFAULTDICT = re.compile(r"^\s*defaultdict\(\s*<class '\w+'>\s*,\s*(.*)\)\s*$", re.DOTALL)


def load_globalopinion(path: Path) -> pd.DataFrame:
    """The WVS rows of a GlobalOpinionQA CSV, one row per (country, item, option).

    `item` is the 1-based data row of the question in the CSV (question texts repeat).
    Raises `DataError` naming the file, row and column of anything malformed.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except pd.errors.EmptyDataError:
        raise DataError("empty file", file=path) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"not a readable CSV ({exc})", file=path) from None
    for name in COLUMNS:
        if name not in raw.columns:
            raise DataError("missing column", file=path, column=name)
    records: list[dict[str, object]] = []
    unmapped: set[str] = set()
    for index, entry in raw.iterrows():
        row = int(str(index)) + 1
        if entry["source"].strip() != "WVS":
            continue
        options = _options(entry["options"], path, row)
        for name, fractions in _selections(entry["selections"], path, row).items():
            if len(fractions) != len(options):
                raise DataError(
                    f"{name!r} has {len(fractions)} fractions for {len(options)} options",
                    file=path,
                    row=row,
                    column="selections",
                )
            total = sum(fractions)
            if total <= 0:
                raise DataError(f"{name!r} has no positive fraction", file=path, row=row)
            try:
                code = country_by_name(name).iso3
            except UnknownCountry:
                code = name
                unmapped.add(name)
            for position, (label, fraction) in enumerate(
                zip(options, fractions, strict=True), start=1
            ):
                records.append(
                    {
                        "country": code,
                        "country_name": name,
                        "question": entry["question"],
                        "item": row,
                        "option": position,
                        "option_label": label,
                        "share": fraction / total,
                    }
                )
    table = pd.DataFrame.from_records(records, columns=list(OUTPUT_COLUMNS[:7]))
    table = table.astype(
        {"country": "str", "country_name": "str", "question": "str", "option_label": "str"}
    ).astype({"item": "int64", "option": "int64", "share": "float64"})
    table["n"] = pd.array([pd.NA] * len(table), dtype="Int64")
    table["weighted"] = pd.array([pd.NA] * len(table), dtype="boolean")
    table = table.sort_values(["country", "item", "option"], kind="stable", ignore_index=True)
    table.attrs["unmapped_countries"] = sorted(unmapped)
    return table


def _options(text: str, path: Path, row: int) -> list[str]:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise DataError(
            "not a Python list of labels", file=path, row=row, column="options"
        ) from None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DataError("not a non-empty list of labels", file=path, row=row, column="options")
    return value


def _selections(text: str, path: Path, row: int) -> dict[str, list[float]]:
    match = _DEFAULTDICT.match(text)
    body = match.group(1) if match else text.strip()
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError):
        raise DataError(
            "not a defaultdict/dict literal of country → fractions",
            file=path,
            row=row,
            column="selections",
        ) from None
    if not isinstance(value, dict) or not value:
        raise DataError("no country in the selections", file=path, row=row, column="selections")
    parsed: dict[str, list[float]] = {}
    for name, fractions in value.items():
        ok = isinstance(name, str) and isinstance(fractions, list | tuple)
        numbers = [float(f) for f in fractions if isinstance(f, int | float)] if ok else []
        if (
            not ok
            or len(numbers) != len(fractions)
            or not all(math.isfinite(f) and f >= 0 for f in numbers)
        ):
            raise DataError(
                f"{name!r} needs a list of fractions ≥ 0", file=path, row=row, column="selections"
            )
        parsed[name.strip()] = numbers
    return parsed
