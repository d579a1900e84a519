"""WVS-7 respondent files → one long table of weighted answer shares per country and question.

Every distribution the evaluation compares a model with comes from here. The reader takes the
files as the WVS publishes them: the v5.0 comma-separated layout, the v6.0 `;`-separated layout
with a byte-order mark and quoted header, gzip or plain (told apart by magic bytes, never by
name), one file per country or one cross-national file (rows grouped by `B_COUNTRY_ALPHA`).

Rules, in one place:
- `W_WEIGHT` weights each respondent when the file has it; a file without it is imported
  unweighted (every respondent counts 1), with a warning, and its countries are listed in
  `ImportResult.unweighted` and marked `weighted=False`.
- Negative codes, empty cells and the non-substantive codes of `cvs_evaluator.codes` are missing
  values: they are no option and are not counted in `n`.
- A question a country did not ask (no substantive answer at all) has no rows; a question it
  asked has one row per substantive option, share 0 where nobody chose it.
- Rows that are not respondents (the `Avg`, `Avg_First`, `Avg_Last` summary rows of the 50-item
  files: text where `B_COUNTRY` holds a number) are dropped with a warning naming them.
- Every row has exactly the header's number of fields, counted by the csv module (quoted fields
  may hold the delimiter or a line break); blank lines are no rows. A short row (pandas would pad
  it with empty cells) or a long one (pandas, reading some columns, would drop the extra fields
  or shift the row) is refused; so is a file whose last line has no line break (cut short: its
  last field may be cut too, and nothing else would show it).
- A weight must be a finite number > 0 and at most `MAX_WEIGHT_RATIO` × the file's median weight
  (`max_weight_ratio=`, `--max-weight-ratio`): the published weights stay within about 30× the
  median, and one absurd weight (1e308) would make one respondent the whole country.
- Anything else unexpected is a `DataError` naming the file, line and column.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm import tqdm

from cvs_evaluator.codes import non_substantive_codes
from cvs_evaluator.countries import UnknownCountry, country
from cvs_evaluator.csv_rows import row_lines
from cvs_evaluator.durable import durable_path
from cvs_evaluator.errors import DataError
from cvs_evaluator.questions import QuestionBank, load_question_bank, question_sort_key

SHARE_COLUMNS = ("country", "question", "option", "share", "n", "weighted")
"""Columns of the shares table, in order."""
SHARE_DTYPES = {
    "country": "str",
    "question": "str",
    "option": "int64",
    "share": "float64",
    "n": "int64",
    "weighted": "bool",
}
COUNTRY_CODE = "B_COUNTRY_ALPHA"
"""Respondent's country, ISO 3166-1 alpha-3 (or a code of `countries.NON_ISO_CODES`)."""
COUNTRY_NUMBER = "B_COUNTRY"
"""Numeric country code; text here marks a summary row, not a respondent."""
WEIGHT = "W_WEIGHT"
"""The survey weight (age, sex, education, region) the WVS publishes with each respondent."""
MISSING_CELL = -5
"""Code an empty answer cell is read as: the WVS's "Missing; not available"."""
CACHE_FORMAT = 1
"""Bump when the shares computation changes, so cached study imports are rebuilt."""
MAX_WEIGHT_RATIO = 100.0
"""Default limit on a weight over the file's median weight (WVS-7's largest is 28.7×, Chile)."""


@dataclass
class ImportResult:
    """What `import_wvs` made of a set of files."""

    shares: pd.DataFrame
    """Long table, columns `SHARE_COLUMNS`, sorted by country, question (questionnaire order),
    option."""
    warnings: list[str] = field(default_factory=list)
    """One line per thing the user should know (unweighted files, rejected rows)."""
    unweighted: list[str] = field(default_factory=list)
    """Countries imported without survey weights (their file has no `W_WEIGHT`), sorted."""
    respondents: dict[str, int] = field(default_factory=dict)
    """Country → respondent rows read (all rows, whatever they answered)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Country → the file its respondents came from."""


@dataclass
class _CountryBlock:
    """One country's rows of one file, with the columns the shares need."""

    weights: NDArray[np.float64]
    """(respondents,) survey weight, or 1.0 each when unweighted."""
    answers: dict[str, NDArray[np.int64]]
    """question id → (respondents,) answer codes (missing cells as `MISSING_CELL`)."""
    weighted: bool
    """Whether the weights came from `W_WEIGHT`."""


def import_wvs(
    paths: Sequence[Path],
    *,
    bank: QuestionBank | None = None,
    progress: bool = False,
    questions: Sequence[str] | None = None,
    max_weight_ratio: float = MAX_WEIGHT_RATIO,
) -> ImportResult:
    """Read WVS respondent files and return weighted shares for the bank's questions.

    `bank` defaults to `load_question_bank()` ($CVS_DATA). `questions` restricts the import to
    some question ids; an id the codebook lacks, or that is no value question, is a `DataError`.
    A country found in two files is a `DataError` (import one release per country). A weight
    above `max_weight_ratio` × its file's median weight is a `DataError` (`math.inf`: no limit).
    """
    if not paths:
        raise DataError("no input files given")
    if not max_weight_ratio >= 1:  # also refuses NaN, which would turn the check off unseen
        raise ValueError(f"max_weight_ratio must be a number ≥ 1, not {max_weight_ratio!r}")
    bank = load_question_bank() if bank is None else bank
    wanted = wanted_questions(bank, questions)
    result = ImportResult(shares=_empty_shares())
    blocks: dict[str, _CountryBlock] = {}
    for path in tqdm([Path(p) for p in paths], desc="WVS files", unit="file", disable=not progress):
        for code, block in _read_file(path, bank, wanted, result, max_weight_ratio).items():
            if code in blocks:
                raise DataError(
                    f"country {code} is also in {result.sources[code]}: import one release "
                    "per country",
                    file=path,
                    column=COUNTRY_CODE,
                )
            blocks[code] = block
            result.sources[code] = str(path)
    result.unweighted = sorted(code for code, block in blocks.items() if not block.weighted)
    result.shares = _shares_table(blocks, bank, wanted, result.sources)
    return result


def wanted_questions(bank: QuestionBank, questions: Sequence[str] | None) -> list[str]:
    """The question ids to import in questionnaire order: all the bank's for None; an id that is
    not in the codebook, or no value question, is a `DataError` (callers check before work)."""
    if questions is None:
        return list(bank.questions)
    if not questions:
        raise DataError("no question ids given to import")
    for qid in questions:
        if qid not in bank.questions:
            known = qid in bank.codebook_codes or not bank.codebook_codes
            reason = "is not a value question" if known else "is not in the codebook"
            raise DataError(f"question id {qid!r} {reason}")
    return sorted(dict.fromkeys(questions), key=question_sort_key)


def _read_file(
    path: Path,
    bank: QuestionBank,
    wanted: list[str],
    result: ImportResult,
    max_weight_ratio: float,
) -> dict[str, _CountryBlock]:
    """Country → block for one file; warnings go to `result`."""
    gzipped = _is_gzip(path)
    columns, separator = _header(path, gzipped)
    if COUNTRY_CODE not in columns:
        raise DataError(
            f"missing column {COUNTRY_CODE} (the respondent's country)", file=path, line=1
        )
    present = [q for q in wanted if q in columns]
    if not present:
        raise DataError(
            f"none of the {len(wanted)} question columns ({wanted[0]}…) is in the header",
            file=path,
            line=1,
        )
    extra = [c for c in (COUNTRY_NUMBER, WEIGHT) if c in columns]
    starts = row_lines(path, gzipped=gzipped, separator=separator)
    frame, rows_read = _read_body(path, gzipped, separator, [COUNTRY_CODE, *extra, *present])
    if rows_read != len(starts):  # same quoting rules: unseen, but the line numbers rely on it
        raise DataError(
            f"pandas reads {rows_read} rows where the csv module reads {len(starts)}: "
            "check the quoting",
            file=path,
        )
    lines = starts[frame.index.to_numpy(dtype=np.int64)]
    keep = _respondent_rows(path, frame, lines, result)
    frame, lines = frame[keep], lines[keep]
    if frame.empty:
        raise DataError("no respondent rows after the header", file=path)

    codes = _country_codes(path, frame[COUNTRY_CODE], lines)
    weighted = WEIGHT in frame.columns
    weights = (
        _weights(path, frame, lines, columns, max_weight_ratio) if weighted else np.ones(len(frame))
    )
    answers = {q: _answer_codes(path, frame[q], lines, q, bank) for q in present}
    if not weighted:
        found = ", ".join(sorted(set(codes.tolist())))
        result.warnings.append(
            f"{path}: no {WEIGHT} column: {found} imported unweighted (each respondent counts 1)"
        )
    blocks: dict[str, _CountryBlock] = {}
    for code in sorted(set(codes.tolist())):
        rows = codes == code
        result.respondents[code] = int(rows.sum())
        blocks[code] = _CountryBlock(
            weights=weights[rows],
            answers={q: values[rows] for q, values in answers.items()},
            weighted=weighted,
        )
    return blocks


def _is_gzip(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            magic = handle.read(2)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc})", file=path) from None
    if not magic:
        raise DataError("empty file (0 bytes)", file=path)
    return magic == b"\x1f\x8b"


def _header(path: Path, gzipped: bool) -> tuple[list[str], str]:
    """The header's column names and the separator (`;` when it outnumbers `,`)."""
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as handle:
            first = handle.readline()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"truncated or corrupt gzip ({exc})", file=path, line=1) from None
    try:
        text = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"header is not UTF-8 text ({exc.reason})", file=path, line=1) from None
    if not text.strip():
        raise DataError("empty file: no header line", file=path, line=1)
    separator = ";" if text.count(";") > text.count(",") else ","
    names = next(csv.reader([text], delimiter=separator))
    return [name.strip() for name in names], separator


def _read_body(
    path: Path, gzipped: bool, separator: str, usecols: list[str]
) -> tuple[pd.DataFrame, int]:
    """The wanted columns of every row but blank ones (frame index = row number), and the number
    of rows, blank ones included."""
    try:
        frame = pd.read_csv(
            path,
            sep=separator,
            usecols=usecols,
            compression="gzip" if gzipped else None,
            encoding="utf-8-sig",
            dtype={COUNTRY_CODE: str, COUNTRY_NUMBER: str},
            skip_blank_lines=False,  # keeps row i on line i + 2
            low_memory=False,
        )
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"truncated or corrupt gzip ({exc})", file=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", file=path) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"malformed CSV ({str(exc).strip()})", file=path) from None
    except pd.errors.EmptyDataError:
        raise DataError("empty file", file=path) from None
    blank = frame.isna().all(axis=1).to_numpy()
    return (frame[~blank] if blank.any() else frame), len(frame)


def _respondent_rows(
    path: Path, frame: pd.DataFrame, lines: NDArray[np.int64], result: ImportResult
) -> NDArray[np.bool_]:
    """Mask of respondent rows; summary rows (text in `B_COUNTRY`) are dropped with a warning."""
    if COUNTRY_NUMBER not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    labels = frame[COUNTRY_NUMBER]
    summary = (labels.notna() & pd.to_numeric(labels, errors="coerce").isna()).to_numpy()
    if summary.any():
        named = ", ".join(
            f"{label!r} (line {line})"
            for label, line in zip(labels[summary], lines[summary], strict=True)
        )
        result.warnings.append(
            f"{path}: rejected {int(summary.sum())} row(s) that are not respondents: {named}"
        )
    return ~summary


def _country_codes(path: Path, column: pd.Series, lines: NDArray[np.int64]) -> NDArray[np.str_]:
    raw = column.fillna("").astype(str).str.strip().to_numpy()
    resolved: dict[str, str] = {}
    for code in pd.unique(raw):
        line = int(lines[np.flatnonzero(raw == code)[0]])
        if not code:
            raise DataError("empty country code", file=path, line=line, column=COUNTRY_CODE)
        try:
            resolved[code] = country(code).iso3
        except UnknownCountry as exc:
            raise DataError(str(exc), file=path, line=line, column=COUNTRY_CODE) from None
    return np.array([resolved[code] for code in raw], dtype=str)


def _weights(
    path: Path,
    frame: pd.DataFrame,
    lines: NDArray[np.int64],
    columns: list[str],
    max_ratio: float,
) -> NDArray[np.float64]:
    """(respondents,) the `W_WEIGHT`s; one that is not finite, not > 0, or above `max_ratio` ×
    the file's median is a `DataError` (the shares would silently follow it)."""
    where = f"column #{columns.index(WEIGHT) + 1} of {len(columns)}"
    values = pd.to_numeric(frame[WEIGHT], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | ~(values > 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        cell = frame[WEIGHT].iloc[first]
        if pd.isna(cell):
            shown = "empty or NaN"
        else:
            shown = f"{values[first]:g}" if np.isfinite(values[first]) else repr(str(cell))
        raise DataError(
            f"weight {shown} is not a finite number > 0 ({where})",
            file=path,
            line=int(lines[first]),
            column=WEIGHT,
        )
    median = float(np.median(values))
    above = values > max_ratio * median
    if above.any():
        first = int(np.flatnonzero(above)[0])
        raise DataError(
            f"weight {values[first]:g} is more than {max_ratio:g}× the file's median weight "
            f"{median:.4g} ({where}): implausible, it would outweigh {max_ratio:g} typical "
            "respondents; if it is right, raise the limit (--max-weight-ratio)",
            file=path,
            line=int(lines[first]),
            column=WEIGHT,
        )
    if not np.isfinite(values.sum()):
        raise DataError(
            f"the weights sum past the largest float ({where}): scale them down",
            file=path,
            column=WEIGHT,
        )
    return values


def _answer_codes(
    path: Path, column: pd.Series, lines: NDArray[np.int64], qid: str, bank: QuestionBank
) -> NDArray[np.int64]:
    """(respondents,) integer codes; empty cells become `MISSING_CELL`."""
    if column.dtype.kind in "iu":
        values = column.to_numpy(dtype=np.int64)
    else:
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        bad = (np.isnan(numbers) & column.notna().to_numpy()) | (
            np.isfinite(numbers) & (numbers != np.round(numbers))
        )
        bad |= np.isinf(numbers)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"answer {column.iloc[first]!r} is not an integer code",
                file=path,
                line=int(lines[first]),
                column=qid,
            )
        values = np.where(np.isnan(numbers), MISSING_CELL, numbers).astype(np.int64)
    defined = bank.codebook_codes.get(qid)
    if defined is None:  # a bank built without the codebook: its options and known non-answers
        defined = frozenset(bank.questions[qid].codes) | non_substantive_codes(qid)
    undefined = (values >= 0) & ~np.isin(values, np.fromiter(defined, dtype=np.int64))
    if undefined.any():
        first = int(np.flatnonzero(undefined)[0])
        raise DataError(
            f"code {values[first]} is not a code of {qid} in the codebook "
            f"({', '.join(map(str, sorted(defined)))})",
            file=path,
            line=int(lines[first]),
            column=qid,
        )
    return values


def _shares_table(
    blocks: dict[str, _CountryBlock],
    bank: QuestionBank,
    wanted: list[str],
    sources: dict[str, str],
) -> pd.DataFrame:
    """The long table: one row per (country, asked question, substantive option)."""
    parts: dict[str, list[NDArray[np.generic]]] = {name: [] for name in SHARE_COLUMNS}
    for code in sorted(blocks):
        block = blocks[code]
        for qid in wanted:
            values = block.answers.get(qid)
            if values is None:
                continue
            options = np.array(bank.questions[qid].codes, dtype=np.int64)  # ascending
            answered = np.isin(values, options)
            n = int(answered.sum())
            if n == 0:
                continue  # not asked here (or nobody answered): no rows
            weights = block.weights[answered]
            total = float(weights.sum())
            if total <= 0:
                raise DataError(
                    f"every substantive answer to {qid} in {code} has weight 0",
                    file=sources.get(code),
                    column=WEIGHT,
                )
            position = np.searchsorted(options, values[answered])
            sums = np.bincount(position, weights=weights, minlength=len(options))
            size = len(options)
            parts["country"].append(np.full(size, code, dtype=object))
            parts["question"].append(np.full(size, qid, dtype=object))
            parts["option"].append(options)
            parts["share"].append(sums / total)
            parts["n"].append(np.full(size, n, dtype=np.int64))
            parts["weighted"].append(np.full(size, block.weighted, dtype=bool))
    if not parts["country"]:
        return _empty_shares()
    table = pd.DataFrame({name: np.concatenate(parts[name]) for name in SHARE_COLUMNS})
    return table.astype(SHARE_DTYPES)


def _empty_shares() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in SHARE_DTYPES.items()})


def write_shares(shares: pd.DataFrame, path: Path) -> None:
    """Write the table to `.parquet` or `.csv` atomically: a temporary file, then a rename."""
    path = Path(path)
    suffix = _shares_suffix(path)
    missing = [name for name in SHARE_COLUMNS if name not in shares.columns]
    if missing:
        raise ValueError(f"shares table lacks column(s) {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with durable_path(path) as temporary:
        if suffix == ".parquet":
            shares.to_parquet(temporary, engine="pyarrow", index=False)
        else:
            shares.to_csv(temporary, index=False)


def read_shares(path: Path) -> pd.DataFrame:
    """A shares table written by `write_shares` (or any table with `SHARE_COLUMNS`)."""
    path = Path(path)
    suffix = _shares_suffix(path)
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path, engine="pyarrow")
        else:
            table = pd.read_csv(path, dtype={"country": str, "question": str})
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"not a readable shares table ({exc})", file=path) from None
    for name in SHARE_COLUMNS:
        if name not in table.columns:
            raise DataError("missing column", file=path, column=name)
    try:
        return table[list(SHARE_COLUMNS)].astype(SHARE_DTYPES)
    except (TypeError, ValueError) as exc:
        raise DataError(f"a column has the wrong type ({exc})", file=path) from None


def _shares_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise DataError("a shares table is a .parquet or .csv file", file=path)
    return suffix


# ---- the study's data: every WVS-7 file under $CVS_DATA, imported once and cached ----------


def study_files(data_dir: Path | None = None) -> list[Path]:
    """The WVS-7 files the study uses: every file in `wvs7/microdata/` (56 countries) and
    `wvs7/other_releases/` (India v6.0, the three 50-item files), sorted."""
    root = _data_root(data_dir) / "wvs7"
    files = [
        path
        for folder in ("microdata", "other_releases")
        for path in sorted((root / folder).glob("*.csv*"))
        if path.is_file()
    ]
    if not files:
        raise DataError(
            "no WVS files (*.csv, *.csv.gz) in microdata/ or other_releases/", file=root
        )
    return files


def load_study_import(data_dir: Path | None = None, *, progress: bool = False) -> ImportResult:
    """`import_wvs` over `study_files()`, cached as Parquet + JSON under $CVS_CACHE/data/.

    The cache key covers the size and modification time of every input file and questionnaire
    file, and `CACHE_FORMAT`; any change re-imports.
    """
    root = _data_root(data_dir)
    files = study_files(root)
    questionnaire = sorted((root / "wvs7" / "questionnaire").glob("*.json"))
    key = _cache_key([*files, *questionnaire])
    from cvs_families.paths import cache_dir

    folder = cache_dir() / "data"
    table_path = folder / f"wvs7_shares_{key}.parquet"
    notes_path = folder / f"wvs7_shares_{key}.json"
    if table_path.is_file() and notes_path.is_file():
        notes = json.loads(notes_path.read_text(encoding="utf-8"))
        return ImportResult(shares=read_shares(table_path), **notes)
    result = import_wvs(files, bank=load_question_bank(root), progress=progress)
    write_shares(result.shares, table_path)
    notes = {k: v for k, v in asdict(result).items() if k != "shares"}
    with durable_path(notes_path) as temporary:
        temporary.write_text(json.dumps(notes, indent=1), encoding="utf-8")
    return result


def load_study_shares(data_dir: Path | None = None) -> pd.DataFrame:
    """The shares of every WVS-7 file in $CVS_DATA (cached; see `load_study_import`)."""
    return load_study_import(data_dir).shares


def _data_root(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    from cvs_families.paths import data_dir as default_data_dir

    return default_data_dir()


def _cache_key(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
