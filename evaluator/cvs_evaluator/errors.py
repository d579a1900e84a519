"""The one error a user's bad input raises: a file that can't be read as survey data.

Every reader in the evaluator raises `DataError` with the file, and where known the line and
column, so a command-line tool can print one line that says where to look and what is wrong,
without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Input data that is malformed or inconsistent: one line naming file, line, column, problem."""

    def __init__(
        self,
        problem: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.problem = problem
        """What is wrong, in words (no location)."""
        self.file = None if file is None else str(file)
        """The file that holds the problem, as given."""
        self.line = line
        """1-based line number in the file (the header is line 1), when one line is at fault."""
        self.row = row
        """1-based data row (header not counted), where lines can't be told (quoted newlines)."""
        self.column = column
        """The column (or JSON key) at fault, when one is."""
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """`file: line N, column 'C': problem` with the parts that are known, on one line."""
        where = [part for part in (self.file,) if part]
        place = []
        if self.line is not None:
            place.append(f"line {self.line}")
        if self.row is not None:
            place.append(f"row {self.row}")
        if self.column is not None:
            place.append(f"column {self.column!r}")
        if place:
            where.append(", ".join(place))
        text = " ".join(self.problem.split())
        return ": ".join([*where, text])
