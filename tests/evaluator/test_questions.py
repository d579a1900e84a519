"""The question bank: 239 value questions, options from the codebook, sections, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cvs_evaluator.codes import (
    NON_SUBSTANTIVE_CODES,
    is_missing_code,
    non_substantive_codes,
    substantive_codes,
)
from cvs_evaluator.errors import DataError
from cvs_evaluator.questions import (
    QuestionBank,
    load_question_bank,
    question_number,
    question_sort_key,
)

# The non-answer codes exactly as the issue lists them, restated here so the table is checked
# against the specification rather than against itself.
ISSUE_TABLE = {
    "Q111": {3},
    "Q119": {0},
    **{f"Q{n}": {1} for n in range(122, 130)},
    "Q221": {4},
    "Q222": {4},
    **{f"Q{n}": {0} for n in range(241, 250)},
    "Q254": {5},
}


@pytest.fixture(scope="module")
def bank() -> QuestionBank:
    return load_question_bank()  # $CVS_DATA; fails when it is missing


@pytest.fixture(scope="module")
def questionnaire() -> dict[str, Any]:
    from cvs_families.paths import data_dir

    folder = data_dir() / "wvs7" / "questionnaire"
    return {
        name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("codebook", "question_metadata", "sections")
    }


def test_code_table_is_the_issue_table() -> None:
    assert {q: set(c) for q, c in NON_SUBSTANTIVE_CODES.items()} == ISSUE_TABLE
    assert is_missing_code(-1) and is_missing_code(-5) and not is_missing_code(0)
    assert non_substantive_codes("Q57") == frozenset()
    assert substantive_codes("Q122", [-2, -1, 0, 1, 2]) == [0, 2]


def test_bank_holds_the_239_value_questions(
    bank: QuestionBank, questionnaire: dict[str, Any]
) -> None:
    metadata = questionnaire["question_metadata"]
    value_ids = {q for q, entry in metadata.items() if entry["use_case"] == "value"}
    assert len(value_ids) == 239
    assert set(bank.questions) == value_ids
    assert list(bank.questions) == sorted(value_ids, key=question_sort_key)
    for qid, question in bank.questions.items():
        assert question.id == qid
        assert question.text == metadata[qid]["question"].strip()
        assert question.ordinal == (metadata[qid]["answer_data_type"] == "ordinal")


def test_options_come_from_the_codebook_without_non_answers(
    bank: QuestionBank, questionnaire: dict[str, Any]
) -> None:
    codebook = questionnaire["codebook"]
    for qid, question in bank.questions.items():
        choices = {int(code): label for code, label in codebook[qid]["choices"].items()}
        expected = sorted(c for c in choices if c >= 0 and c not in ISSUE_TABLE.get(qid, set()))
        assert [code for code, _ in question.options] == expected, qid
        assert all(label == choices[code] for code, label in question.options)


def test_option_counts_named_in_the_issue(bank: QuestionBank) -> None:
    assert bank.questions["Q119"].codes == (1, 2, 3, 4)
    assert bank.questions["Q122"].codes == (0, 2)
    assert bank.questions["Q241"].codes == tuple(range(1, 11))
    assert len(bank.questions["Q111"].options) == 2
    assert len(bank.questions["Q221"].options) == 3
    assert len(bank.questions["Q254"].options) == 4


def test_codebook_wins_where_metadata_scale_disagrees(
    bank: QuestionBank, questionnaire: dict[str, Any]
) -> None:
    metadata = questionnaire["question_metadata"]
    codebook = questionnaire["codebook"]
    disagree = []
    for qid in bank.questions:
        codes = sorted(int(c) for c in codebook[qid]["choices"] if int(c) >= 0)
        entry = metadata[qid]
        if (codes[0], codes[-1]) != (entry["answer_scale_min"], entry["answer_scale_max"]):
            disagree.append(qid)
    assert len(disagree) == 14
    # Q119: metadata says 1–5, the codebook 0–4 with 0 = hard to say: options are 1–4.
    assert "Q119" in disagree and bank.questions["Q119"].codes == (1, 2, 3, 4)


def test_sections_in_order_with_the_empty_one(
    bank: QuestionBank, questionnaire: dict[str, Any]
) -> None:
    names = [name.strip() for name in questionnaire["sections"].values()]
    assert bank.sections == names and len(names) == 13
    grouped = bank.by_section()
    assert list(grouped) == names
    empty = [s for s, questions in grouped.items() if not questions]
    assert empty == ["POSTMATERIALIST INDEX"]
    assert sum(len(q) for q in grouped.values()) == 239


def test_section_by_the_numeric_part_of_the_id(
    bank: QuestionBank, questionnaire: dict[str, Any]
) -> None:
    ranges = [
        (int(key.split("-")[0]), int(key.split("-")[1]), name.strip())
        for key, name in questionnaire["sections"].items()
    ]
    for qid, question in bank.questions.items():
        number = int(qid[1:].rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        assert [name for lo, hi, name in ranges if lo <= number <= hi] == [question.section]
    assert bank.questions["Q234A"].section == bank.questions["Q234"].section
    assert question_number("Q234A") == 234
    with pytest.raises(ValueError):
        question_number("Q33_3")


# ---- bad questionnaire files: one test each ---------------------------------------------------


def _write(folder: Path, codebook: dict[str, Any], metadata: dict[str, Any], sections: Any) -> Path:
    target = folder / "wvs7" / "questionnaire"
    target.mkdir(parents=True)
    (target / "codebook.json").write_text(json.dumps(codebook))
    (target / "question_metadata.json").write_text(json.dumps(metadata))
    (target / "sections.json").write_text(json.dumps(sections))
    return folder


def _valid() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    codebook = {"Q1": {"choices": {"1": "a", "2": "b", "-1": "dk"}}}
    metadata = {"Q1": {"question": "made-up?", "use_case": "value", "answer_data_type": "ordinal"}}
    return codebook, metadata, {"1-10": "ONE", "11-20": "TWO"}


def test_fixture_questionnaire_loads(tmp_path: Path) -> None:
    bank = load_question_bank(_write(tmp_path, *_valid()))
    assert bank.sections == ["ONE", "TWO"]
    assert bank.by_section() == {"ONE": [bank.questions["Q1"]], "TWO": []}
    assert bank.questions["Q1"].options == ((1, "a"), (2, "b"))


def test_value_question_not_in_the_codebook(tmp_path: Path) -> None:
    codebook, metadata, sections = _valid()
    metadata["Q7"] = dict(metadata["Q1"])
    with pytest.raises(DataError, match=r"codebook\.json: question id Q7 .* not in the codebook"):
        load_question_bank(_write(tmp_path, codebook, metadata, sections))


def test_question_outside_every_section(tmp_path: Path) -> None:
    codebook, metadata, _ = _valid()
    with pytest.raises(DataError, match=r"sections\.json: question Q1 .* no section"):
        load_question_bank(_write(tmp_path, codebook, metadata, {"50-60": "OTHER"}))


def test_code_table_entry_the_codebook_lacks(tmp_path: Path) -> None:
    codebook, metadata, sections = _valid()
    codebook["Q111"] = {"choices": {"1": "a", "2": "b"}}  # the table's Q111 code 3 is absent
    metadata["Q111"] = dict(metadata["Q1"])
    sections["100-120"] = "ECON"
    with pytest.raises(DataError, match=r"column 'Q111'.*\[3\]"):
        load_question_bank(_write(tmp_path, codebook, metadata, sections))


def test_missing_questionnaire_file(tmp_path: Path) -> None:
    folder = _write(tmp_path, *_valid())
    (folder / "wvs7" / "questionnaire" / "sections.json").unlink()
    with pytest.raises(DataError, match=r"sections\.json: file not found"):
        load_question_bank(folder)


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    folder = _write(tmp_path, *_valid())
    (folder / "wvs7" / "questionnaire" / "codebook.json").write_text('{\n"Q1": {,\n}')
    with pytest.raises(DataError, match=r"codebook\.json: line 2: not valid JSON"):
        load_question_bank(folder)
