"""GlobalOpinionQA's CSV: WVS rows only, names → ISO3, 1-based options, each malformed input;
and as a human source: questions and options mapped to WVS ids and codes by text, the rest reported.

`fixtures/goqa_wvs.csv` is written by hand in the dataset's format, with question texts and labels
from $CVS_DATA's question_metadata.json / codebook.json and made-up fractions (no WVS data). Its
data rows, 1-based:
 1 Q1, reformatted (case, curly quotes, spaces, comma); Germany, Nigeria, Taiwan ROC, Atlantis
 2 Q2, source GAS (ignored, with a country no table knows)
 3 Q57, labels in reverse code order; Germany, Great Britain
 4 Q101's text, which Q102 shares: ambiguous
 5 a made-up question
 6 Q46 with "Fairly happy" for the bank's "Quite happy"
 7 Q150; Germany has 3 fractions for 2 options
 8 Q254 with an extra "Don't know" option
 9 Q199 with "Don't know"; Germany's whole mass on it
10 Q57 lower-cased, code order: Great Britain agrees with row 3, Germany conflicts, Nigeria new
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvs_evaluator.errors import DataError
from cvs_evaluator.globalopinion import (
    OUTPUT_COLUMNS,
    GoqaReport,
    load_globalopinion,
    load_goqa_shares,
    normalise_text,
)
from cvs_evaluator.metrics import check_human_shares
from cvs_evaluator.questions import QuestionBank, load_question_bank
from cvs_evaluator.wvs import SHARE_COLUMNS

FIXTURE = Path(__file__).parent / "fixtures" / "goqa_wvs.csv"


def _selections(fractions: dict[str, list[float]]) -> str:
    """The `selections` cell as the dataset writes it: the repr of a defaultdict."""
    return f"defaultdict(<class 'list'>, {fractions!r})"


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows, columns=["question", "selections", "options", "source"]).to_csv(
        path, index=False
    )
    return path


def _rows() -> list[dict[str, str]]:
    return [
        {
            "question": "Made-up question one?",
            "selections": _selections(
                {"Great Britain": [0.25, 0.75], "Taiwan ROC": [0.5, 0.5], "Atlantis": [0.2, 0.6]}
            ),
            "options": "['Yes', 'No']",
            "source": "WVS",
        },
        {
            "question": "A Pew question?",
            "selections": _selections({"Germany": [1.0, 0.0]}),
            "options": "['A', 'B']",
            "source": "GAS",
        },
        {
            "question": "Made-up question two,\nwith a line break?",
            "selections": _selections({"Nigeria": [1, 1, 2]}),
            "options": "['Low', 'Middle', \"Don't know\"]",
            "source": "WVS",
        },
    ]


def test_wvs_rows_in_long_format(tmp_path: Path) -> None:
    table = load_globalopinion(_write(tmp_path / "goqa.csv", _rows()))
    assert list(table.columns) == list(OUTPUT_COLUMNS)
    assert "A Pew question?" not in set(table["question"])  # GAS rows dropped
    gbr = table[table["country"] == "GBR"]
    assert gbr["option"].tolist() == [1, 2]
    assert gbr["option_label"].tolist() == ["Yes", "No"]
    assert gbr["share"].tolist() == [0.25, 0.75]
    assert set(gbr["item"]) == {1}
    nga = table[table["country"] == "NGA"]
    # Fractions 1, 1, 2 are renormalised: 1/4, 1/4, 1/2.
    assert nga["share"].tolist() == [0.25, 0.25, 0.5]
    assert nga["option_label"].tolist() == ["Low", "Middle", "Don't know"]
    assert set(nga["item"]) == {3}
    assert set(table.loc[table["country"] == "TWN", "country_name"]) == {"Taiwan ROC"}
    assert table["n"].isna().all() and table["weighted"].isna().all()


def test_unknown_names_are_kept_and_listed(tmp_path: Path) -> None:
    table = load_globalopinion(_write(tmp_path / "goqa.csv", _rows()))
    assert table.attrs["unmapped_countries"] == ["Atlantis"]
    assert table.loc[table["country_name"] == "Atlantis", "country"].tolist() == ["Atlantis"] * 2


def test_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "goqa.csv"
    pd.DataFrame({"question": ["q"], "selections": ["{}"], "source": ["WVS"]}).to_csv(path)
    with pytest.raises(DataError, match=r"goqa\.csv: column 'options': missing column"):
        load_globalopinion(path)


def test_malformed_selections(tmp_path: Path) -> None:
    rows = _rows()
    rows[2]["selections"] = "defaultdict(<class 'list'>, {'Nigeria': [0.5, "
    with pytest.raises(DataError, match=r"row 3, column 'selections'"):
        load_globalopinion(_write(tmp_path / "goqa.csv", rows))


def test_fraction_count_differs_from_options(tmp_path: Path) -> None:
    rows = _rows()
    rows[0]["options"] = "['Yes', 'No', 'Maybe']"
    with pytest.raises(DataError, match=r"row 1, column 'selections'.*2 fractions for 3 options"):
        load_globalopinion(_write(tmp_path / "goqa.csv", rows))


def test_negative_fraction(tmp_path: Path) -> None:
    rows = _rows()
    rows[2]["selections"] = _selections({"Nigeria": [1, -1, 2]})
    with pytest.raises(DataError, match=r"row 3.*fractions ≥ 0"):
        load_globalopinion(_write(tmp_path / "goqa.csv", rows))


def test_options_not_a_list(tmp_path: Path) -> None:
    rows = _rows()
    rows[0]["options"] = "Yes, No"
    with pytest.raises(DataError, match=r"row 1, column 'options'"):
        load_globalopinion(_write(tmp_path / "goqa.csv", rows))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "goqa.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_globalopinion(path)


@pytest.fixture(scope="module")
def bank() -> QuestionBank:
    return load_question_bank()  # $CVS_DATA; fails when it is missing


def _fixture_rows() -> list[dict[str, str]]:
    table = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    return [{str(k): str(v) for k, v in row.items()} for row in table.to_dict("records")]


def test_fixture_texts_and_labels_are_the_banks(bank: QuestionBank) -> None:
    """The hand mapping below rests on these: fixture text and bank text, labels and codes."""
    rows = _fixture_rows()
    for row, qid in [(2, "Q2"), (3, "Q57"), (4, "Q101"), (6, "Q46"), (7, "Q150"), (8, "Q254")]:
        assert rows[row - 1]["question"] == bank.questions[qid].text
    assert rows[0]["question"] != bank.questions["Q1"].text  # reformatted, still Q1
    assert bank.questions["Q101"].text == bank.questions["Q102"].text
    assert bank.questions["Q1"].options == (
        (1, "Very important"),
        (2, "Rather important"),
        (3, "Not very important"),
        (4, "Not at all important"),
    )
    assert bank.questions["Q57"].options == (
        (1, "Most people can be trusted"),
        (2, "Need to be very careful"),
    )
    assert bank.questions["Q150"].options == ((1, "Freedom"), (2, "Security"))
    assert [label for _, label in bank.questions["Q254"].options] == [
        "Very proud",
        "Quite proud",
        "Not very proud",
        "Not at all proud",
    ]
    assert bank.questions["Q199"].codes == (1, 2, 3, 4)
    assert (2, "Quite happy") in bank.questions["Q46"].options


def _expected() -> pd.DataFrame:
    """The fixture's fractions mapped by hand to (ISO3, WVS id, WVS code), renormalised where a
    "Don't know" option took mass, in the order `load_study_shares` sorts."""
    rows: list[tuple[str, str, list[float]]] = [
        ("DEU", "Q1", [0.5, 0.3, 0.15, 0.05]),
        ("DEU", "Q254", [0.2 / 0.9, 0.4 / 0.9, 0.2 / 0.9, 0.1 / 0.9]),
        ("GBR", "Q57", [0.3, 0.7]),  # row 3 lists "careful" (code 2) first
        ("NGA", "Q1", [0.7, 0.2, 0.06, 0.04]),
        ("NGA", "Q57", [0.2, 0.8]),
        ("NGA", "Q150", [0.45, 0.55]),
        ("NGA", "Q199", [0.1, 0.2, 0.3, 0.4]),
        ("NGA", "Q254", [0.6 / 0.95, 0.2 / 0.95, 0.1 / 0.95, 0.05 / 0.95]),
        ("TWN", "Q1", [0.4, 0.4, 0.1, 0.1]),
    ]
    records = [
        (country, question, code, share)
        for country, question, shares in rows
        for code, share in enumerate(shares, start=1)
    ]
    return pd.DataFrame.from_records(records, columns=["country", "question", "option", "share"])


def test_goqa_shares_equal_the_hand_mapping(bank: QuestionBank) -> None:
    shares = load_goqa_shares(FIXTURE, bank).shares
    expected = _expected()
    assert list(shares.columns) == list(SHARE_COLUMNS)
    keys = ["country", "question", "option"]
    assert shares[keys].values.tolist() == expected[keys].values.tolist()
    np.testing.assert_allclose(shares["share"], expected["share"], rtol=0, atol=1e-12)
    assert shares["n"].isna().all() and shares["weighted"].isna().all()
    check_human_shares(shares)


def test_goqa_report_lists_what_did_not_match(bank: QuestionBank) -> None:
    loaded = load_goqa_shares(FIXTURE, bank)
    assert loaded.wvs_rows == 9
    assert loaded.report == GoqaReport(
        unmatched_questions=[(5, "How often do you eat breakfast with your neighbours?")],
        ambiguous_questions=[(4, bank.questions["Q101"].text, ("Q101", "Q102"))],
        unmatched_options=[("Q46", "Fairly happy"), ("Q199", "Don't know"), ("Q254", "Don't know")],
        ambiguous_options=[],
        missing_options=[(6, "Q46", (2,))],
        unknown_countries=["Atlantis"],
        length_mismatches=[(7, "Germany", 3, 2)],
        no_answers=[(9, "DEU")],
        duplicates=[("DEU", "Q57", (3, 10), True), ("GBR", "Q57", (3, 10), False)],
    )


def test_goqa_non_wvs_rows_are_ignored(bank: QuestionBank) -> None:
    loaded = load_goqa_shares(FIXTURE, bank)
    assert "Q2" not in set(loaded.shares["question"])  # row 2 matches Q2 but is GAS
    assert "Narnia" not in loaded.report.unknown_countries


def test_goqa_describe_gives_one_line_per_category(bank: QuestionBank) -> None:
    lines = load_goqa_shares(FIXTURE, bank).describe()
    assert len(lines) == 1 + 9
    assert lines[0].endswith("9 WVS rows → 5 questions × 4 countries (30 shares)")
    assert "unknown countries (left out): 1 ('Atlantis')" in lines
    assert "labels naming an option twice (row left out): none" in lines
    assert "rows lacking options (left out): 1 (row 6 Q46 codes 2)" in lines
    assert (
        "country × question in several rows: 2 (DEU Q57 rows 3, 10 conflict (left out); "
        "GBR Q57 rows 3, 10 agree (kept once))"
    ) in lines


def _write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows, columns=["question", "selections", "options", "source"]).to_csv(
        path, index=False
    )
    return path


@pytest.mark.parametrize(
    ("column", "cell"),
    [
        ("selections", "defaultdict(<class 'list'>, {'Nigeria': [0.5, "),
        ("selections", "defaultdict(<class 'list'>, {'Nigeria': ['a lot', 0.5]})"),
        ("options", "Freedom, Security"),
        ("options", "[]"),
    ],
)
def test_goqa_malformed_cell_names_file_and_row(
    tmp_path: Path, bank: QuestionBank, column: str, cell: str
) -> None:
    rows = _fixture_rows()
    rows[6][column] = cell
    path = _write_rows(tmp_path / "goqa.csv", rows)
    with pytest.raises(DataError, match=rf"goqa\.csv: row 7, column '{column}'"):
        load_goqa_shares(path, bank)


def test_goqa_two_labels_for_one_option_leave_the_row_out(
    tmp_path: Path, bank: QuestionBank
) -> None:
    rows = _fixture_rows()
    rows[6]["options"] = "['Freedom', 'FREEDOM.']"
    rows[6]["selections"] = "defaultdict(<class 'list'>, {'Nigeria': [0.5, 0.5]})"
    loaded = load_goqa_shares(_write_rows(tmp_path / "goqa.csv", rows), bank)
    assert loaded.report.ambiguous_options == [(7, "Q150", "FREEDOM.")]
    assert "Q150" not in set(loaded.shares["question"])


def test_goqa_nothing_matched_gives_an_empty_typed_table(
    tmp_path: Path, bank: QuestionBank
) -> None:
    rows = [_fixture_rows()[4]]  # the made-up question only
    loaded = load_goqa_shares(_write_rows(tmp_path / "goqa.csv", rows), bank)
    assert loaded.shares.empty and list(loaded.shares.columns) == list(SHARE_COLUMNS)
    assert loaded.shares["option"].dtype == np.int64
    assert loaded.shares["share"].dtype == np.float64
    assert len(loaded.report.unmatched_questions) == 1


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Don’t  KNOW.", "don t know"),
        ("Don't know", "don t know"),
        (
            "  On a scale of 1 to 4, 1 meaning ‘Very important’ ",
            "on a scale of 1 to 4 1 meaning very important",
        ),
        ("Ｆｕｌｌ‐width\tand\nbreaks", "full width and breaks"),
        ('"Quoted" «label» `tick`', "quoted label tick"),
        ("Straße", "strasse"),
    ],
)
def test_normalise_text(text: str, normalised: str) -> None:
    assert normalise_text(text) == normalised
