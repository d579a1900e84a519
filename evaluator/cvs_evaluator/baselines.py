"""What a model's alignment score means: the same score for answers made from human data alone.

A similarity of 0.8 says little by itself. These baselines say what simple guesses get:
- `uniform`: every option equally likely;
- `others_pooled`: the pooled answers of every *other* country (each country weighs the same,
  the target country left out): what "people in general" answer;
- `best_other`, `mean_other`: another single country's answers taken as the target's (how well
  Germany's answers score as Japan's): the closest other country (among those that asked all the
  target's questions of the section) and the average other country.

All come from the human shares table (`country`, `question`, `option`, `share`, ...), with the
similarity of `cvs_evaluator.metrics` (human = the target country, model = the guess). A question
counts for a target country only if that country asked it; another country contributes only to
the questions it asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from cvs_evaluator.metrics import check_human_shares, similarity_rows

BASELINES: tuple[str, ...] = ("uniform", "others_pooled", "best_other", "mean_other")
"""The baselines `section_baselines` reports, in its row order."""


class SectionedQuestion(Protocol):
    """What baselines need of a question-bank entry."""

    @property
    def section(self) -> str:
        """The questionnaire section the question belongs to."""
        ...


class SectionedBank(Protocol):
    """What baselines need of `cvs_evaluator.questions.QuestionBank`."""

    @property
    def questions(self) -> Mapping[str, SectionedQuestion]:
        """Question id ("Q57") → entry."""
        ...

    @property
    def sections(self) -> Sequence[str]:
        """Every questionnaire section, in questionnaire order."""
        ...


@dataclass(frozen=True)
class QuestionShares:
    """Every country's answer shares for one question, as one matrix."""

    question: str
    """Question id, e.g. "Q57"."""
    countries: tuple[str, ...]
    """ISO3 codes of the countries that asked the question, sorted: the matrix rows."""
    options: tuple[int, ...]
    """WVS answer codes, ascending: the matrix columns."""
    shares: NDArray[np.float64]
    """(countries, options) answer shares; each row sums to 1."""


def share_matrices(shares: pd.DataFrame) -> dict[str, QuestionShares]:
    """The shares table as one (countries, options) matrix per question.

    Raises ValueError when countries that asked a question disagree on its option codes.
    """
    check_human_shares(shares)
    matrices = {}
    for question, block in shares.groupby("question", sort=True):
        wide = block.pivot(index="country", columns="option", values="share").sort_index()
        wide = wide.reindex(columns=sorted(wide.columns))
        gaps = wide.isna()
        if gaps.to_numpy().any():
            country = str(wide.index[gaps.any(axis=1).to_numpy()][0])
            missing = [int(o) for o in wide.columns[gaps.loc[country].to_numpy()]]
            raise ValueError(
                f"human shares: question {question} country {country} lacks option code(s) "
                f"{missing} that other countries have"
            )
        matrices[str(question)] = QuestionShares(
            question=str(question),
            countries=tuple(str(c) for c in wide.index),
            options=tuple(int(o) for o in wide.columns),
            shares=wide.to_numpy(dtype=np.float64),
        )
    return matrices


def uniform_baseline(shares: pd.DataFrame) -> pd.DataFrame:
    """Similarity of the uniform distribution to each country's answers.

    Columns: country, question, similarity; one row per question a country asked.
    """
    rows = []
    for matrix in share_matrices(shares).values():
        uniform = np.full_like(matrix.shares, 1.0 / len(matrix.options))  # (countries, options)
        scores = similarity_rows(matrix.shares, uniform)
        rows.append(_question_frame(matrix.question, matrix.countries, scores))
    return pd.concat(rows, ignore_index=True).sort_values(
        ["country", "question"], ignore_index=True
    )


def others_pooled_baseline(shares: pd.DataFrame) -> pd.DataFrame:
    """Similarity of the other countries' pooled answers to each country's answers.

    The pool of country c for question q is the unweighted mean of the share vectors of every
    other country that asked q. Columns: country, question, similarity, n_others; questions
    nobody else asked have no row.
    """
    rows = []
    for matrix in share_matrices(shares).values():
        n = len(matrix.countries)
        if n < 2:
            continue
        pooled = (matrix.shares.sum(axis=0)[None, :] - matrix.shares) / (n - 1)  # (countries, opt)
        scores = similarity_rows(matrix.shares, pooled)
        frame = _question_frame(matrix.question, matrix.countries, scores)
        frame["n_others"] = n - 1
        rows.append(frame)
    columns = ["country", "question", "similarity", "n_others"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.concat(rows, ignore_index=True).sort_values(
        ["country", "question"], ignore_index=True
    )


def country_pair_similarities(shares: pd.DataFrame) -> pd.DataFrame:
    """Every other country's answers scored as each country's, per question.

    Columns: question, country (the target: the human side), other (the stand-in: the model
    side), similarity. One row per question and ordered pair of distinct countries that both
    asked it.
    """
    rows = []
    for matrix in share_matrices(shares).values():
        n = len(matrix.countries)
        target, other = np.nonzero(~np.eye(n, dtype=bool))  # (pairs,), (pairs,)
        scores = similarity_rows(matrix.shares[target], matrix.shares[other])
        names = np.asarray(matrix.countries, dtype=object)
        rows.append(
            pd.DataFrame(
                {
                    "question": matrix.question,
                    "country": names[target],
                    "other": names[other],
                    "similarity": scores,
                }
            )
        )
    return pd.concat(rows, ignore_index=True).sort_values(
        ["country", "other", "question"], ignore_index=True
    )


def section_baselines(
    shares: pd.DataFrame, bank: SectionedBank, countries: Sequence[str]
) -> pd.DataFrame:
    """The four baselines per target country × section.

    Only questions in `bank` count, and for a target only those it asked. Per section:
    - uniform: mean over the target's questions of the uniform baseline;
    - others_pooled: mean over the target's questions that another country asked of the
      others-pooled baseline;
    - best_other: the other country whose answers score highest as the target's, over all the
      target's questions in the section (its mean similarity over them); only countries that
      asked every one of those questions compete, so every candidate is scored on the same
      questions. The winner's ISO3 is in `other`;
    - mean_other: per question, the mean similarity over the other countries that asked it
      (each country weighs the same); then the mean over the target's questions that another
      country asked.
    Columns: country, section, baseline, similarity, n_questions, other ("" but for best_other).
    Rows follow `countries`, then `bank.sections`, then `BASELINES`; a section where the target
    asked nothing (for the last three: no other country asked any of them; for best_other: no
    other country asked all of them) has no row.
    Raises ValueError for a target country without answers in `shares`.
    """
    section_of = {question: entry.section for question, entry in bank.questions.items()}
    in_bank = shares.loc[shares["question"].isin(list(section_of))]
    present = set(in_bank["country"])
    absent = [c for c in countries if c not in present]
    if absent:
        raise ValueError(f"no answers to any question-bank question for country(ies) {absent}")
    targets = list(dict.fromkeys(countries))

    uniform = _section_mean(uniform_baseline(in_bank), section_of, targets)
    pooled = _section_mean(others_pooled_baseline(in_bank), section_of, targets)
    pairs = country_pair_similarities(in_bank)
    pairs = pairs.loc[pairs["country"].isin(targets)].copy()
    pairs["section"] = pairs["question"].map(section_of)
    # best_other: like for like, only other countries that asked every one of the target's
    # questions in the section compete (one that shares 2 of 23 questions would win by chance).
    per_other = (
        pairs.groupby(["country", "section", "other"], sort=True)
        .agg(similarity=("similarity", "mean"), n_questions=("question", "size"))
        .reset_index()
    )
    asked = uniform.set_index(["country", "section"])["n_questions"]
    covering = per_other.loc[
        per_other["n_questions"].to_numpy()
        == asked.reindex(pd.MultiIndex.from_frame(per_other[["country", "section"]])).to_numpy()
    ]
    best = covering.loc[covering.groupby(["country", "section"])["similarity"].idxmax()]
    # mean_other: per question the mean over the others that asked it, then over questions.
    mean_other = (
        pairs.groupby(["country", "section", "question"], sort=True)["similarity"]
        .mean()
        .groupby(["country", "section"])
        .agg(["mean", "size"])
        .rename(columns={"mean": "similarity", "size": "n_questions"})
        .reset_index()
    )

    table = pd.concat(
        [
            uniform.assign(baseline="uniform", other=""),
            pooled.assign(baseline="others_pooled", other=""),
            best.assign(baseline="best_other"),
            mean_other.assign(baseline="mean_other", other=""),
        ],
        ignore_index=True,
    )
    rank = {
        "country": {name: i for i, name in enumerate(targets)},
        "section": {name: i for i, name in enumerate(bank.sections)},
        "baseline": {name: i for i, name in enumerate(BASELINES)},
    }
    table = table.sort_values(
        ["country", "section", "baseline"],
        key=lambda column: column.map(rank[str(column.name)]),
        ignore_index=True,
    )
    table["n_questions"] = table["n_questions"].astype(np.int64)
    return table.loc[:, ["country", "section", "baseline", "similarity", "n_questions", "other"]]


def _question_frame(
    question: str, countries: tuple[str, ...], scores: NDArray[np.float64]
) -> pd.DataFrame:
    return pd.DataFrame({"country": list(countries), "question": question, "similarity": scores})


def _section_mean(
    per_question: pd.DataFrame, section_of: Mapping[str, str], targets: list[str]
) -> pd.DataFrame:
    """Mean similarity per target country × section: country, section, similarity, n_questions."""
    rows = per_question.loc[per_question["country"].isin(targets)].copy()
    rows["section"] = rows["question"].map(section_of)
    return (
        rows.groupby(["country", "section"], sort=True)
        .agg(similarity=("similarity", "mean"), n_questions=("question", "size"))
        .reset_index()
    )
