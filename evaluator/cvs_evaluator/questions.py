"""The WVS-7 value questions the study asks models, read from the questionnaire files at run time.

The bank is the 239 entries of `question_metadata.json` whose `use_case` is "value". Each gets its
answer options from `codebook.json` (the codebook's codes are the truth: the metadata's scale
min/max disagrees with it for 14 questions), minus missing and non-substantive codes
(`cvs_evaluator.codes`), and its section from `sections.json` by the numeric part of its id
(Q234A → 234). No survey wording lives in this code: texts and labels come from the files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cvs_evaluator.codes import NON_SUBSTANTIVE_CODES, is_missing_code, substantive_codes
from cvs_evaluator.errors import DataError

QUESTIONNAIRE = Path("wvs7") / "questionnaire"
"""Where the questionnaire files lie under the data folder ($CVS_DATA)."""

_QUESTION_ID = re.compile(r"^Q(\d+)([A-Z]?)$")


@dataclass(frozen=True)
class Question:
    """One value question of the WVS-7 questionnaire, as the evaluation asks it."""

    id: str
    """WVS variable name, e.g. "Q57" or "Q234A"."""
    text: str
    """The question in natural language (from question_metadata.json)."""
    options: tuple[tuple[int, str], ...]
    """(WVS code, label) of each substantive answer, in code order; missing codes excluded."""
    ordinal: bool
    """Whether the answer scale is ordered (question_metadata.json's answer_data_type)."""
    section: str
    """Questionnaire section (sections.json), e.g. "SOCIAL CAPITAL, TRUST & …"."""

    @property
    def codes(self) -> tuple[int, ...]:
        """The substantive answer codes, in order."""
        return tuple(code for code, _ in self.options)


@dataclass(frozen=True)
class QuestionBank:
    """The value questions by id, and the questionnaire's sections in order."""

    questions: dict[str, Question]
    """Question id → question, in questionnaire order."""
    sections: list[str]
    """All 13 sections in questionnaire order, including any without value questions."""
    codebook_codes: dict[str, frozenset[int]] = field(default_factory=dict)
    """Question id → every non-negative code the codebook defines (answers and non-answers);
    the importer rejects codes outside it. Empty: no check."""

    def by_section(self) -> dict[str, list[Question]]:
        """Section → its questions, for every section in order (empty lists included)."""
        grouped: dict[str, list[Question]] = {section: [] for section in self.sections}
        for question in self.questions.values():
            grouped.setdefault(question.section, []).append(question)
        return grouped

    def section_of(self) -> dict[str, str]:
        """Question id → section: the plain mapping the metrics take."""
        return {qid: q.section for qid, q in self.questions.items()}


def question_number(question_id: str) -> int:
    """The numeric part of a question id: Q234A → 234. Raises ValueError on other names."""
    match = _QUESTION_ID.match(question_id)
    if match is None:
        raise ValueError(f"{question_id!r} is not a WVS question id like 'Q57' or 'Q234A'")
    return int(match.group(1))


def question_sort_key(question_id: str) -> tuple[int, str]:
    """Questionnaire order: by number, then suffix (Q2 < Q10 < Q234 < Q234A)."""
    match = _QUESTION_ID.match(question_id)
    if match is None:
        return (10**9, question_id)
    return (int(match.group(1)), match.group(2))


def load_question_bank(data_dir: Path | None = None) -> QuestionBank:
    """The bank read from `data_dir/wvs7/questionnaire` (default `$CVS_DATA`).

    Raises `DataError` when a file is missing or malformed, a value question is not in the
    codebook, a question falls in no section, or the non-substantive code table names a code
    the codebook does not define.
    """
    if data_dir is None:
        from cvs_families.paths import data_dir as default_data_dir

        data_dir = default_data_dir()
    return _load_bank(Path(data_dir).resolve() / QUESTIONNAIRE)


@lru_cache(maxsize=4)
def _load_bank(folder: Path) -> QuestionBank:
    metadata_path = folder / "question_metadata.json"
    codebook_path = folder / "codebook.json"
    sections_path = folder / "sections.json"
    metadata = _read_json_object(metadata_path)
    codebook = _read_json_object(codebook_path)
    ranges = _read_sections(sections_path)
    sections = [name for _, _, name in ranges]

    value_ids = [qid for qid, entry in metadata.items() if _field(entry, "use_case") == "value"]
    if not value_ids:
        raise DataError("no entry has use_case 'value'", file=metadata_path)
    questions: dict[str, Question] = {}
    all_codes: dict[str, frozenset[int]] = {}
    for qid in sorted(value_ids, key=question_sort_key):
        entry = metadata[qid]
        if qid not in codebook:
            raise DataError(
                f"question id {qid} (use_case 'value' in {metadata_path.name}) is not in the "
                "codebook",
                file=codebook_path,
            )
        choices = _choices(codebook[qid], qid, codebook_path)
        codes = frozenset(code for code in choices if not is_missing_code(code))
        unknown = NON_SUBSTANTIVE_CODES.get(qid, frozenset()) - codes
        if unknown:
            raise DataError(
                f"the non-substantive code table lists {sorted(unknown)} for {qid}, which the "
                "codebook does not define",
                file=codebook_path,
                column=qid,
            )
        options = tuple((code, choices[code]) for code in substantive_codes(qid, codes))
        if len(options) < 2:
            raise DataError(f"{qid} has fewer than 2 answer options", file=codebook_path)
        try:
            number = question_number(qid)
        except ValueError as exc:
            raise DataError(str(exc), file=metadata_path, column=qid) from None
        section = next((name for lo, hi, name in ranges if lo <= number <= hi), None)
        if section is None:
            raise DataError(
                f"question {qid} (number {number}) falls in no section range", file=sections_path
            )
        text = _field(entry, "question")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{qid} has no question text", file=metadata_path, column=qid)
        questions[qid] = Question(
            id=qid,
            text=text.strip(),
            options=options,
            ordinal=_field(entry, "answer_data_type") == "ordinal",
            section=section,
        )
        all_codes[qid] = codes
    return QuestionBank(questions=questions, sections=sections, codebook_codes=all_codes)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise DataError(f"not valid JSON ({exc})", file=path, line=line) from None
    if not isinstance(data, dict):
        raise DataError("expected a JSON object at the top level", file=path)
    return data


def _field(entry: object, key: str) -> object:
    return entry.get(key) if isinstance(entry, dict) else None


def _read_sections(path: Path) -> list[tuple[int, int, str]]:
    """sections.json's "first-last" → name entries, as (first, last, name) in file order."""
    ranges = []
    for key, name in _read_json_object(path).items():
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", key)
        if match is None or not isinstance(name, str):
            raise DataError("expected entries like '1-45': 'SECTION NAME'", file=path, column=key)
        ranges.append((int(match.group(1)), int(match.group(2)), name.strip()))
    return ranges


def _choices(entry: object, qid: str, path: Path) -> dict[int, str]:
    choices = _field(entry, "choices")
    if not isinstance(choices, dict) or not choices:
        raise DataError(f"{qid} has no answer codes", file=path, column=qid)
    parsed: dict[int, str] = {}
    for code, label in choices.items():
        try:
            parsed[int(code)] = str(label)
        except ValueError:
            raise DataError(
                f"{qid} has a non-integer code {code!r}", file=path, column=qid
            ) from None
    return parsed
