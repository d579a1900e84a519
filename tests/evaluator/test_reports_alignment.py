"""The alignment report on a small made-up run: every number equals a hand computation (scipy,
numpy, pandas in this file), the CSV, Markdown and HTML carry the same tables, the page is
self-contained and its figures are not blank.

`make_run` is the fixture the parity and browser tests load too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.evaluate import condition_effects
from cvs_evaluator.questions import Question, QuestionBank
from cvs_evaluator.reports import (
    AlignmentReport,
    LatencyRecord,
    alignment_report,
    collect_provenance,
    write_reports,
)
from cvs_evaluator.reports.provenance import PACKAGES, file_sha256, git_commit

SECTIONS = ["S1 VALUES", "S2 TRUST & SOCIAL CAPITAL", "S3 EMPTY"]
OPTIONS = {"Q1": 3, "Q2": 4, "Q3": 2, "Q4": 3, "Q5": 5}
SECTION_OF = {"Q1": SECTIONS[0], "Q2": SECTIONS[0], "Q3": SECTIONS[0]}
SECTION_OF |= {"Q4": SECTIONS[1], "Q5": SECTIONS[1]}
COUNTRIES = ["DEU", "JPN", "NGA"]
INCOME_OF: dict[str, str | None] = {
    "DEU": "High income",
    "JPN": "High income",
    "NGA": "Lower middle income",
}
NOT_ASKED = {("JPN", "Q5")}
"""JPN's survey did not ask Q5: no human answers, no item."""
LOW_MASS = {("image", "DEU", "Q2", "DEU-1.jpg"), ("text", "NGA", "Q3", "")}
"""Items kept without a model distribution."""
IMAGES = {c: [f"{c}-1.jpg", f"{c}-2.jpg"] for c in COUNTRIES}


@dataclass(frozen=True)
class Run:
    """A made-up run with its inputs, and the raw vectors behind it for hand computations."""

    results: pd.DataFrame
    shares: pd.DataFrame
    bank: QuestionBank
    screening: pd.DataFrame
    human: dict[tuple[str, str], np.ndarray]
    """(country, question) → human shares."""
    model: dict[tuple[str, str, str, str], np.ndarray]
    """(condition, country, question, image) → model distribution (scored items only)."""


def make_bank() -> QuestionBank:
    questions = {
        qid: Question(
            id=qid,
            text=f"Question {qid}?",
            options=tuple((code, f"option {code}") for code in range(1, n + 1)),
            ordinal=True,
            section=SECTION_OF[qid],
        )
        for qid, n in OPTIONS.items()
    }
    return QuestionBank(questions=questions, sections=list(SECTIONS))


def make_run(seed: int = 0, engine: str = "ort", precision: str = "fp32") -> Run:
    rng = np.random.default_rng(seed)
    human = {
        (c, q): rng.dirichlet(np.ones(n))
        for c in COUNTRIES
        for q, n in OPTIONS.items()
        if (c, q) not in NOT_ASKED
    }
    shares = pd.DataFrame(
        [
            {"country": c, "question": q, "option": code, "share": float(share)}
            for (c, q), vector in human.items()
            for code, share in enumerate(vector, start=1)
        ]
    )
    rows = []
    model: dict[tuple[str, str, str, str], np.ndarray] = {}
    for condition in ("text", "image"):
        for (country, question), shares_vector in human.items():
            for image in IMAGES[country] if condition == "image" else [""]:
                key = (condition, country, question, image)
                n = OPTIONS[question]
                dist = rng.dirichlet(np.full(n, 2.0))
                mass = 0.02 if key in LOW_MASS else 0.9
                scored = key not in LOW_MASS
                if scored:
                    model[key] = dist
                rows.append(
                    {
                        "item_id": f"v1|{condition}|{country}|{image}|{question}",
                        "model": "smol",
                        "engine": engine,
                        "precision": precision,
                        "checkpoint_fingerprint": "f" * 64,
                        "engine_manifest_sha256": "e" * 64,
                        "template_version": "t1",
                        "condition": condition,
                        "country": country,
                        "image": image,
                        "image_sha256": ""
                        if not image
                        else hashlib.sha256(image.encode()).hexdigest(),
                        "question": question,
                        "section": SECTION_OF[question],
                        "group_key": f"{condition}|{country}|{image}",
                        "option_codes": list(range(1, n + 1)),
                        "option_logprobs": list(np.log(dist * mass)),
                        "model_dist": list(dist) if scored else None,
                        "human_dist": list(shares_vector),
                        "option_mass": mass,
                        "similarity": float(1 - jensenshannon(shares_vector, dist))
                        if scored
                        else None,
                        "status": "scored" if scored else "low_mass",
                        "reason": "" if scored else f"option mass {mass} below 0.1",
                    }
                )
    screening = pd.DataFrame(
        [
            {
                "image_id": "DEU-1.jpg",
                "country": "DEU",
                "category": "street",
                "rank": 1,
                "kept": True,
            },
            {
                "image_id": "DEU-2.jpg",
                "country": "DEU",
                "category": "food",
                "rank": 5,
                "kept": False,
            },
            {
                "image_id": "DEU-3.jpg",
                "country": "DEU",
                "category": "food",
                "rank": 2,
                "kept": True,
            },
            {
                "image_id": "JPN-1.jpg",
                "country": "JPN",
                "category": "street",
                "rank": None,
                "kept": False,
            },
            {
                "image_id": "JPN-2.jpg",
                "country": "JPN",
                "category": "street",
                "rank": 3,
                "kept": True,
            },
            {
                "image_id": "NGA-1.jpg",
                "country": "NGA",
                "category": "food",
                "rank": 1,
                "kept": True,
            },
        ]
    )
    return Run(pd.DataFrame(rows), shares, make_bank(), screening, human, model)


def sim(human: np.ndarray, model: np.ndarray) -> float:
    return float(1 - jensenshannon(human, model))


def question_sim(run: Run, condition: str, country: str, question: str) -> float:
    """Mean over the question's scored images (text: its one item); NaN when none is scored."""
    values = [
        sim(run.human[(country, question)], dist)
        for (cond, c, q, _), dist in run.model.items()
        if (cond, c, q) == (condition, country, question)
    ]
    return float(np.mean(values)) if values else float("nan")


def questions_of(section: str) -> list[str]:
    return [q for q, s in SECTION_OF.items() if s == section or section == "all"]


def scored_questions(run: Run, condition: str, country: str, section: str) -> list[str]:
    return [
        q for q in questions_of(section) if not np.isnan(question_sim(run, condition, country, q))
    ]


def row(table: pd.DataFrame, **keys: str) -> pd.Series:
    match = np.ones(len(table), dtype=bool)
    for column, value in keys.items():
        match &= (table[column] == value).to_numpy()
    assert match.sum() == 1, f"{keys}: {match.sum()} rows"
    return table.loc[match].iloc[0]


def exact_sign_flip_p(diff: np.ndarray) -> float:
    """Two-sided p-value over all 2^n sign patterns (scipy's definition, its tie tolerance)."""
    observed = diff.mean()
    null = np.array(
        [np.mean(diff * np.array(s)) for s in itertools.product([1, -1], repeat=diff.size)]
    )
    gamma = abs(1e-14 * observed)
    less = np.mean(null <= observed + gamma)
    greater = np.mean(null >= observed - gamma)
    return float(min(1.0, 2 * min(less, greater)))


@pytest.fixture(scope="module")
def run() -> Run:
    return make_run()


@pytest.fixture(scope="module")
def report(run: Run) -> AlignmentReport:
    return alignment_report(
        run.results, run.shares, run.bank, income_of=INCOME_OF, screening=run.screening, seed=0
    )


# --- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("condition", ["text", "image"])
@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize("section", [SECTIONS[0], SECTIONS[1], "all"])
def test_section_means_equal_hand_means(
    report: AlignmentReport, run: Run, condition: str, country: str, section: str
) -> None:
    questions = scored_questions(run, condition, country, section)
    expected = np.mean([question_sim(run, condition, country, q) for q in questions])
    got = row(report.sections, condition=condition, country=country, section=section)
    assert got["similarity"] == pytest.approx(expected, abs=1e-12)
    assert got["n_questions"] == len(questions)
    # Baselines over the same questions: uniform and others pooled by hand.
    uniform = np.mean([sim(run.human[(country, q)], np.ones(OPTIONS[q])) for q in questions])
    assert got["uniform"] == pytest.approx(uniform, abs=1e-12)
    pooled = []
    for q in questions:
        others = [run.human[(c, q)] for c in COUNTRIES if c != country and (c, q) in run.human]
        pooled.append(sim(run.human[(country, q)], np.mean(others, axis=0)))
    assert got["others_pooled"] == pytest.approx(np.mean(pooled), abs=1e-12)


def test_baselines_follow_the_pairs_scored_under_each_condition(
    report: AlignmentReport, run: Run
) -> None:
    # NGA's text Q3 is not scored, its image Q3 is: the uniform baselines differ accordingly.
    text = row(report.sections, condition="text", country="NGA", section=SECTIONS[0])
    image = row(report.sections, condition="image", country="NGA", section=SECTIONS[0])
    uniform = {q: sim(run.human[("NGA", q)], np.ones(OPTIONS[q])) for q in ("Q1", "Q2", "Q3")}
    assert text["uniform"] == pytest.approx(np.mean([uniform["Q1"], uniform["Q2"]]), abs=1e-12)
    assert image["uniform"] == pytest.approx(np.mean(list(uniform.values())), abs=1e-12)


def test_closest_other_country_asked_every_question(report: AlignmentReport, run: Run) -> None:
    # DEU's S2 questions are Q4 and Q5; JPN never asked Q5, so only NGA competes.
    got = row(report.sections, condition="text", country="DEU", section=SECTIONS[1])
    assert got["closest_other_country"] == "NGA"
    expected = np.mean([sim(run.human[("DEU", q)], run.human[("NGA", q)]) for q in ("Q4", "Q5")])
    assert got["closest_other"] == pytest.approx(expected, abs=1e-12)
    # JPN's S2 is Q4 only: both others compete, the closer wins.
    got = row(report.sections, condition="text", country="JPN", section=SECTIONS[1])
    scores = {c: sim(run.human[("JPN", "Q4")], run.human[(c, "Q4")]) for c in ("DEU", "NGA")}
    assert got["closest_other_country"] == max(scores, key=lambda c: scores[c])
    assert got["closest_other"] == pytest.approx(max(scores.values()), abs=1e-12)


def test_bootstrap_interval_over_questions(report: AlignmentReport, run: Run) -> None:
    values = [question_sim(run, "text", "DEU", q) for q in questions_of(SECTIONS[0])]
    interval = stats.bootstrap(
        (np.asarray(values),), np.mean, method="percentile", n_resamples=2000, random_state=0
    ).confidence_interval
    got = row(report.sections, condition="text", country="DEU", section=SECTIONS[0])
    assert got["ci_low"] == pytest.approx(interval.low, abs=1e-12)
    assert got["ci_high"] == pytest.approx(interval.high, abs=1e-12)
    assert got["ci_low"] <= got["similarity"] <= got["ci_high"]
    single = row(report.sections, condition="text", country="JPN", section=SECTIONS[1])
    assert np.isnan(single["ci_low"]) and np.isnan(single["ci_high"])  # one question: no interval


def test_empty_sections_are_not_reported(report: AlignmentReport) -> None:
    assert SECTIONS[2] not in set(report.sections["section"])
    assert report.section_order == [SECTIONS[0], SECTIONS[1], "all"]


@pytest.mark.parametrize(
    ("country", "section"), [("all", SECTIONS[0]), ("DEU", SECTIONS[1]), ("NGA", "all")]
)
def test_image_minus_text_with_exact_permutation_p(
    report: AlignmentReport, run: Run, country: str, section: str
) -> None:
    countries = COUNTRIES if country == "all" else [country]
    pairs = [
        (question_sim(run, "text", c, q), question_sim(run, "image", c, q))
        for c in countries
        for q in questions_of(section)
        if not np.isnan(question_sim(run, "text", c, q))
        and not np.isnan(question_sim(run, "image", c, q))
    ]
    text, image = np.array(pairs, dtype=np.float64).T
    got = row(report.effects, condition_b="image", country=country, section=section)
    assert got["n_pairs"] == len(pairs)
    assert got["mean_diff"] == pytest.approx(np.mean(image - text), abs=1e-12)
    assert got["percent_change"] == pytest.approx((image.mean() - text.mean()) / text.mean() * 100)
    assert got["p_value"] == pytest.approx(exact_sign_flip_p(image - text), abs=1e-12)


def test_pooled_changes_equal_the_studys_condition_effects(
    report: AlignmentReport, run: Run
) -> None:
    expected = condition_effects(report.items, run.bank, "text", "image", seed=0)
    pooled = report.effects.loc[report.effects["country"] == "all"]
    merged = pooled.merge(expected, on="section", suffixes=("", "_expected"), validate="1:1")
    assert len(merged) == len(expected) == 3  # two sections and "all"
    for column in ("n_pairs", "mean_a", "mean_b", "mean_diff", "percent_change", "p_value"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_expected"], rtol=1e-12)


def test_a_single_pair_has_no_p_value(report: AlignmentReport) -> None:
    single = row(report.effects, condition_b="image", country="JPN", section=SECTIONS[1])
    assert single["n_pairs"] == 1 and np.isnan(single["p_value"])


def test_income_groups_pool_their_countries_pairs(report: AlignmentReport, run: Run) -> None:
    high = [
        question_sim(run, "text", c, q)
        for c in ("DEU", "JPN")
        for q in questions_of(SECTIONS[0])
        if not np.isnan(question_sim(run, "text", c, q))
    ]
    got = row(report.income, condition="text", income_group="High income", section=SECTIONS[0])
    assert got["similarity"] == pytest.approx(np.mean(high), abs=1e-12)
    assert got["n_countries"] == 2
    groups = list(report.income["income_group"].drop_duplicates())
    assert groups == ["High income", "Lower middle income"]  # richest first
    effect = row(report.income_effects, income_group="Lower middle income", section="all")
    diffs = []
    for q in questions_of("all"):
        text, image = question_sim(run, "text", "NGA", q), question_sim(run, "image", "NGA", q)
        if not np.isnan(text) and not np.isnan(image):
            diffs.append(image - text)
    assert effect["mean_diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert effect["p_value"] == pytest.approx(exact_sign_flip_p(np.asarray(diffs)), abs=1e-12)


def test_marginal_similarity_averages_distributions_over_images(
    report: AlignmentReport, run: Run
) -> None:
    per_question = []
    for q in questions_of(SECTIONS[0]):
        dists = [
            d for (cond, c, qq, _), d in run.model.items() if (cond, c, qq) == ("image", "DEU", q)
        ]
        per_question.append(sim(run.human[("DEU", q)], np.mean(dists, axis=0)))
    got = row(report.marginal, condition="image", country="DEU", section=SECTIONS[0])
    assert got["marginal_similarity"] == pytest.approx(np.mean(per_question), abs=1e-12)
    assert set(report.marginal["condition"]) == {"image"}


def test_screening_counts_kept_and_dropped(report: AlignmentReport) -> None:
    screening = report.screening
    assert screening is not None
    food = row(screening, country="DEU", category="food")
    assert (food["n_images"], food["kept"], food["dropped"]) == (2, 1, 1)
    jpn = row(screening, country="JPN", category="all")
    assert (jpn["n_images"], jpn["kept"], jpn["dropped"], jpn["unranked"]) == (2, 1, 1, 1)
    assert jpn["kept_share"] == pytest.approx(0.5)


def test_items_without_a_distribution_are_listed_not_dropped(
    report: AlignmentReport, run: Run
) -> None:
    listed = report.not_scored
    assert len(listed) == len(LOW_MASS)
    assert (
        set(
            zip(
                listed["condition"],
                listed["country"],
                listed["question"],
                listed["image"],
                strict=True,
            )
        )
        == LOW_MASS
    )
    assert (listed["reason"] != "").all()
    assert len(report.items) == len(run.results) - len(LOW_MASS)


def test_recomputed_item_similarity_equals_the_stored_one(
    report: AlignmentReport, run: Run
) -> None:
    stored = run.results.dropna(subset=["similarity"]).set_index(
        ["condition", "country", "question", "image"]
    )
    items = report.items.set_index(["condition", "country", "question", "image"])
    joined = items.join(stored["similarity"].rename("similarity_stored"))
    np.testing.assert_allclose(joined["similarity"], joined["similarity_stored"], atol=1e-12)


# --- files --------------------------------------------------------------------------------------


class TableParser(HTMLParser):
    """Every <section id=…><table> of a page as (id → header, rows), and every <img> src."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, tuple[list[str], list[list[str]]]] = {}
        self.images: list[str] = []
        self._section = ""
        self._cell: list[str] | None = None
        self._row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self._section = attributes.get("id") or ""
        elif tag == "table":
            self.tables[self._section] = ([], [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attributes.get("src") or "")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            header, rows = self.tables[self._section]
            if not header:
                header.extend(self._row)
            else:
                rows.append(self._row)


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    tables = []
    for block in re.split(r"\n\n+", text):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if len(lines) >= 2 and set(lines[1]) <= set("|-"):
            cells = [
                [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
                for line in lines
            ]
            tables.append((cells[0], cells[2:]))
    return tables


def same_cell(shown: str, stored: object) -> bool:
    """Whether a page cell shows the CSV value: text equal, numbers equal to the shown digits."""
    if stored is None or (isinstance(stored, float) and np.isnan(stored)):
        return shown == ""
    if isinstance(stored, bool | np.bool_):
        return shown == ("yes" if stored else "no")
    if isinstance(stored, str):
        return shown == stored
    number = float(stored)  # type: ignore[arg-type]
    if "e" in shown:  # scientific, 3 significant digits
        return abs(float(shown) - number) <= 5e-3 * abs(number)
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - number) <= 0.5 * 10.0**-decimals + 1e-12


@pytest.fixture(scope="module")
def written(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    data = folder / "shares.csv"
    run.shares.to_csv(data, index=False)
    provenance = collect_provenance(
        ["cvs-eval", "--out", str(folder)], {}, "f" * 64, [data], {"seed": 0}
    )
    latency = LatencyRecord(
        stages={"prompt": [0.01, 0.02, 0.03], "suffix": [0.5, 0.7], "metric": [0.001]},
        items=len(run.results),
        wall_seconds=2.0,
        caches={
            "prefix": {
                "hits": 3,
                "misses": 1,
                "evictions": 0,
                "peak_bytes": 10,
                "budget_bytes": 100,
            }
        },
        peak_rss_bytes=2**30,
    )
    write_reports(
        folder,
        run.results,
        run.shares,
        run.bank,
        provenance=provenance,
        precision="fp32",
        latency=latency,
        screening=run.screening,
        income_of=INCOME_OF,
        notes=["The image condition carries no information for this model."],
    )
    return folder


def test_csv_markdown_and_html_carry_the_same_tables(written: Path) -> None:
    csv = pd.read_csv(written / "alignment.csv", keep_default_na=False, na_values=[""])
    parser = TableParser()
    parser.feed((written / "alignment.html").read_text(encoding="utf-8"))
    markdown = markdown_tables((written / "alignment.md").read_text(encoding="utf-8"))
    names = list(dict.fromkeys(csv["table"]))
    expected = {
        "sections",
        "effects",
        "income",
        "income_effects",
        "marginal",
        "screening",
        "not_scored",
    }
    assert expected | {"latency", "latency_stages", "latency_caches"} <= set(names)
    assert set(parser.tables) >= set(names)
    for name in names:
        header, rows = parser.tables[name]
        block = csv.loc[csv["table"] == name, header]
        assert len(rows) == len(block), name
        for cells, record in zip(rows, block.itertuples(index=False), strict=True):
            assert all(same_cell(c, v) for c, v in zip(cells, record, strict=True)), (name, cells)
        assert (header, rows) in markdown, name


def test_html_is_self_contained_with_non_blank_figures(written: Path) -> None:
    html = (written / "alignment.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.IGNORECASE)
    assert "<script" not in html.lower()
    parser = TableParser()
    parser.feed(html)
    assert len(parser.images) == 3  # a heatmap per condition and the latency bars
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.width > 100 and image.height > 100
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 1


def test_every_page_ends_with_the_provenance(written: Path) -> None:
    provenance = json.loads((written / "provenance.json").read_text())
    html = (written / "alignment.html").read_text(encoding="utf-8")
    markdown = (written / "alignment.md").read_text(encoding="utf-8")
    for fact in (
        provenance["git_commit"],
        provenance["checkpoint_fingerprint"],
        provenance["python"],
    ):
        assert fact in html and fact in markdown
    for digest in provenance["data_files"].values():
        assert digest in html
    assert "carries no information" in html
    assert not (written / "parity.json").exists()  # no comparison asked for


def test_latency_json_holds_the_summaries(written: Path) -> None:
    data = json.loads((written / "latency.json").read_text())
    assert data["compare"] is None
    assert data["run"]["stages"]["suffix"]["p50_s"] == pytest.approx(np.percentile([0.5, 0.7], 50))
    assert data["run"]["caches"]["prefix"]["hit_rate"] == pytest.approx(0.75)


def test_a_results_frame_of_another_precision_is_refused(run: Run, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        write_reports(
            tmp_path,
            run.results,
            run.shares,
            run.bank,
            provenance={},
            precision="int8-wo",
            income_of=INCOME_OF,
        )


# --- provenance ---------------------------------------------------------------------------------


def test_provenance_hashes_files_and_names_versions(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 5000)  # more than one read chunk
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"precision": "fp32"}')
    got = collect_provenance(
        ["cvs-eval", "--seed", "3"], {"run": manifest}, "abc", [data], {"seed": 3}
    )
    assert got["data_files"] == {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}
    assert (
        got["engine_manifests"]["run"]["sha256"]
        == hashlib.sha256(manifest.read_bytes()).hexdigest()
    )
    assert set(got["packages"]) == set(PACKAGES)
    assert got["packages"]["numpy"] == np.__version__
    assert got["command_line"] == ["cvs-eval", "--seed", "3"] and got["seeds"] == {"seed": 3}
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", got["git_commit"])
    json.dumps(got)  # plain data
    assert file_sha256(data) == got["data_files"][str(data)]


def test_git_commit_outside_a_repository_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"


def test_a_text_only_run_reports_without_condition_tables(run: Run, tmp_path: Path) -> None:
    text = run.results.loc[run.results["condition"] == "text"].reset_index(drop=True)
    write_reports(
        tmp_path, text, run.shares, run.bank, provenance={}, precision="fp32", income_of=INCOME_OF
    )
    parser = TableParser()
    parser.feed((tmp_path / "alignment.html").read_text(encoding="utf-8"))
    assert len(parser.images) == 1  # one heatmap, no latency given
    assert "effects" not in parser.tables  # no pair of conditions: "(no rows)", no table
    assert not (tmp_path / "latency.json").exists()
