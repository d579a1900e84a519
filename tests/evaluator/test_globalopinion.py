"""GlobalOpinionQA's CSV: WVS rows only, names → ISO3, 1-based options, each malformed input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cvs_evaluator.errors import DataError
from cvs_evaluator.globalopinion import OUTPUT_COLUMNS, load_globalopinion


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
