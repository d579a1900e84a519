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

`load_goqa_shares` goes one step further and makes the file a human source the evaluation can
score against: the same long table as `wvs.load_study_shares` (country ISO3, WVS question id,
WVS answer code, share), with everything that could not be mapped listed in a `GoqaReport`
instead of guessed. Its matching rule:
- a question matches the bank question whose text is equal after `normalise_text` (NFKC,
  casefold, every Unicode punctuation character including quotes → space, whitespace runs
  collapsed); text equal to two bank questions' texts is ambiguous and left out;
- an option matches the option of that question whose label is equal after `normalise_text`
  (never by position); a question is kept only when every one of its bank options has a label;
- labels the bank lacks ("Don't know", …) are non-answers: their mass is dropped and the shares
  of the bank's options are renormalised to sum to 1, as `wvs` drops missing and
  non-substantive answers before dividing by the answered total.
"""

from __future__ import annotations

import ast
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cvs_evaluator.countries import UnknownCountry, country_by_name
from cvs_evaluator.errors import DataError
from cvs_evaluator.questions import QuestionBank, question_sort_key
from cvs_evaluator.wvs import SHARE_COLUMNS

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
    records: list[dict[str, object]] = []
    unmapped: set[str] = set()
    for row, entry in _wvs_rows(path):
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


def _wvs_rows(path: Path) -> list[tuple[int, pd.Series]]:
    """(1-based data row, row) of each `source == "WVS"` row; `DataError` for an unreadable CSV."""
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
    return [
        (int(str(index)) + 1, entry)
        for index, entry in raw.iterrows()
        if entry["source"].strip() == "WVS"
    ]


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


GOQA_SHARE_DTYPES = {
    "country": "str",
    "question": "str",
    "option": "int64",
    "share": "float64",
    "n": "Int64",
    "weighted": "boolean",
}
"""Dtypes of `load_goqa_shares`' table: `wvs.SHARE_COLUMNS`, with `n` and `weighted` unknown
(<NA>) since GlobalOpinionQA publishes neither."""
SAME_SHARE_TOLERANCE = 1e-9
"""How far two rows' shares of one option may differ and still be the same distribution."""
_EXAMPLES = 5
"""How many entries of a report category `GoqaReport.lines` spells out."""


def normalise_text(text: str) -> str:
    """The form question texts and option labels are compared in.

    Unicode NFKC, casefolded; every punctuation character (Unicode category P*: quotes, curly
    quotes, apostrophes, dashes, brackets, …) and the backtick become a space; runs of whitespace
    become one space; no leading or trailing space. "Don’t  KNOW." → "don t know".
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(
        " " if char == "`" or unicodedata.category(char).startswith("P") else char
        for char in folded
    )
    return " ".join(spaced.split())


@dataclass
class GoqaReport:
    """What of a GlobalOpinionQA file's WVS rows did not become shares, by kind.

    `row` is the 1-based data row of the CSV (as in `DataError`). Every entry is left out of the
    shares except `unmatched_options` (those labels' mass is dropped, the rest renormalised) and
    agreeing `duplicates` (kept once).
    """

    unmatched_questions: list[tuple[int, str]] = field(default_factory=list)
    """(row, question text) of rows whose text equals no bank question's."""
    ambiguous_questions: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)
    """(row, question text, bank ids) of rows whose text equals several bank questions'."""
    unmatched_options: list[tuple[str, str]] = field(default_factory=list)
    """(question id, label) of labels that name no option of the matched question, once each:
    non-answers such as "Don't know" (their mass is dropped) or misspelt options."""
    ambiguous_options: list[tuple[int, str, str]] = field(default_factory=list)
    """(row, question id, label) where a label names an option another label of the row already
    named, or several options of the question."""
    missing_options: list[tuple[int, str, tuple[int, ...]]] = field(default_factory=list)
    """(row, question id, codes) of rows that give no label for these options of the question."""
    unknown_countries: list[str] = field(default_factory=list)
    """Country names `countries.country_by_name` does not know, once each, sorted."""
    length_mismatches: list[tuple[int, str, int, int]] = field(default_factory=list)
    """(row, country name, fractions, options) where a country's fraction count differs from the
    row's option count."""
    no_answers: list[tuple[int, str]] = field(default_factory=list)
    """(row, ISO3) where the country's fractions on the question's options sum to 0 (as `wvs`
    gives no rows for a question nobody answered)."""
    duplicates: list[tuple[str, str, tuple[int, ...], bool]] = field(default_factory=list)
    """(ISO3, question id, rows, conflicting) of a country × question given by several rows:
    kept once when the rows agree, left out when they conflict."""

    def lines(self) -> list[str]:
        """One line per category, for a command to print ("…: none" when empty)."""
        return [
            _line(
                "questions matching no bank question",
                [f"row {row} {_quote(text)}" for row, text in self.unmatched_questions],
            ),
            _line(
                "questions matching several bank questions (left out)",
                [
                    f"row {row} {_quote(text)} = {'/'.join(ids)}"
                    for row, text, ids in self.ambiguous_questions
                ],
            ),
            _line(
                "labels matching no option (mass dropped)",
                [f"{qid} {label!r}" for qid, label in self.unmatched_options],
            ),
            _line(
                "labels naming an option twice (row left out)",
                [f"row {row} {qid} {label!r}" for row, qid, label in self.ambiguous_options],
            ),
            _line(
                "rows lacking options (left out)",
                [
                    f"row {row} {qid} codes {', '.join(map(str, codes))}"
                    for row, qid, codes in self.missing_options
                ],
            ),
            _line("unknown countries (left out)", [repr(name) for name in self.unknown_countries]),
            _line(
                "fraction counts differing from option counts (left out)",
                [
                    f"row {row} {name!r} {fractions} for {options}"
                    for row, name, fractions, options in self.length_mismatches
                ],
            ),
            _line(
                "countries with no answer on the options (left out)",
                [f"row {row} {code}" for row, code in self.no_answers],
            ),
            _line(
                "country × question in several rows",
                [
                    f"{code} {qid} rows {', '.join(map(str, rows))} "
                    + ("conflict (left out)" if conflicting else "agree (kept once)")
                    for code, qid, rows, conflicting in self.duplicates
                ],
            ),
        ]


@dataclass
class GoqaShares:
    """GlobalOpinionQA's WVS rows as human shares, and what could not be mapped."""

    shares: pd.DataFrame
    """Columns `wvs.SHARE_COLUMNS` (dtypes `GOQA_SHARE_DTYPES`), one row per (country, question,
    option) for every option of the bank's question; shares sum to 1 per country × question;
    sorted by country, question (questionnaire order), option, like `wvs.load_study_shares`."""
    report: GoqaReport
    """Everything left out or dropped, by kind."""
    path: Path
    """The file read."""
    wvs_rows: int
    """How many `source == "WVS"` rows the file has."""

    def describe(self) -> list[str]:
        """A summary line, then `GoqaReport.lines`."""
        questions = self.shares["question"].nunique()
        countries = self.shares["country"].nunique()
        summary = (
            f"GlobalOpinionQA {self.path}: {self.wvs_rows} WVS rows → {questions} questions × "
            f"{countries} countries ({len(self.shares)} shares)"
        )
        return [summary, *self.report.lines()]


def load_goqa_shares(path: Path, bank: QuestionBank) -> GoqaShares:
    """The WVS rows of a GlobalOpinionQA CSV as the human shares of `bank`'s questions.

    Questions and options are matched by `normalise_text` (see the module docstring); whatever
    does not match is listed in the report, never guessed. Raises `DataError` naming the file,
    row and column of a malformed `options` or `selections` cell (as `load_globalopinion`).
    """
    path = Path(path)
    report = GoqaReport()
    by_text = _questions_by_text(bank)
    unknown: set[str] = set()
    unmatched_options: set[tuple[str, str]] = set()
    given: dict[tuple[str, str], list[tuple[int, dict[int, float]]]] = {}
    rows = _wvs_rows(path)
    for row, entry in rows:
        labels = _options(entry["options"], path, row)
        selections = _selections(entry["selections"], path, row)
        countries = _row_countries(row, labels, selections, report, unknown)
        qid = _match_question(row, entry["question"], by_text, report)
        if qid is None:
            continue
        codes = _match_options(row, qid, labels, bank, report, unmatched_options)
        if codes is None:
            continue
        for code, fractions in countries:
            answered = {c: f for c, f in zip(codes, fractions, strict=True) if c is not None}
            total = sum(answered.values())
            if total <= 0:
                report.no_answers.append((row, code))
                continue
            shares = {c: f / total for c, f in answered.items()}
            given.setdefault((code, qid), []).append((row, shares))
    report.unknown_countries = sorted(unknown)
    report.unmatched_options = sorted(
        unmatched_options, key=lambda entry: (question_sort_key(entry[0]), entry[1])
    )
    table = _share_table(given, bank, report)
    return GoqaShares(shares=table, report=report, path=path, wvs_rows=len(rows))


def _questions_by_text(bank: QuestionBank) -> dict[str, list[str]]:
    """Normalised question text → the bank ids with that text (several: ambiguous)."""
    by_text: dict[str, list[str]] = {}
    for qid, question in bank.questions.items():
        by_text.setdefault(normalise_text(question.text), []).append(qid)
    return by_text


def _match_question(
    row: int, text: str, by_text: dict[str, list[str]], report: GoqaReport
) -> str | None:
    ids = by_text.get(normalise_text(text), [])
    if not ids:
        report.unmatched_questions.append((row, text))
        return None
    if len(ids) > 1:
        report.ambiguous_questions.append((row, text, tuple(ids)))
        return None
    return ids[0]


def _match_options(
    row: int,
    qid: str,
    labels: list[str],
    bank: QuestionBank,
    report: GoqaReport,
    unmatched: set[tuple[str, str]],
) -> list[int | None] | None:
    """The bank code each label names (None: no option), or None when the row is left out."""
    question = bank.questions[qid]
    by_label: dict[str, list[int]] = {}
    for code, label in question.options:
        by_label.setdefault(normalise_text(label), []).append(code)
    codes: list[int | None] = []
    for label in labels:
        found = by_label.get(normalise_text(label), [])
        if not found:
            unmatched.add((qid, label))
            codes.append(None)
        elif len(found) > 1 or found[0] in codes:
            report.ambiguous_options.append((row, qid, label))
            return None
        else:
            codes.append(found[0])
    missing = tuple(code for code in question.codes if code not in codes)
    if missing:
        report.missing_options.append((row, qid, missing))
        return None
    return codes


def _row_countries(
    row: int,
    labels: list[str],
    selections: dict[str, list[float]],
    report: GoqaReport,
    unknown: set[str],
) -> list[tuple[str, list[float]]]:
    """(ISO3, fractions) of the row's countries that are known and give one fraction a label."""
    countries: list[tuple[str, list[float]]] = []
    for name, fractions in selections.items():
        try:
            code = country_by_name(name).iso3
        except UnknownCountry:
            unknown.add(name)
            continue
        if len(fractions) != len(labels):
            report.length_mismatches.append((row, name, len(fractions), len(labels)))
            continue
        countries.append((code, fractions))
    return countries


def _share_table(
    given: dict[tuple[str, str], list[tuple[int, dict[int, float]]]],
    bank: QuestionBank,
    report: GoqaReport,
) -> pd.DataFrame:
    """The long table, one distribution per country × question; repeats resolved or reported."""
    records: list[tuple[str, str, int, float]] = []
    for (code, qid), entries in given.items():
        first = entries[0][1]
        if len(entries) > 1:
            conflicting = any(
                not all(abs(first[c] - other[c]) <= SAME_SHARE_TOLERANCE for c in first)
                for _, other in entries[1:]
            )
            rows = tuple(row for row, _ in entries)
            report.duplicates.append((code, qid, rows, conflicting))
            if conflicting:
                continue
        records.extend((code, qid, option, first[option]) for option in bank.questions[qid].codes)
    report.duplicates.sort(key=lambda entry: (entry[0], question_sort_key(entry[1])))
    table = pd.DataFrame.from_records(records, columns=list(SHARE_COLUMNS[:4]))
    table["n"] = pd.NA
    table["weighted"] = pd.NA
    table = table.astype(GOQA_SHARE_DTYPES)
    order = {qid: index for index, qid in enumerate(bank.questions)}
    table["_order"] = table["question"].map(order)
    table = table.sort_values(["country", "_order", "option"], kind="stable", ignore_index=True)
    return table.drop(columns="_order")


def _line(title: str, entries: list[str]) -> str:
    if not entries:
        return f"{title}: none"
    shown = "; ".join(entries[:_EXAMPLES])
    more = f"; … {len(entries) - _EXAMPLES} more" if len(entries) > _EXAMPLES else ""
    return f"{title}: {len(entries)} ({shown}{more})"


def _quote(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")
