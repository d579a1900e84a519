"""One table, three renderings: the CSV, Markdown and HTML of a report carry the same tables.

Every report table is a `ReportTable` (a name, a title, a pandas frame). The CSV holds every
table of a page in one file, one row per table row with the table's name in the first column
(`table`) and the union of the tables' columns after it, at full float precision; the Markdown
and HTML pages show the same rows and columns, each cell through `format_cell`, so a reader can
match a figure on the page to the CSV digit for digit up to the shown rounding.

Files are written to a temporary file beside the target and renamed (DESIGN.md, "Nothing
half-written").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

TABLE_COLUMN = "table"
"""First column of a report CSV: which table the row belongs to."""


@dataclass(frozen=True)
class ReportTable:
    """One table of a report page."""

    name: str
    """Short identifier: the CSV's `table` value and the HTML element id."""
    title: str
    """Heading shown above the table."""
    frame: pd.DataFrame
    """The rows, with the columns shown (in order)."""
    note: str = ""
    """One or two sentences saying what the table shows and how it was computed."""


@dataclass(frozen=True)
class RenderedTable:
    """A `ReportTable` with every cell formatted for a page."""

    name: str
    """As `ReportTable.name`."""
    title: str
    """As `ReportTable.title`."""
    note: str
    """As `ReportTable.note`."""
    columns: list[str]
    """Column headers."""
    rows: list[list[str]]
    """Formatted cells, row by row."""


def format_cell(value: Any) -> str:
    """How a cell reads on a page: missing → "", bool → yes/no, integers as they are, floats
    with 4 decimals (scientific below 1e-3 in magnitude, so 2.1e-06 does not read as 0)."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        if math.isnan(number):
            return ""
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        if number == 0.0:
            return "0"
        if abs(number) < 1e-3:
            return f"{number:.2e}"
        return f"{number:.4f}"
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(format_cell(v) for v in value)
    return str(value)


def render(table: ReportTable) -> RenderedTable:
    """Format every cell of `table`."""
    frame = table.frame
    rows = [[format_cell(v) for v in record] for record in frame.itertuples(index=False)]
    return RenderedTable(
        name=table.name,
        title=table.title,
        note=table.note,
        columns=[str(c) for c in frame.columns],
        rows=rows,
    )


def tables_csv(tables: Sequence[ReportTable]) -> str:
    """Every table in one CSV: `table` first, then the union of the tables' columns (a column a
    table lacks is empty on its rows). Floats at full precision."""
    parts = [t.frame.assign(**{TABLE_COLUMN: t.name}) for t in tables]
    if not parts:
        return TABLE_COLUMN + "\n"
    joined = pd.concat(parts, ignore_index=True)
    columns = [TABLE_COLUMN, *(c for c in joined.columns if c != TABLE_COLUMN)]
    return str(joined.loc[:, columns].to_csv(index=False, lineterminator="\n"))


def tables_markdown(title: str, tables: Sequence[ReportTable], footer: Sequence[str] = ()) -> str:
    """A Markdown page: the title, then per table a heading, its note and a pipe table."""
    lines = [f"# {title}", ""]
    for table in tables:
        shown = render(table)
        lines += [f"## {shown.title}", ""]
        if shown.note:
            lines += [shown.note, ""]
        if not shown.rows:
            lines += ["(no rows)", ""]
            continue
        lines.append("| " + " | ".join(_md_cell(c) for c in shown.columns) + " |")
        lines.append("|" + "|".join("---" for _ in shown.columns) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in shown.rows]
        lines.append("")
    if footer:
        lines += ["---", "", *footer, ""]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
