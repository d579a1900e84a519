"""Parity between a run and a comparison engine: item figures equal scipy/numpy, verdicts pass and
fail where they should, section shifts and their tests equal hand computations, and the skipped
form says why no comparison ran."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.reports import parity_report, write_reports


def load_fixture() -> ModuleType:
    """The made-up run of test_reports_alignment.py (test modules are not importable by name)."""
    name = "reports_fixture_for_parity"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).with_name("test_reports_alignment.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


fixture = load_fixture()


def run_frame(precision: str) -> pd.DataFrame:
    frame: pd.DataFrame = fixture.make_run(seed=0, engine="ort", precision=precision).results
    return frame


def perturbed(results: pd.DataFrame, scale: float, seed: int) -> pd.DataFrame:
    """The comparison engine: every option log-prob moved by N(0, scale); distributions and
    similarities recomputed from them."""
    rng = np.random.default_rng(seed)
    rows = []
    for record in results.to_dict("records"):
        logprobs = np.asarray(record["option_logprobs"])
        logprobs = logprobs + rng.normal(0.0, scale, logprobs.size)
        row = {**record, "engine": "torch", "precision": "fp32", "option_logprobs": list(logprobs)}
        if record["model_dist"] is not None:
            dist = np.exp(logprobs) / np.exp(logprobs).sum()
            row["model_dist"] = list(dist)
            row["similarity"] = float(1 - jensenshannon(record["human_dist"], dist))
        rows.append(row)
    return pd.DataFrame(rows)


def question_sims(frame: pd.DataFrame, item_ids: set[str]) -> pd.Series:
    rows = frame.loc[frame["item_id"].isin(item_ids)]
    return rows.groupby(["condition", "country", "question"])["similarity"].mean()


def exact_p(diff: np.ndarray) -> float:
    p: float = fixture.exact_sign_flip_p(diff)
    return p


def both_scored(run: pd.DataFrame, compare: pd.DataFrame) -> set[str]:
    ids = set(run.loc[run["model_dist"].notna(), "item_id"])
    return ids & set(compare.loc[compare["model_dist"].notna(), "item_id"])


def test_item_figures_equal_scipy_and_numpy() -> None:
    run = run_frame("fp32")
    compare = perturbed(run, 1e-6, seed=1).iloc[::2]  # a sample of the run's items
    report = parity_report(run, compare, precision="fp32")
    assert len(report.items) == len(compare)
    by_id = run.set_index("item_id")
    js, agree, dlogprob = [], [], []
    for record in compare.to_dict("records"):
        mine = by_id.loc[record["item_id"]]
        dlogprob.append(
            np.max(np.abs(np.subtract(mine["option_logprobs"], record["option_logprobs"])))
        )
        if record["model_dist"] is not None:
            js.append(jensenshannon(mine["model_dist"], record["model_dist"]))
            agree.append(np.argmax(mine["model_dist"]) == np.argmax(record["model_dist"]))
    items = report.items.set_index("item_id").loc[list(compare["item_id"])]
    np.testing.assert_allclose(items["max_abs_dlogprob"], dlogprob, rtol=1e-12)
    np.testing.assert_allclose(items["js_distance"].dropna(), js, rtol=1e-9, atol=1e-12)
    summary = report.summary
    assert summary["n_scored_both"] == len(js)
    assert summary["mean_js"] == pytest.approx(np.mean(js), rel=1e-9, abs=1e-15)
    assert summary["max_js"] == pytest.approx(np.max(js), rel=1e-9, abs=1e-15)
    assert summary["top1"] == pytest.approx(np.mean(agree))
    assert summary["max_abs_dlogprob"] == pytest.approx(np.max(dlogprob), rel=1e-12)
    assert report.run_label == "ort/fp32" and report.compare_label == "torch/fp32"


def test_fp32_within_1e4_passes_and_beyond_fails() -> None:
    run = run_frame("fp32")
    close = parity_report(run, perturbed(run, 1e-6, seed=1), precision="fp32")
    assert close.passed and "1e-4 in log-prob" in close.rule
    assert close.answer in ("no", "no, within the bound")
    far = parity_report(run, perturbed(run, 1e-3, seed=1), precision="fp32")
    assert not far.passed
    (check,) = far.checks
    assert check.value > 1e-4 and check.bound == 1e-4


def hand_int8_verdict(run: pd.DataFrame, compare: pd.DataFrame) -> dict[str, float]:
    ids = both_scored(run, compare)
    a = dict(zip(run["item_id"], run["model_dist"], strict=True))
    b = dict(zip(compare["item_id"], compare["model_dist"], strict=True))
    js = [jensenshannon(a[i], b[i]) for i in ids]
    top1 = [np.argmax(a[i]) == np.argmax(b[i]) for i in ids]
    sims = pd.DataFrame({"run": question_sims(run, ids), "compare": question_sims(compare, ids)})
    sims["section"] = [fixture.SECTION_OF[q] for q in sims.index.get_level_values("question")]
    pooled = sims.groupby([sims.index.get_level_values("condition"), "section"]).mean()
    shift = float((pooled["run"] - pooled["compare"]).abs().max())
    return {"mean_js": float(np.mean(js)), "top1": float(np.mean(top1)), "shift": shift}


@pytest.mark.parametrize(("scale", "passes"), [(0.01, True), (1.0, False)])
def test_int8_verdict_against_its_targets(scale: float, passes: bool) -> None:
    run = run_frame("int8-wo")
    compare = perturbed(run, scale, seed=2)
    report = parity_report(run, compare, precision="int8-wo")
    hand = hand_int8_verdict(run, compare)
    expected = hand["mean_js"] <= 0.02 and hand["top1"] >= 0.95 and hand["shift"] <= 0.01
    assert expected is passes  # the data make one case pass, the other fail
    assert report.passed is passes
    figures = {c.name: c.value for c in report.checks}
    assert figures["mean JS distance"] == pytest.approx(hand["mean_js"], rel=1e-9)
    assert figures["top-1 agreement"] == pytest.approx(hand["top1"])
    assert figures["largest section mean shift (pooled over countries)"] == pytest.approx(
        hand["shift"], rel=1e-9, abs=1e-15
    )
    assert {c.bound for c in report.checks} == {0.02, 0.95, 0.01}
    if passes:
        assert report.conclusion.startswith("No")
    else:
        assert report.answer == "yes" and report.conclusion.startswith("Yes")


def test_section_shift_and_its_paired_test_equal_hand_computation() -> None:
    run = run_frame("int8-wo")
    compare = perturbed(run, 0.05, seed=3)
    report = parity_report(run, compare, precision="int8-wo")
    ids = both_scored(run, compare)
    diff = (question_sims(run, ids) - question_sims(compare, ids)).loc["text"]
    section = fixture.SECTIONS[0]
    in_section = [
        q in fixture.questions_of(section) for q in diff.index.get_level_values("question")
    ]
    values = diff.to_numpy()[in_section]
    got = fixture.row(report.sections, condition="text", country="all", section=section)
    assert got["n_pairs"] == values.size
    assert got["difference"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-15)
    assert got["p_value"] == pytest.approx(exact_p(values), abs=1e-12)
    deu = fixture.row(report.sections, condition="text", country="DEU", section="all")
    values = diff.loc["DEU"].to_numpy()
    assert deu["difference"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-15)
    assert deu["p_value"] == pytest.approx(exact_p(values), abs=1e-12)


def test_change_of_the_image_minus_text_effect() -> None:
    run = run_frame("int8-wo")
    compare = perturbed(run, 0.05, seed=4)
    report = parity_report(run, compare, precision="int8-wo")
    ids = both_scored(run, compare)
    sims = pd.DataFrame({"run": question_sims(run, ids), "compare": question_sims(compare, ids)})
    condition = sims.index.get_level_values("condition")
    image = sims.loc[condition == "image"].droplevel("condition")
    text = sims.loc[condition == "text"].droplevel("condition")
    effect = (image - text).dropna()  # pairs scored under both
    got = fixture.row(report.effects, condition_b="image", section="all")
    assert got["n_pairs"] == len(effect)
    assert got["effect_run"] == pytest.approx(effect["run"].mean(), rel=1e-9)
    assert got["effect_compare"] == pytest.approx(effect["compare"].mean(), rel=1e-9)
    change = (effect["run"] - effect["compare"]).to_numpy()
    assert got["change"] == pytest.approx(change.mean(), rel=1e-9, abs=1e-15)
    assert got["p_value"] == pytest.approx(exact_p(change), abs=1e-12)


def test_unknown_precision_and_mismatched_options_are_refused() -> None:
    run = run_frame("fp32")
    with pytest.raises(ValueError, match="unknown precision"):
        parity_report(run, perturbed(run, 0.0, seed=0), precision="int8-banana")
    compare = perturbed(run, 0.0, seed=0)
    compare["option_codes"] = compare["option_codes"].map(lambda codes: codes[::-1])
    with pytest.raises(ValueError, match="different options"):
        parity_report(run, compare, precision="fp32")


def written_run(tmp_path: Path, **parity: object) -> Path:
    made = fixture.make_run(seed=0, engine="ort", precision="int8-wo")
    write_reports(
        tmp_path,
        made.results,
        made.shares,
        made.bank,
        provenance={"git_commit": "abc123", "command_line": ["cvs-eval"]},
        precision="int8-wo",
        income_of=fixture.INCOME_OF,
        **parity,  # type: ignore[arg-type]
    )
    return tmp_path


def test_parity_files_answer_the_question(tmp_path: Path) -> None:
    run = run_frame("int8-wo")
    folder = written_run(tmp_path, compare=perturbed(run, 0.01, seed=2))
    text = (folder / "parity.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    data = json.loads(text)
    assert data["verdict"]["passed"] is True
    assert data["question"].startswith("Does int8-wo")
    assert data["summary"]["n_items"] == len(run)
    page = (folder / "parity.html").read_text(encoding="utf-8")
    assert data["conclusion"] in html.unescape(page) and "PASS" in page and "abc123" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    parser = fixture.TableParser()
    parser.feed(page)
    assert len(parser.images) == 1 and parser.images[0].startswith("data:image/png;base64,")
    assert 'href="parity.html"' in (folder / "alignment.html").read_text(encoding="utf-8")


def test_skipped_parity_says_why(tmp_path: Path) -> None:
    folder = written_run(tmp_path, parity_skipped="torch not installed")
    assert json.loads((folder / "parity.json").read_text()) == {"skipped": "torch not installed"}
    page = (folder / "parity.html").read_text(encoding="utf-8")
    assert "torch not installed" in page and "abc123" in page


def test_a_text_only_comparison_has_no_effect_rows() -> None:
    run = run_frame("fp32")
    run = run.loc[run["condition"] == "text"].reset_index(drop=True)
    report = parity_report(run, run.assign(engine="torch"), precision="fp32")
    assert report.effects.empty
    assert report.passed and report.answer == "no"  # identical scores: nothing moves
    assert report.summary["max_abs_dlogprob"] == 0.0
