"""Random damage thrown at the WVS importer: an exact import or one clear error, never a table
that is silently different.

hypothesis draws a small valid WVS-like file (countries, weights, answer codes of the fixture
codebook, a text column whose quoted values hold the delimiter, a quote or a line break; either
layout, LF or CRLF, plain or gzip), then one piece of damage. The shares the undamaged file
should give are computed here, by hand, from the drawn respondents, not by the importer.

Damage that leaves no trace in the file can't be caught by any reader and is not drawn: a row
removed whole, a file cut exactly at a line end, a weight changed to another plausible weight,
a row emptied to a blank line (a blank line is no row, by CSV convention). What is drawn has a
trace: a field count, a weight out of bounds, a quote, a missing final line break.
"""

from __future__ import annotations

import gzip
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st

from cvs_evaluator.errors import DataError
from cvs_evaluator.questions import QuestionBank, load_question_bank
from cvs_evaluator.wvs import SHARE_COLUMNS, import_wvs

HEADER = ["B_COUNTRY", "B_COUNTRY_ALPHA", "W_WEIGHT", "Q57", "TOWN", "Q119", "Q122"]
WEIGHT_FIELD = HEADER.index("W_WEIGHT")
NUMBERS = {"DEU": 276, "JPN": 392, "KOR": 410}
WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # the largest is 12× the smallest: all plausible
ANSWERS = {"Q57": (1, 2, -1, -2), "Q119": (0, 1, 2, 3, 4, -1, -2), "Q122": (0, 1, 2, -4)}
OPTIONS = {"Q57": (1, 2), "Q119": (1, 2, 3, 4), "Q122": (0, 2)}
"""The substantive codes of test_wvs.py's codebook, by hand (Q119's 0 and Q122's 1 are "hard to
say"), in questionnaire order."""
TOWNS = ("Bonn", '"Mitte, Berlin"', '"a;b"', '"say ""hi"""', '"two\nlines"', '""')
BAD_WEIGHTS = ("nan", "NaN", "inf", "-inf", "Infinity", "", "0", "0.0", "-1", "-0.5", "1e308")
OTHER_DELIMITERS = (",", ";", "\t", " ", ".", "|")
GARBAGE = ',;"abcDEU0123456789 .-\t'


def _write_questionnaire(data_dir: Path) -> Path:
    """test_wvs.py's three-question codebook (its fixture builder, loaded from that file)."""
    import importlib.util
    import sys

    name = "wvs_fixtures_for_damage"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_wvs.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return Path(sys.modules[name].write_questionnaire(data_dir))


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> QuestionBank:
    return load_question_bank(_write_questionnaire(tmp_path_factory.mktemp("data")))


# ---- a valid file, and the shares it must give --------------------------------------------------


@dataclass(frozen=True)
class Respondent:
    country: str
    weight: float
    town: str
    answers: dict[str, int]


@dataclass
class Survey:
    respondents: list[Respondent]
    separator: str
    end: str
    """The line break: "\\n" or "\\r\\n"."""
    bom_quoted_header: bool
    compress: bool

    def rows(self) -> list[list[str]]:
        """The header and each respondent as field texts (quoted where they need it)."""
        header = [f'"{h}"' if self.bom_quoted_header else h for h in HEADER]
        body = [
            [
                str(NUMBERS[r.country]),
                r.country,
                repr(r.weight),
                str(r.answers["Q57"]),
                r.town,
                str(r.answers["Q119"]),
                str(r.answers["Q122"]),
            ]
            for r in self.respondents
        ]
        return [header, *body]


respondents = st.builds(
    Respondent,
    country=st.sampled_from(sorted(NUMBERS)),
    weight=st.sampled_from(WEIGHTS),
    town=st.sampled_from(TOWNS),
    answers=st.fixed_dictionaries({q: st.sampled_from(codes) for q, codes in ANSWERS.items()}),
)
surveys = st.builds(
    Survey,
    # At least 3 weighted rows: the median weight is then one undamaged respondent's.
    respondents=st.lists(respondents, min_size=3, max_size=8),
    separator=st.sampled_from([",", ";"]),
    end=st.sampled_from(["\n", "\r\n"]),
    bom_quoted_header=st.booleans(),
    compress=st.booleans(),
)


def expected_shares(people: list[Respondent]) -> pd.DataFrame:
    """The weighted shares by hand: per country and question, the weight choosing each option
    over the weight of everyone who chose one; no rows where nobody did."""
    rows = []
    for code in sorted({p.country for p in people}):
        for qid, options in OPTIONS.items():
            chose = [p for p in people if p.country == code and p.answers[qid] in options]
            total = sum(p.weight for p in chose)
            for option in options if chose else ():
                weight = sum(p.weight for p in chose if p.answers[qid] == option)
                rows.append((code, qid, option, weight / total, len(chose), True))
    return pd.DataFrame(rows, columns=list(SHARE_COLUMNS))


# ---- damage -----------------------------------------------------------------------------------


@dataclass
class Damaged:
    text: str
    kind: str
    lines: tuple[int, ...] | None
    """The lines an error may name (None: any line, for damage to the header)."""
    must_refuse: bool


def _render(rows: list[list[str]], separator: str, end: str) -> list[str]:
    return [separator.join(fields) + end for fields in rows]


def _start_lines(texts: list[str]) -> list[int]:
    """The line each rendered row starts on (a quoted line break makes a row two lines)."""
    starts, line = [], 1
    for text in texts:
        starts.append(line)
        line += text.count("\n")
    return starts


ROW_DAMAGE = ("drop", "duplicate", "insert", "truncate", "weight", "delim")


@st.composite
def row_damage(draw: st.DrawFn, survey: Survey, kind: str) -> Damaged:
    """Damage inside one row: every kind leaves the row invalid, so each must be refused, naming
    the row's first line."""
    rows = survey.rows()
    sep, end = survey.separator, survey.end
    r = draw(st.integers(0 if kind == "delim" else 1, len(rows) - 1))
    fields = list(rows[r])
    j = draw(st.integers(0, len(fields) - 1))
    if kind == "drop":
        del fields[j]
    elif kind == "duplicate":
        fields.insert(j, fields[j])
    elif kind == "insert":
        fields.insert(j, draw(st.sampled_from(["", "1", "DEU", "-5", "x"])))
    elif kind == "weight":
        huge = draw(st.floats(min_value=1e4, max_value=1e308))  # > 100 × any median here
        fields[WEIGHT_FIELD] = draw(st.sampled_from([*BAD_WEIGHTS, repr(huge)]))
    texts = _render(rows, sep, end)
    line = sep.join(fields)
    if kind == "truncate":  # cut before the last delimiter, keeping a character: 1 field less
        line = line[: draw(st.integers(1, line.rindex(sep)))]
    elif kind == "delim":  # the delimiter after field j (never the last) becomes something else
        j = min(j, len(fields) - 2)
        cut = len(sep.join(fields[: j + 1]))
        other = draw(st.sampled_from([d for d in OTHER_DELIMITERS if d != sep]))
        line = line[:cut] + other + line[cut + 1 :]
    texts[r] = line + end
    where = None if r == 0 else (_start_lines(texts)[r],)
    return Damaged("".join(texts), f"{kind} in row {r}", where, must_refuse=True)


@st.composite
def file_damage(draw: st.DrawFn, survey: Survey, kind: str) -> Damaged:
    """A garbage line inserted (refused, or harmless like a blank line), or the file cut in the
    middle of a line (refused)."""
    texts = _render(survey.rows(), survey.separator, survey.end)
    if kind == "garbage":
        garbage = draw(st.text(alphabet=GARBAGE, max_size=30))
        r = draw(st.integers(0, len(texts)))
        texts.insert(r, garbage + survey.end)
        return Damaged("".join(texts), f"garbage {garbage!r} at row {r}", None, False)
    text = "".join(texts)
    inside = [p for p in range(1, len(text)) if text[p - 1] not in "\r\n"]
    cut = draw(st.sampled_from(inside))
    starts = _start_lines(texts)
    ends = [start + t.count("\n") for start, t in zip(starts, texts, strict=True)]
    last_line = text[:cut].count("\n") + 1
    row = next(i for i, end in enumerate(ends) if end >= last_line)
    return Damaged(text[:cut], f"cut at {cut}", (starts[row], last_line), must_refuse=True)


# ---- the property -----------------------------------------------------------------------------


def _check(bank: QuestionBank, survey: Survey, damaged: Damaged) -> None:
    """Exact import, or one `DataError` naming the file and a line; never anything else."""
    data = ("\ufeff" if survey.bom_quoted_header else "") + damaged.text
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("survey.csv.gz" if survey.compress else "survey.csv")
        raw = data.encode("utf-8")
        path.write_bytes(gzip.compress(raw) if survey.compress else raw)
        try:
            shares = import_wvs([path], bank=bank).shares
        except DataError as error:
            event(f"{damaged.kind.split()[0]}: refused")  # --hypothesis-show-statistics
            message = str(error)
            assert "\n" not in message and error.file == str(path), message
            assert error.line is not None and f"line {error.line}" in message, message
            if damaged.lines is not None:
                assert error.line in damaged.lines, (damaged.kind, message)
            return
    event(f"{damaged.kind.split()[0]}: imported")
    assert not damaged.must_refuse, f"{damaged.kind}: imported {damaged.text!r}"
    _assert_exact(shares, survey.respondents)


def _assert_exact(shares: pd.DataFrame, people: list[Respondent]) -> None:
    expected = expected_shares(people)
    actual = shares.reset_index(drop=True)
    pd.testing.assert_frame_equal(
        actual.drop(columns="share").astype(object), expected.drop(columns="share").astype(object)
    )
    # Sums of the same few weights in another order: equal to the last bits or so.
    pd.testing.assert_series_equal(actual["share"], expected["share"], rtol=0, atol=1e-15)


def _examples(n: int) -> settings:
    """n examples (the machine is small), the same ones on every run and in CI. No "explain"
    phase: it traces every line pandas runs, and a failure took minutes to report."""
    phases = [p for p in Phase if p is not Phase.explain]
    return settings(max_examples=n, deadline=None, derandomize=True, phases=phases)


@_examples(30)
@given(data=st.data())
def test_undamaged_files_import_exactly(bank: QuestionBank, data: st.DataObject) -> None:
    survey = data.draw(surveys)
    text = "".join(_render(survey.rows(), survey.separator, survey.end))
    _check(bank, survey, Damaged(text, "none", None, must_refuse=False))


# One test per kind of damage, so that each gets its share of examples (drawn from one list,
# the last kinds got one example in sixty).
@pytest.mark.parametrize("kind", ROW_DAMAGE)
@_examples(15)
@given(data=st.data())
def test_damage_to_a_row_is_refused(bank: QuestionBank, kind: str, data: st.DataObject) -> None:
    survey = data.draw(surveys)
    _check(bank, survey, data.draw(row_damage(survey, kind)))


@pytest.mark.parametrize("kind", ["garbage", "cut"])
@_examples(30)
@given(data=st.data())
def test_garbage_lines_and_cut_files_are_refused_or_harmless(
    bank: QuestionBank, kind: str, data: st.DataObject
) -> None:
    survey = data.draw(surveys)
    _check(bank, survey, data.draw(file_damage(survey, kind)))
