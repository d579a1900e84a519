"""Which WVS answer codes are answers: the single table of missing and non-substantive codes.

WVS-7 codes every kind of missing value as a negative number (−1 don't know, −2 no answer,
−3 not applicable, −4 not asked, −5 missing), and a few questions also carry non-negative codes
that are not answers to the question asked: a volunteered "Hard to say", a spontaneous "against
democracy", "not allowed to vote". Both kinds are missing values here: they never become an
option of a question, and respondents who gave them are not counted in `n`.

The table below is the only place such codes are listed; the question bank checks each entry
against the codebook when it loads, so a typo here fails loudly instead of shifting shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final


def _ids(first: int, last: int) -> list[str]:
    """Question ids Q{first}…Q{last}, inclusive."""
    return [f"Q{number}" for number in range(first, last + 1)]


def _table(entries: Iterable[tuple[list[str], int, str]]) -> Mapping[str, frozenset[int]]:
    table: dict[str, set[int]] = {}
    for questions, code, _label in entries:
        for question in questions:
            table.setdefault(question, set()).add(code)
    return MappingProxyType({q: frozenset(codes) for q, codes in table.items()})


NON_SUBSTANTIVE_CODES: Final[Mapping[str, frozenset[int]]] = _table(
    [
        # (questions, code, the codebook's label: kept as a reminder, the codebook is the truth)
        (["Q111"], 3, "Other answer"),
        (["Q119"], 0, "Hard to say"),
        # Coded only when volunteered, about a fifth of answers; the scale is Disagree(0)/Agree(2).
        (_ids(122, 129), 1, "Hard to say"),
        (_ids(221, 222), 4, "Not allowed to vote"),
        (_ids(241, 249), 0, "It is against democracy (spontaneous)"),
        (["Q254"], 5, "I am not [nationality]"),
    ]
)
"""Question id → its non-negative codes that are not substantive answers (treated as missing)."""


def is_missing_code(code: int) -> bool:
    """Negative codes are missing values in every WVS variable, never answers."""
    return code < 0


def non_substantive_codes(question_id: str) -> frozenset[int]:
    """The non-negative codes of `question_id` that are not answers (empty for most questions)."""
    return NON_SUBSTANTIVE_CODES.get(question_id, frozenset())


def substantive_codes(question_id: str, codebook_codes: Iterable[int]) -> list[int]:
    """The codebook's codes of a question that are answers, ascending (missing ones removed)."""
    excluded = non_substantive_codes(question_id)
    return sorted(
        code for code in set(codebook_codes) if not is_missing_code(code) and code not in excluded
    )
