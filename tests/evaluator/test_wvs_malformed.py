"""The WVS importer refuses malformed rows and implausible weights, naming file, line and column.

Each case of the user's report (issue 15) is reproduced here: a row of 3 fields, a row cut at
field 300 of 607, a row with extra fields, and weights of 1e308, NaN, inf, 0 and −1, on small
fixtures and on a real WVS-7 file copied to a temporary folder. pandas alone would import most
of them: it pads a short row with empty cells and, reading some columns, drops a long row's
extra fields; a few tests show that, so they show why the importer counts fields itself.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cvs_evaluator.cli_data import main
from cvs_evaluator.csv_rows import row_lines
from cvs_evaluator.errors import DataError
from cvs_evaluator.questions import QuestionBank, load_question_bank
from cvs_evaluator.wvs import import_wvs, read_shares


def _load_fixtures() -> ModuleType:
    """test_wvs.py's fixture builders (test modules are not importable by name)."""
    name = "wvs_fixtures_for_malformed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_wvs.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fixtures = _load_fixtures()
HEADER: list[str] = fixtures.HEADER  # B_COUNTRY, B_COUNTRY_ALPHA, W_WEIGHT, Q57, Q119, Q122, Q999
DEU_ROWS: list[list[object]] = fixtures.DEU_ROWS


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> QuestionBank:
    return load_question_bank(fixtures.write_questionnaire(tmp_path_factory.mktemp("data")))


def _write_lines(path: Path, lines: Sequence[str], *, end: str = "\n") -> Path:
    path.write_text("".join(line + end for line in lines), encoding="utf-8")
    return path


def _deu_lines() -> list[str]:
    return [",".join(HEADER), *(",".join(map(str, row)) for row in DEU_ROWS)]


def _error(paths: Sequence[Path], bank: QuestionBank, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as caught:
        import_wvs(paths, bank=bank, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
    assert caught.value.file == str(paths[-1]) and str(paths[-1]) in str(caught.value)
    return caught.value


# ---- field counts -----------------------------------------------------------------------------


def test_row_of_three_fields(tmp_path: Path, bank: QuestionBank) -> None:
    lines = _deu_lines()
    lines[3] = "276,DEU,2.0"  # line 4: 3 of 7 fields
    path = _write_lines(tmp_path / "DEU.csv", lines)
    error = _error([path], bank)
    assert (error.line, error.column) == (4, "Q57")  # Q57 is column #4, the first one missing
    assert "3 fields" in str(error) and "has 7" in str(error) and "#4 of 7" in str(error)
    assert "line 4, column 'Q57'" in str(error)
    # What pandas alone makes of it: a respondent with empty answers, no word said.
    padded = pd.read_csv(path, usecols=HEADER)
    assert len(padded) == 5 and padded.loc[2, ["Q57", "Q119", "Q122"]].isna().all()


def test_row_cut_at_field_300_of_607(tmp_path: Path, bank: QuestionBank) -> None:
    header = [
        *HEADER[:3],
        *(f"X{i}" for i in range(4, 451)),
        "Q57",
        *(f"Y{i}" for i in range(452, 608)),
    ]
    assert len(header) == 607 and header.index("Q57") == 450
    row = ["276", "DEU", "1.0", *["7"] * 447, "2", *["7"] * 156]
    lines = [",".join(header), *[",".join(row)] * 4]
    lines[3] = ",".join(row[:299]) + ",7"  # line 4 ends in field 300 ("7", itself cut short?)
    path = _write_lines(tmp_path / "DEU.csv", lines)
    error = _error([path], bank)
    assert (error.line, error.column) == (4, "X301")
    assert "300 fields" in str(error) and "607" in str(error) and "#301 of 607" in str(error)
    assert pd.read_csv(path, usecols=["B_COUNTRY_ALPHA", "Q57"])["Q57"].isna().sum() == 1


def test_row_with_an_extra_field(tmp_path: Path, bank: QuestionBank) -> None:
    lines = _deu_lines()
    lines[4] += ",3"  # line 5: 8 of 7 fields
    path = _write_lines(tmp_path / "DEU.csv", lines)
    error = _error([path], bank)
    assert error.line == 5
    assert "8 fields" in str(error) and "field #8" in str(error) and "'Q999' (#7)" in str(error)
    # pandas reading some columns drops the extra field and counts the row as a respondent.
    assert len(pd.read_csv(path, usecols=["B_COUNTRY_ALPHA", "Q57"])) == 5


def test_first_row_with_an_extra_field(tmp_path: Path, bank: QuestionBank) -> None:
    lines = _deu_lines()
    lines[1] += ",3"  # line 2: 8 of 7 fields
    path = _write_lines(tmp_path / "DEU.csv", lines)
    error = _error([path], bank)
    assert error.line == 2 and "8 fields" in str(error) and "field #8" in str(error)
    # pandas takes the first field for an index and shifts the row: its Q57 is Q119's answer.
    assert pd.read_csv(path)["Q57"].iloc[0] == DEU_ROWS[0][4]


def test_blank_lines_are_no_rows(tmp_path: Path, bank: QuestionBank) -> None:
    lines = _deu_lines()
    path = _write_lines(tmp_path / "DEU.csv", [*lines[:3], "", *lines[3:], ""])
    fixtures._compare(import_wvs([path], bank=bank).shares, fixtures.expected_deu())


def test_line_numbers_count_line_breaks_inside_quotes(tmp_path: Path, bank: QuestionBank) -> None:
    header = [*HEADER, "TOWN"]
    lines = [",".join(header)]
    lines += [",".join(map(str, row)) + ',"Mitte,\nBerlin"' for row in DEU_ROWS[:2]]
    lines += ["276,DEU,1.0,7,1,1,1,Bonn"]  # a code Q57 lacks, on line 6 (rows 2 and 3 span two)
    path = _write_lines(tmp_path / "DEU.csv", lines)
    np.testing.assert_array_equal(row_lines(path, gzipped=False, separator=","), [2, 4, 6])
    error = _error([path], bank)
    assert (error.line, error.column) == (6, "Q57") and "code 7" in str(error)


def test_quoted_delimiters_import_exactly(tmp_path: Path, bank: QuestionBank) -> None:
    header = ";".join(f'"{name}"' for name in [*HEADER, "TOWN"])
    rows = [";".join(map(str, row)) + ';"Mitte; Berlin"' for row in DEU_ROWS]
    path = _write_lines(tmp_path / "DEU.csv", [header, *rows])
    fixtures._compare(import_wvs([path], bank=bank).shares, fixtures.expected_deu())


def test_unclosed_quote_names_the_line_it_opens_on(tmp_path: Path, bank: QuestionBank) -> None:
    lines = [*_deu_lines(), '276,DEU,1.0,1,1,1,"3']
    error = _error([_write_lines(tmp_path / "DEU.csv", lines)], bank)
    assert error.line == 7 and "EOF inside string" in str(error)


def test_text_after_a_closing_quote(tmp_path: Path, bank: QuestionBank) -> None:
    lines = _deu_lines()
    lines[2] = '276,"DEU"x,2.0,2,1,-4,3'
    error = _error([_write_lines(tmp_path / "DEU.csv", lines)], bank)
    assert error.line == 3 and "malformed CSV" in str(error)


def test_byte_that_is_not_utf8_names_its_line(tmp_path: Path, bank: QuestionBank) -> None:
    path = _write_lines(tmp_path / "DEU.csv", _deu_lines())
    data = path.read_bytes().split(b"\n")
    data[3] = data[3].replace(b"DEU", b"D\xffU")
    path.write_bytes(b"\n".join(data))
    error = _error([path], bank)
    assert error.line == 4 and "not UTF-8" in str(error)


@pytest.mark.parametrize("compress", [False, True])
def test_file_cut_in_its_last_field(tmp_path: Path, bank: QuestionBank, compress: bool) -> None:
    # The last row keeps its 7 fields, but its Q999 "3" lost… nothing visible: only the missing
    # line break says the file was cut. Cut in Q119 instead and a share would silently change.
    text = "\n".join(_deu_lines())  # no line break after line 6
    path = tmp_path / "DEU.csv"
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    error = _error([path], bank)
    assert error.line == 6 and "no line break" in str(error)


# ---- weights ----------------------------------------------------------------------------------

BAD_WEIGHTS = {  # the cell → how the error shows it and what it says
    "1e308": "weight 1e+308 is more than 100×",  # one respondent would be the whole country
    "nan": "weight empty or NaN is not a finite number > 0",
    "": "weight empty or NaN is not a finite number > 0",
    "inf": "weight 'inf' is not a finite number > 0",
    "-inf": "weight '-inf' is not a finite number > 0",
    "0": "weight 0 is not a finite number > 0",
    "-1": "weight -1 is not a finite number > 0",
    "-0.5": "weight -0.5 is not a finite number > 0",
    "heavy": "weight 'heavy' is not a finite number > 0",
}


@pytest.mark.parametrize("weight", sorted(BAD_WEIGHTS))
def test_bad_weight(tmp_path: Path, bank: QuestionBank, weight: str) -> None:
    lines = _deu_lines()
    lines[3] = f"276,DEU,{weight},1,4,-4,3"  # line 4
    error = _error([_write_lines(tmp_path / "DEU.csv", lines)], bank)
    assert (error.line, error.column) == (4, "W_WEIGHT") and "column #3 of 7" in str(error)
    assert BAD_WEIGHTS[weight] in str(error)


def _deu_with_first_weight(weight: float) -> list[str]:
    # DEU_ROWS' other weights are 2, 3, 0.5, 4: with this one ≥ 3 the file's median is 3.
    lines = _deu_lines()
    lines[1] = f"276,DEU,{weight},1,0,-4,3"
    return lines


def test_weight_above_100x_the_median_is_refused(tmp_path: Path, bank: QuestionBank) -> None:
    path = _write_lines(tmp_path / "DEU.csv", _deu_with_first_weight(301))
    error = _error([path], bank)
    assert (error.line, error.column) == (2, "W_WEIGHT")
    for part in ("301", "100×", "median weight 3", "--max-weight-ratio"):
        assert part in str(error)


def test_weight_of_exactly_100x_the_median_is_kept(tmp_path: Path, bank: QuestionBank) -> None:
    path = _write_lines(tmp_path / "DEU.csv", _deu_with_first_weight(300))
    assert import_wvs([path], bank=bank).respondents == {"DEU": 5}


def expected_with_first_weight_301() -> pd.DataFrame:
    """By hand, as `expected_deu` with the first weight 301: Q57 answers 1, 2, 1, (−1), 2 with
    weights 301, 2, 3, (0.5), 4 → total 310: code 1 = 304/310, code 2 = 6/310. Q119: the first
    answer is 0 (hard to say, missing), so Q119 is unchanged: 2/5.5, 0, 0, 3.5/5.5."""
    expected = fixtures.expected_deu()
    expected.loc[0:1, "share"] = [304 / 310, 6 / 310]
    return expected


def test_max_weight_ratio_changes_the_outcome(tmp_path: Path, bank: QuestionBank) -> None:
    path = _write_lines(tmp_path / "DEU.csv", _deu_with_first_weight(301))
    _error([path], bank, max_weight_ratio=100)
    result = import_wvs([path], bank=bank, max_weight_ratio=101)  # 101 × 3 = 303 ≥ 301
    fixtures._compare(result.shares, expected_with_first_weight_301())


@pytest.mark.parametrize("ratio", [0.5, 0.0, -3.0, math.nan])
def test_max_weight_ratio_below_one_is_a_programming_error(
    tmp_path: Path, bank: QuestionBank, ratio: float
) -> None:
    path = _write_lines(tmp_path / "DEU.csv", _deu_lines())
    with pytest.raises(ValueError, match="max_weight_ratio"):
        import_wvs([path], bank=bank, max_weight_ratio=ratio)


# ---- the user's report, on a real WVS-7 file (copied to tmp_path, never into the repository) ---


@pytest.fixture(scope="module")
def real_lines() -> list[str]:
    from cvs_families.paths import data_dir

    source = data_dir() / "wvs7" / "microdata" / "NIR.csv.gz"  # 447 respondents, 607 columns
    return gzip.decompress(source.read_bytes()).decode("utf-8").splitlines()


def _real_damaged(tmp_path: Path, lines: list[str], line: int, text: str) -> Path:
    damaged = list(lines)
    damaged[line - 1] = text
    path = tmp_path / "NIR_damaged.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(damaged) + "\n").encode()))
    return path


def test_real_file_row_cut_at_field_300(tmp_path: Path, real_lines: list[str]) -> None:
    header = real_lines[0].split(",")
    assert len(header) == 607 and '"' not in real_lines[9]
    cut = ",".join(real_lines[9].split(",")[:300])
    path = _real_damaged(tmp_path, real_lines, 10, cut)
    error = _error([path], load_question_bank())
    assert (error.line, error.column) == (10, header[300]) and "300 fields" in str(error)


def test_real_file_row_of_three_fields_and_row_with_extras(
    tmp_path: Path, real_lines: list[str]
) -> None:
    bank = load_question_bank()
    short = _real_damaged(tmp_path, real_lines, 20, ",".join(real_lines[19].split(",")[:3]))
    assert _error([short], bank).line == 20
    long = _real_damaged(tmp_path, real_lines, 30, real_lines[29] + ",1,2")
    error = _error([long], bank)
    assert error.line == 30 and "609 fields" in str(error) and "#608–#609" in str(error)


def test_real_file_weight_1e308(tmp_path: Path, real_lines: list[str]) -> None:
    bank = load_question_bank()
    header = real_lines[0].split(",")
    fields = real_lines[9].split(",")
    fields[header.index("W_WEIGHT")] = "1e308"
    path = _real_damaged(tmp_path, real_lines, 10, ",".join(fields))
    error = _error([path], bank)
    assert (error.line, error.column) == (10, "W_WEIGHT") and "1e+308" in str(error)
    # What the check prevents: with no limit that respondent becomes the whole country.
    shares = import_wvs([path], bank=bank, max_weight_ratio=math.inf).shares
    answer = int(fields[header.index("Q57")])
    q57 = shares[shares["question"] == "Q57"].set_index("option")["share"]
    assert q57[answer] == pytest.approx(1.0, abs=1e-12)


# ---- cvs-data import-wvs ----------------------------------------------------------------------


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_refuses_a_short_row_in_one_line(tmp_path: Path) -> None:
    lines = _deu_lines()
    lines[3] = "276,DEU,2.0"
    path = _write_lines(tmp_path / "DEU.csv", lines)
    out = tmp_path / "out" / "s.csv"
    code, output = _run("import-wvs", str(path), "--out", str(out), "--no-progress")
    assert code == 1 and output.startswith(f"Error: {path}: line 4, column 'Q57': ")
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert not out.parent.exists()


def test_cli_max_weight_ratio_changes_the_outcome(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "DEU.csv", _deu_with_first_weight(301))
    out = tmp_path / "s.csv"
    code, output = _run("import-wvs", str(path), "--out", str(out), "--no-progress")
    assert code == 1 and f"{path}: line 2, column 'W_WEIGHT'" in output and "100×" in output
    assert not out.exists()
    code, output = _run(
        "import-wvs", str(path), "--out", str(out), "--no-progress", "--max-weight-ratio", "101"
    )
    assert code == 0, output
    table = read_shares(out)
    deu = table[table["question"].isin(["Q57", "Q119"])].reset_index(drop=True)
    expected = expected_with_first_weight_301()
    np.testing.assert_allclose(deu["share"], expected["share"], rtol=0, atol=1e-15)


def test_help_states_the_weight_rule() -> None:
    code, output = _run("import-wvs", "--help")
    assert code == 0 and "--max-weight-ratio" in output and "median" in output


# Every cvs-data option that takes a value, with values a user could get wrong. A new option
# fails `test_every_option_has_bad_values` until it is added here.
BAD_VALUES: dict[tuple[str, str], list[str]] = {
    ("import-wvs", "--out"): ["shares.xlsx", "{file}/shares.csv"],
    ("import-wvs", "--question"): ["Q999"],
    ("import-wvs", "--max-weight-ratio"): ["0.5", "nan", "lots", "-inf"],
    ("show", "--shares"): ["{missing}", "{file}"],
    ("baselines", "--shares"): ["{missing}", "{file}"],
    ("baselines", "--country"): ["XYZ"],
}


def test_every_option_has_bad_values() -> None:
    assert isinstance(main, click.Group)
    options = {
        (name, option)
        for name, command in main.commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not param.is_flag
        for option in param.opts
        if option.startswith("--")
    }
    assert options == set(BAD_VALUES)


@pytest.mark.parametrize(
    "command,option,value",
    [(c, o, v) for (c, o), values in BAD_VALUES.items() for v in values],
)
def test_a_bad_option_value_is_one_line_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, option: str, value: str
) -> None:
    for work in ("import_wvs", "load_study_import"):  # a bad value is refused before the work
        monkeypatch.setattr(f"cvs_evaluator.wvs.{work}", lambda *a, **k: pytest.fail("work"))
    source = _write_lines(tmp_path / "DEU.csv", _deu_lines())
    value = value.format(file=source, missing=tmp_path / "missing.parquet")
    out = tmp_path / "s.csv"
    args = [command, option, value]
    if command == "import-wvs":
        args += [str(source), "--no-progress"] + ([] if option == "--out" else ["--out", str(out)])
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], result.output
    assert "Traceback" not in result.output
    assert sorted(tmp_path.iterdir()) == [source]  # nothing written


def test_unwritable_out_is_refused_before_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        pytest.skip("runs as root, who can write in a read-only folder")
    source = _write_lines(tmp_path / "DEU.csv", _deu_lines())
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setattr("cvs_evaluator.wvs.import_wvs", lambda *a, **k: pytest.fail("imported"))
    code, output = _run("import-wvs", str(source), "--out", str(locked / "sub" / "s.csv"))
    assert code == 2 and f"Invalid value for --out: can't write in {locked}" in output


def test_out_under_a_file_is_refused_before_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _write_lines(tmp_path / "DEU.csv", _deu_lines())
    monkeypatch.setattr("cvs_evaluator.wvs.import_wvs", lambda *a, **k: pytest.fail("imported"))
    code, output = _run("import-wvs", str(source), "--out", str(source / "s.csv"))
    assert code == 2 and f"--out: {source} is a file, not a folder" in output
