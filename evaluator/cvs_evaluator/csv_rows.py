"""Where each row of a survey CSV starts, and a refusal for a row with the wrong field count.

pandas can't be asked this: it pads a short row with empty cells, and when it reads only some
columns (`usecols`) it drops a long row's extra fields (or, on the first row, shifts the whole
row into the index). Either way a damaged row is counted as a respondent. The csv module counts
fields as pandas splits them (a quoted field may hold the delimiter or a line break) and tells
the line a row starts on, so a reader can run this first and name the line of any later error.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cvs_evaluator.errors import DataError


def row_lines(path: Path, *, gzipped: bool, separator: str) -> NDArray[np.int64]:
    """(rows,) the line each row after the header starts on (1-based, the header is line 1),
    blank lines included as rows, as pandas reads them with `skip_blank_lines=False`.

    A `DataError` naming the file and line: a non-blank row whose field count differs from the
    header's (naming the first missing column, or the extra fields), a quote never closed or
    followed by text (strict mode: pandas would guess), a line that is not UTF-8, and a file
    whose last line has no line break: a file cut short in its last field has the right field
    count, and only the missing line break tells.
    """
    starts: list[int] = []
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as handle:
            lines = _TextLines(path, handle.readline)
            header = _parse_row(path, lines, 1, separator)
            while (width := _next_width(path, lines, separator)) is not None:
                if width and width != len(header):
                    raise _width_error(path, lines.start, width, header)
                starts.append(lines.start)
    except (EOFError, OSError, zlib.error) as exc:
        if not gzipped and isinstance(exc, OSError):
            raise DataError(f"cannot read the file ({exc.strerror or exc})", file=path) from None
        raise DataError(f"truncated or corrupt gzip ({exc})", file=path) from None
    if not lines.last.endswith(("\n", "\r")):
        raise DataError(
            "the last line has no line break at its end: the file looks cut short (its last "
            "field may be cut too); if it is complete, end it with a line break",
            file=path,
            line=lines.number,
        )
    return np.array(starts, dtype=np.int64)


def _next_width(path: Path, lines: _TextLines, separator: str) -> int | None:
    """The next row's field count (0 for a blank line; None at the end); it starts at
    `lines.start`.

    A line without quotes is counted, not split: the csv module would split it at every
    delimiter too, and counting is 3–4× faster on the 60 WVS files (about 1 s, not 4 s). A line
    with a quote goes to the csv module, which reads on while a quoted field holds a line break.
    """
    lines.start = lines.number + 1
    line = next(lines, None)
    if line is None:
        return None
    body = line[:-2] if line.endswith("\r\n") else line.rstrip("\r\n")
    if '"' not in body and "\r" not in body:
        return body.count(separator) + 1 if body else 0
    return len(_parse_row(path, itertools.chain([line], lines), lines.start, separator))


def _parse_row(path: Path, text: Iterator[str], line: int, separator: str) -> list[str]:
    """One row read by the csv module in strict mode (pandas would guess at a bad quote)."""
    reader = csv.reader(text, delimiter=separator, strict=True)
    try:
        return next(reader, [])  # reads no further than the row's last line
    except csv.Error as exc:
        raise DataError(_csv_problem(exc), file=path, line=line) from None


class _TextLines:
    """The file's lines decoded one at a time, so a byte that is not UTF-8 is named by line."""

    def __init__(self, path: Path, readline: Callable[[], bytes]) -> None:
        self.path = path
        self.readline = readline
        self.number = 0
        """Lines read so far: the number of the last one."""
        self.start = 1
        """The line the row being read starts on."""
        self.last = ""
        """The last line read, with its line break (none when the file ends mid-line)."""

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self.readline()
        if not raw:
            raise StopIteration
        self.number += 1
        try:
            self.last = raw.decode("utf-8-sig" if self.number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line)",
                file=self.path,
                line=self.number,
            ) from None
        return self.last


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if text == "unexpected end of data":  # the words pandas uses for it
        return "malformed CSV (EOF inside string: a quote opened in this row is never closed)"
    return f"malformed CSV ({text})"


def _width_error(path: Path, line: int, fields: int, header: list[str]) -> DataError:
    """A row of `fields` fields where the header has `len(header)`, said in one line."""
    width = len(header)
    if fields < width:
        return DataError(
            f"the row has {fields} fields but the header has {width}: it ends before column "
            f"#{fields + 1} of {width} (a line cut short, or a delimiter lost?)",
            file=path,
            line=line,
            column=header[fields].strip(),
        )
    extra = f"#{width + 1}" if fields == width + 1 else f"#{width + 1}–#{fields}"
    return DataError(
        f"the row has {fields} fields but the header has {width}: field {extra} lies past the "
        f"last column, {header[-1].strip()!r} (#{width}) (a stray delimiter, or a field "
        "inserted?)",
        file=path,
        line=line,
    )
