"""The WVS importer: weighting by hand, every file layout, each bad input, and all real files."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest

from cvs_evaluator.errors import DataError
from cvs_evaluator.questions import Question, QuestionBank, load_question_bank
from cvs_evaluator.wvs import (
    SHARE_COLUMNS,
    ImportResult,
    import_wvs,
    load_study_import,
    read_shares,
    study_files,
    write_shares,
)

# ---- fixtures the tests write themselves ------------------------------------------------------


def write_questionnaire(data_dir: Path) -> Path:
    """A three-question questionnaire in the WVS files' format (made-up texts)."""
    folder = data_dir / "wvs7" / "questionnaire"
    folder.mkdir(parents=True, exist_ok=True)
    missing = {"-1": "Don't know", "-2": "No answer", "-4": "Not asked", "-5": "Missing"}
    codebook = {
        "Q57": {"question": "trust", "choices": {"1": "yes", "2": "no", **missing}},
        "Q119": {
            "question": "agree scale",
            "choices": {"0": "hard to say", "1": "a", "2": "b", "3": "c", "4": "d", **missing},
        },
        "Q122": {
            "question": "three-way",
            "choices": {"0": "disagree", "1": "hard to say", "2": "agree", **missing},
        },
    }
    metadata = {
        qid: {
            "question": f"fixture question {qid}?",
            "use_case": "value",
            "answer_data_type": "ordinal",
        }
        for qid in codebook
    }
    metadata["B_COUNTRY_ALPHA"] = {"question": "country", "use_case": "demographic"}
    sections = {"1-100": "FIRST", "101-120": "SECOND", "121-130": "THIRD", "131-140": "EMPTY"}
    for name, content in [
        ("codebook.json", codebook),
        ("question_metadata.json", metadata),
        ("sections.json", sections),
    ]:
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return data_dir


def write_survey(
    path: Path,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    sep: str = ",",
    bom: bool = False,
    quote_header: bool = False,
    compress: bool = False,
) -> Path:
    """A respondent file in one of the WVS layouts."""
    names = [f'"{h}"' if quote_header else h for h in header]
    lines = [sep.join(names)] + [sep.join(str(v) for v in row) for row in rows]
    data = ("\ufeff" if bom else "") + "\n".join(lines) + "\n"
    raw = data.encode("utf-8")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


HEADER = ["B_COUNTRY", "B_COUNTRY_ALPHA", "W_WEIGHT", "Q57", "Q119", "Q122", "Q999"]
# Hand example, Germany: W_WEIGHT, Q57 (1/2), Q119 (0 = hard to say), Q122 (never asked).
DEU_ROWS = [
    [276, "DEU", 1.0, 1, 0, -4, 3],
    [276, "DEU", 2.0, 2, 1, -4, 3],
    [276, "DEU", 3.0, 1, 4, -4, 3],
    [276, "DEU", 0.5, -1, 4, -4, 3],
    [276, "DEU", 4.0, 2, -2, -4, 3],
]
JPN_ROWS = [
    [392, "JPN", 1.5, 2, 3, 0, 1],
    [392, "JPN", 0.5, 2, 3, 1, 1],
    [392, "JPN", 1.0, 1, -1, 2, 1],
]


def expected_deu() -> pd.DataFrame:
    """Computed by hand from DEU_ROWS.

    Q57: answers 1,2,1,(−1 missing),2 with weights 1,2,3,(0.5),4 → total 10: code 1 = 4/10,
    code 2 = 6/10, n = 4. Q119: code 0 is "hard to say" (missing), −2 missing; answers 1,4,4 with
    weights 2,3,0.5 → total 5.5: code 1 = 2/5.5, codes 2 and 3 = 0, code 4 = 3.5/5.5, n = 3.
    Q122: all −4 (not asked) → no rows.
    """
    return pd.DataFrame(
        {
            "country": ["DEU"] * 6,
            "question": ["Q57", "Q57", "Q119", "Q119", "Q119", "Q119"],
            "option": [1, 2, 1, 2, 3, 4],
            "share": [0.4, 0.6, 2 / 5.5, 0.0, 0.0, 3.5 / 5.5],
            "n": [4, 4, 3, 3, 3, 3],
            "weighted": [True] * 6,
        }
    )


@pytest.fixture
def bank(tmp_path: Path) -> QuestionBank:
    return load_question_bank(write_questionnaire(tmp_path / "data"))


def _compare(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(SHARE_COLUMNS)
    actual = actual.reset_index(drop=True)
    pd.testing.assert_frame_equal(
        actual.astype(object).drop(columns="share"),
        expected.astype(object).drop(columns="share"),
    )
    np.testing.assert_allclose(actual["share"], expected["share"], rtol=0, atol=1e-15)


# ---- weighting and options --------------------------------------------------------------------


def test_weighted_shares_equal_the_hand_computation(tmp_path: Path, bank: QuestionBank) -> None:
    path = write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)
    result = import_wvs([path], bank=bank)
    _compare(result.shares, expected_deu())
    assert result.unweighted == []
    assert result.respondents == {"DEU": 5}
    assert result.warnings == []


def test_missing_weight_column_imports_unweighted_and_says_so(
    tmp_path: Path, bank: QuestionBank
) -> None:
    header = [h for h in HEADER if h != "W_WEIGHT"]
    rows = [[v for i, v in enumerate(r) if i != 2] for r in DEU_ROWS]
    result = import_wvs([write_survey(tmp_path / "DEU.csv", header, rows)], bank=bank)
    shares = result.shares.set_index(["question", "option"])["share"]
    # Unweighted by hand: Q57 answers 1,2,1,2 → 1/2 each; Q119 answers 1,4,4 → 1/3, 0, 0, 2/3.
    assert shares[("Q57", 1)] == pytest.approx(0.5, abs=1e-15)
    assert shares[("Q119", 1)] == pytest.approx(1 / 3, abs=1e-15)
    assert shares[("Q119", 4)] == pytest.approx(2 / 3, abs=1e-15)
    assert not result.shares["weighted"].any()
    assert result.unweighted == ["DEU"]
    assert any("no W_WEIGHT" in w and "DEU" in w for w in result.warnings)


def test_every_option_of_an_asked_question_has_a_row(tmp_path: Path, bank: QuestionBank) -> None:
    path = write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)
    shares = import_wvs([path], bank=bank).shares
    q119 = shares[shares["question"] == "Q119"]
    assert q119["option"].tolist() == [1, 2, 3, 4]  # 0 ("hard to say") is no option
    assert (q119.loc[q119["option"].isin([2, 3]), "share"] == 0).all()
    assert "Q122" not in set(shares["question"])  # all −4: not asked, no rows


def test_non_substantive_middle_code_is_dropped(tmp_path: Path, bank: QuestionBank) -> None:
    # JPN Q122: 0 (w 1.5), 1 = hard to say (w 0.5, missing), 2 (w 1.0) → 0: 0.6, 2: 0.4, n = 2.
    path = write_survey(tmp_path / "JPN.csv", HEADER, JPN_ROWS)
    shares = import_wvs([path], bank=bank).shares
    q122 = shares[shares["question"] == "Q122"]
    assert q122["option"].tolist() == [0, 2]
    np.testing.assert_allclose(q122["share"], [0.6, 0.4], atol=1e-15)
    assert q122["n"].tolist() == [2, 2]


def test_bank_built_in_code_without_a_codebook(tmp_path: Path) -> None:
    # How other modules' tests build a bank: Question objects only. Q119's 0 stays a non-answer.
    q57 = Question("Q57", "made-up?", ((1, "yes"), (2, "no")), True, "S")
    q119 = Question("Q119", "made-up?", tuple((c, str(c)) for c in range(1, 5)), True, "S")
    bank = QuestionBank(questions={"Q57": q57, "Q119": q119}, sections=["S"])
    path = write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)
    _compare(import_wvs([path], bank=bank).shares, expected_deu())


# ---- file layouts -----------------------------------------------------------------------------

LAYOUTS = {
    "comma_plain": ("DEU.csv", {}),
    "comma_gzip": ("DEU.csv.gz", {"compress": True}),
    "semicolon_bom_quoted_gzip": (
        "DEU_v6.csv.gz",
        {"sep": ";", "bom": True, "quote_header": True, "compress": True},
    ),
    "semicolon_bom_quoted_plain": ("DEU_v6.csv", {"sep": ";", "bom": True, "quote_header": True}),
    "gzip_without_gz_name": ("DEU.csv", {"compress": True}),
    "plain_with_gz_name": ("DEU.csv.gz", {}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_gives_the_same_shares(tmp_path: Path, bank: QuestionBank, layout: str) -> None:
    name, options = LAYOUTS[layout]
    path = write_survey(tmp_path / name, HEADER, DEU_ROWS, **options)  # type: ignore[arg-type]
    _compare(import_wvs([path], bank=bank).shares, expected_deu())


def test_cross_national_file_is_grouped_by_country(tmp_path: Path, bank: QuestionBank) -> None:
    both = write_survey(tmp_path / "all.csv", HEADER, [*JPN_ROWS, *DEU_ROWS])
    together = import_wvs([both], bank=bank)
    apart = import_wvs(
        [
            write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS),
            write_survey(tmp_path / "JPN.csv", HEADER, JPN_ROWS),
        ],
        bank=bank,
    )
    pd.testing.assert_frame_equal(together.shares, apart.shares)
    assert together.respondents == {"DEU": 5, "JPN": 3}
    assert together.shares["country"].drop_duplicates().tolist() == ["DEU", "JPN"]


def test_fifty_item_file_rejects_summary_rows_by_name(tmp_path: Path, bank: QuestionBank) -> None:
    header = ["B_COUNTRY", "B_COUNTRY_ALPHA", "Q57", "Q122"]
    rows: list[list[object]] = [[840, "USA", 1, 0], [840, "USA", 2, 2], [840, "USA", 2, -4]]
    rows += [["Avg", "", 1.6667, -0.6667], ["Avg_First", "", 1.5, 1.0], ["Avg_Last", "", 2.0, -4.0]]
    result = import_wvs([write_survey(tmp_path / "USA.csv.gz", header, rows)], bank=bank)
    warning = next(w for w in result.warnings if "not respondents" in w)
    for label, line in [("'Avg'", 5), ("'Avg_First'", 6), ("'Avg_Last'", 7)]:
        assert f"{label} (line {line})" in warning
    assert result.unweighted == ["USA"]
    assert result.respondents == {"USA": 3}
    shares = result.shares.set_index(["question", "option"])["share"]
    assert shares[("Q57", 1)] == pytest.approx(1 / 3, abs=1e-15)
    assert shares[("Q122", 0)] == pytest.approx(0.5, abs=1e-15)
    assert result.shares.loc[result.shares["question"] == "Q122", "n"].tolist() == [2, 2]


def test_questions_option_restricts_the_import(tmp_path: Path, bank: QuestionBank) -> None:
    path = write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)
    shares = import_wvs([path], bank=bank, questions=["Q57"]).shares
    assert set(shares["question"]) == {"Q57"}


# ---- bad input: one test each -----------------------------------------------------------------


def _error(paths: Sequence[Path], bank: QuestionBank, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as caught:
        import_wvs(paths, bank=bank, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


def test_missing_country_column(tmp_path: Path, bank: QuestionBank) -> None:
    header = [h for h in HEADER if h != "B_COUNTRY_ALPHA"]
    rows = [[v for i, v in enumerate(r) if i != 1] for r in DEU_ROWS]
    path = write_survey(tmp_path / "DEU.csv", header, rows)
    error = _error([path], bank)
    assert error.file == str(path) and error.line == 1
    assert "missing column B_COUNTRY_ALPHA" in str(error)


def test_no_question_columns(tmp_path: Path, bank: QuestionBank) -> None:
    path = write_survey(
        tmp_path / "DEU.csv", ["B_COUNTRY_ALPHA", "W_WEIGHT", "X1"], [["DEU", 1, 2]]
    )
    error = _error([path], bank)
    assert "question columns" in str(error) and str(path) in str(error)


def test_unknown_country_code(tmp_path: Path, bank: QuestionBank) -> None:
    rows = [*DEU_ROWS[:2], [276, "DUE", 1.0, 1, 1, 1, 1]]
    path = write_survey(tmp_path / "DEU.csv", HEADER, rows)
    error = _error([path], bank)
    assert (error.line, error.column) == (4, "B_COUNTRY_ALPHA")
    assert "unknown country code 'DUE'" in str(error) and "did you mean" in str(error)


def test_empty_country_code(tmp_path: Path, bank: QuestionBank) -> None:
    rows = [*DEU_ROWS[:1], [276, "", 1.0, 1, 1, 1, 1]]
    error = _error([write_survey(tmp_path / "DEU.csv", HEADER, rows)], bank)
    assert (error.line, error.column) == (3, "B_COUNTRY_ALPHA")


def test_question_id_not_in_the_codebook(tmp_path: Path, bank: QuestionBank) -> None:
    path = write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)
    error = _error([path], bank, questions=["Q57", "Q999"])
    assert "'Q999' is not in the codebook" in str(error)


def test_empty_question_list(tmp_path: Path, bank: QuestionBank) -> None:
    path = write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)
    assert "no question ids" in str(_error([path], bank, questions=[]))


def test_empty_file(tmp_path: Path, bank: QuestionBank) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert "empty file" in str(_error([path], bank))


def test_header_without_rows(tmp_path: Path, bank: QuestionBank) -> None:
    path = write_survey(tmp_path / "DEU.csv.gz", HEADER, [], compress=True)
    assert "no respondent rows" in str(_error([path], bank))


def test_truncated_gzip(tmp_path: Path, bank: QuestionBank) -> None:
    full = write_survey(tmp_path / "full.csv.gz", HEADER, DEU_ROWS * 50, compress=True)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    error = _error([path], bank)
    assert "truncated or corrupt gzip" in str(error) and str(path) in str(error)


def test_answer_that_is_not_an_integer(tmp_path: Path, bank: QuestionBank) -> None:
    rows = [*DEU_ROWS[:2], [276, "DEU", 1.0, 1.5, 1, 1, 1]]
    error = _error([write_survey(tmp_path / "DEU.csv", HEADER, rows)], bank)
    assert (error.line, error.column) == (4, "Q57") and "not an integer" in str(error)


def test_answer_that_is_text(tmp_path: Path, bank: QuestionBank) -> None:
    rows = [*DEU_ROWS[:1], [276, "DEU", 1.0, "yes", 1, 1, 1]]
    error = _error([write_survey(tmp_path / "DEU.csv", HEADER, rows)], bank)
    assert (error.line, error.column) == (3, "Q57") and "'yes'" in str(error)


def test_code_not_in_the_codebook(tmp_path: Path, bank: QuestionBank) -> None:
    rows = [*DEU_ROWS[:3], [276, "DEU", 1.0, 7, 1, 1, 1]]
    error = _error([write_survey(tmp_path / "DEU.csv", HEADER, rows)], bank)
    assert (error.line, error.column) == (5, "Q57") and "code 7" in str(error)


def test_negative_weight(tmp_path: Path, bank: QuestionBank) -> None:
    rows = [*DEU_ROWS[:1], [276, "DEU", -2.0, 1, 1, 1, 1]]
    error = _error([write_survey(tmp_path / "DEU.csv", HEADER, rows)], bank)
    assert (error.line, error.column) == (3, "W_WEIGHT")


def test_unterminated_quote(tmp_path: Path, bank: QuestionBank) -> None:
    path = tmp_path / "DEU.csv"
    path.write_text('B_COUNTRY_ALPHA,W_WEIGHT,Q57\nDEU,1,1\n"DEU,1,2\nDEU,1,1\n')
    error = _error([path], bank)
    assert "malformed CSV" in str(error) and "EOF inside string" in str(error)


def test_same_country_in_two_files(tmp_path: Path, bank: QuestionBank) -> None:
    first = write_survey(tmp_path / "a.csv", HEADER, DEU_ROWS)
    second = write_survey(tmp_path / "b.csv", HEADER, DEU_ROWS)
    error = _error([first, second], bank)
    assert error.file == str(second) and "DEU" in str(error) and str(first) in str(error)


# ---- reading and writing tables ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_shares_round_trip(tmp_path: Path, bank: QuestionBank, suffix: str) -> None:
    shares = import_wvs([write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)], bank=bank).shares
    out = tmp_path / "out" / f"shares{suffix}"
    write_shares(shares, out)
    pd.testing.assert_frame_equal(read_shares(out), shares)
    assert list(out.parent.iterdir()) == [out]


def test_failed_write_leaves_nothing(
    tmp_path: Path, bank: QuestionBank, monkeypatch: pytest.MonkeyPatch
) -> None:
    shares = import_wvs([write_survey(tmp_path / "DEU.csv", HEADER, DEU_ROWS)], bank=bank).shares
    out_dir = tmp_path / "out"

    def fail(self: pd.DataFrame, path: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"half a table")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail)
    with pytest.raises(OSError, match="disk full"):
        write_shares(shares, out_dir / "shares.parquet")
    assert list(out_dir.iterdir()) == []


def test_read_shares_names_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame({"country": ["DEU"], "question": ["Q57"], "option": [1]}).to_csv(path)
    with pytest.raises(DataError, match="column 'share'"):
        read_shares(path)


# ---- the real data: all 56 microdata files, India v6.0, the three 50-item files ---------------


class RealImport(NamedTuple):
    files: list[Path]
    bank: QuestionBank
    result: ImportResult


@pytest.fixture(scope="module")
def real() -> RealImport:
    files = study_files()  # $CVS_DATA; fails (never skips) when it is missing
    bank = load_question_bank()
    return RealImport(files, bank, import_wvs(files, bank=bank))


def test_real_files_are_all_imported(real: RealImport) -> None:
    files = real.files
    names = {p.name for p in files}
    assert len([p for p in files if p.parent.name == "microdata"]) == 56
    assert {
        "IND_v6.0_semicolon.csv.gz",
        "China_50items_unweighted.csv.gz",
        "United_States_50items_unweighted.csv.gz",
        "Turkey_50items_unweighted.csv.gz",
    } <= names
    result = real.result
    shares = result.shares
    countries = set(shares["country"])
    assert len(countries) == 60
    assert {"NIR", "IND", "USA", "CHN", "TUR", "TWN"} <= countries
    assert not {"FRA", "ITA"} & countries  # missing, never substituted
    assert result.unweighted == ["CHN", "TUR", "USA"]
    microdata = countries - {"CHN", "TUR", "USA", "IND"}
    assert sum(result.respondents[c] for c in microdata) == 72_184
    sums = shares.groupby(["country", "question"])["share"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-12)


def test_real_options_line_up_with_the_bank(real: RealImport) -> None:
    bank = real.bank
    shares = real.result.shares
    for (code, qid), rows in shares.groupby(["country", "question"]):
        assert tuple(rows["option"]) == bank.questions[str(qid)].codes, (code, qid)
    assert (shares["n"] > 0).all()


def _independent_shares(path: Path, qid: str, codes: set[int]) -> tuple[pd.Series, int]:
    """Weighted shares of one question computed straight from the file with pandas."""
    sep = ";" if "semicolon" in path.name else ","
    frame = pd.read_csv(path, sep=sep, encoding="utf-8-sig", low_memory=False)
    if "B_COUNTRY" in frame.columns:
        frame = frame[pd.to_numeric(frame["B_COUNTRY"], errors="coerce").notna()]
    weight = frame["W_WEIGHT"] if "W_WEIGHT" in frame.columns else pd.Series(1.0, frame.index)
    answers = pd.to_numeric(frame[qid]).astype(int)
    valid = answers.isin(codes)
    sums = weight[valid].groupby(answers[valid]).sum()
    return (sums / sums.sum()).reindex(sorted(codes), fill_value=0.0), int(valid.sum())


CHECKS = [
    # (file, country, question, the substantive codes as the issue states them)
    ("microdata/DEU.csv.gz", "DEU", "Q57", {1, 2}),
    ("microdata/NIR.csv.gz", "NIR", "Q254", {1, 2, 3, 4}),
    ("microdata/TWN.csv.gz", "TWN", "Q241", set(range(1, 11))),
    ("microdata/PAK.csv.gz", "PAK", "Q221", {1, 2, 3}),
    ("microdata/NGA.csv.gz", "NGA", "Q111", {1, 2}),
    ("other_releases/IND_v6.0_semicolon.csv.gz", "IND", "Q119", {1, 2, 3, 4}),
    ("other_releases/United_States_50items_unweighted.csv.gz", "USA", "Q122", {0, 2}),
    ("other_releases/China_50items_unweighted.csv.gz", "CHN", "Q27", {1, 2, 3, 4}),
]


@pytest.mark.parametrize("relative,code,qid,codes", CHECKS)
def test_real_shares_match_an_independent_groupby(
    real: RealImport, relative: str, code: str, qid: str, codes: set[int]
) -> None:
    from cvs_families.paths import data_dir

    expected, n = _independent_shares(data_dir() / "wvs7" / relative, qid, codes)
    shares = real.result.shares
    rows = shares[(shares["country"] == code) & (shares["question"] == qid)]
    assert rows["option"].tolist() == expected.index.tolist()
    np.testing.assert_allclose(rows["share"].to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert set(rows["n"]) == {n}


def test_real_import_takes_each_country_from_its_own_file(real: RealImport) -> None:
    # As many countries as files, each file the source of one: a file read as empty, or a
    # country taken from the wrong release, shows here. (Import speed is `make bench`'s.)
    assert sorted(real.result.sources.values()) == sorted(str(p) for p in real.files)
    assert set(real.result.sources) == set(real.result.shares["country"])
    assert set(real.result.respondents) == set(real.result.sources)


def test_study_import_is_redone_when_an_input_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_questionnaire(tmp_path / "data")
    (data / "wvs7" / "microdata").mkdir()
    survey = write_survey(data / "wvs7" / "microdata" / "DEU.csv", HEADER, DEU_ROWS)
    monkeypatch.setenv("CVS_CACHE", str(tmp_path / "cache"))
    imports: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> ImportResult:
        imports.append(1)
        return import_wvs(*args, **kwargs)

    monkeypatch.setattr("cvs_evaluator.wvs.import_wvs", counted)
    first = load_study_import(data)
    again = load_study_import(data)
    assert len(imports) == 1  # the second load read the cache
    pd.testing.assert_frame_equal(again.shares, first.shares)

    write_survey(survey, HEADER, DEU_ROWS[:3])  # two respondents fewer
    changed = load_study_import(data)
    assert len(imports) == 2
    assert (first.respondents, changed.respondents) == ({"DEU": 5}, {"DEU": 3})

    sections = data / "wvs7" / "questionnaire" / "sections.json"
    stat = sections.stat()  # same size, later mtime: still a change
    os.utime(sections, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_study_import(data)
    assert len(imports) == 3


def test_study_import_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVS_CACHE", str(tmp_path / "cache"))
    first = load_study_import()
    cached = list((tmp_path / "cache" / "data").iterdir())
    assert sorted(p.suffix for p in cached) == [".json", ".parquet"]
    monkeypatch.setattr(
        "cvs_evaluator.wvs.import_wvs", lambda *a, **k: pytest.fail("cache not used")
    )
    second = load_study_import()
    pd.testing.assert_frame_equal(first.shares, second.shares)
    assert second.warnings == first.warnings and second.unweighted == ["CHN", "TUR", "USA"]
