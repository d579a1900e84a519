"""`cvs-data`: import-wvs writes what import_wvs computes, show and baselines print the data,
and a user's bad input is one line without a traceback and nothing at --out."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.cli_data import main
from cvs_evaluator.wvs import import_wvs, read_shares

HEADER = ["B_COUNTRY_ALPHA", "W_WEIGHT", "Q57", "Q119", "Q122"]
DEU = [["DEU", 1.0, 1, 1, 0], ["DEU", 3.0, 2, 4, 2], ["DEU", 1.0, 1, 0, 2]]
JPN = [["JPN", 2.0, 2, 2, 0], ["JPN", 1.0, 2, 3, 0], ["JPN", 1.0, 1, -1, 2]]
KOR = [["KOR", 1.0, 1, 2, 2], ["KOR", 1.0, 1, 3, 0]]
USA_UNWEIGHTED = [["USA", 1, 1, 0], ["USA", 2, 2, 2]]


def _csv(path: Path, header: list[str], rows: list[list[object]], compress: bool = False) -> Path:
    text = "\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return [
        _csv(tmp_path / "DEU_JPN_KOR.csv.gz", HEADER, [*DEU, *JPN, *KOR], compress=True),
        _csv(tmp_path / "USA.csv", [h for h in HEADER if h != "W_WEIGHT"], USA_UNWEIGHTED),
    ]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_import_writes_the_shares(tmp_path: Path, files: list[Path], suffix: str) -> None:
    out = tmp_path / "out" / f"shares{suffix}"
    code, output = _run("import-wvs", *map(str, files), "--out", str(out), "--no-progress")
    assert code == 0, output
    pd.testing.assert_frame_equal(read_shares(out), import_wvs(files).shares)
    summary = output.strip().splitlines()[-1]
    assert summary.startswith("imported 4 countries (10 respondents, 1 unweighted), 3 questions")
    assert f"→ {out}" in summary
    assert "warning:" in output and "USA imported unweighted" in output


def test_import_one_question(tmp_path: Path, files: list[Path]) -> None:
    out = tmp_path / "q57.csv"
    code, _ = _run("import-wvs", str(files[0]), "--question", "Q57", "--out", str(out))
    assert code == 0
    assert set(read_shares(out)["question"]) == {"Q57"}


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, files: list[Path]) -> None:
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(files[0].read_bytes()[:-12])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, output = _run(
        "import-wvs", str(broken), "--out", str(out_dir / "s.parquet"), "--no-progress"
    )
    assert code == 1
    assert output.startswith(f"Error: {broken}: truncated or corrupt gzip")
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert list(out_dir.iterdir()) == []


def test_unknown_question_is_a_clear_error(tmp_path: Path, files: list[Path]) -> None:
    out = tmp_path / "s.csv"
    code, output = _run("import-wvs", str(files[0]), "--question", "Q999", "--out", str(out))
    assert code == 1 and "question id 'Q999' is not in the codebook" in output
    assert not out.exists()


def test_out_must_be_parquet_or_csv(tmp_path: Path, files: list[Path]) -> None:
    code, output = _run("import-wvs", str(files[0]), "--out", str(tmp_path / "s.xlsx"))
    assert code == 2 and ".parquet or .csv" in output


@pytest.mark.parametrize("command", [[], ["import-wvs"], ["show"], ["baselines"]])
def test_help_teaches_with_examples(command: list[str]) -> None:
    code, output = _run(*command, "--help")
    assert code == 0
    assert "Example" in output or "Typical use" in output
    assert "cvs-data " in output


def test_show_a_table(tmp_path: Path, files: list[Path]) -> None:
    out = tmp_path / "s.parquet"
    _run("import-wvs", *map(str, files), "--out", str(out), "--no-progress")
    code, output = _run("show", "--shares", str(out))
    assert code == 0
    lines = output.splitlines()
    # 4 countries each asked Q57 (2 options), Q119 (4) and Q122 (2): 4 × 8 rows.
    assert lines[0] == f"{out}: 4 countries × 3 questions × 13 sections (32 rows)"
    assert any(
        line.startswith("POSTMATERIALIST INDEX") and "no value questions" in line for line in lines
    )
    assert any(line.startswith("USA United States") and "unweighted" in line for line in lines)
    assert "unweighted (no W_WEIGHT): USA" in lines
    assert (
        "study countries missing: FRA (France), ITA (Italy), BRA (Brazil), MEX (Mexico), "
        "CHN (China), PAK (Pakistan), NGA (Nigeria), VNM (Vietnam)" in lines
    )


def test_show_the_study_data() -> None:
    code, output = _run("show")  # $CVS_DATA, cached under $CVS_CACHE
    assert code == 0, output
    assert "WVS-7 study data ($CVS_DATA): 60 countries × 239 questions × 13 sections" in output
    assert "unweighted (no W_WEIGHT): CHN, TUR, USA" in output
    assert "study countries missing: FRA (France), ITA (Italy)" in output
    assert "no classification: NIR, TWN, VEN (3 left out of income splits)" in output


def test_baselines_for_chosen_countries(tmp_path: Path, files: list[Path]) -> None:
    out = tmp_path / "s.parquet"
    _run("import-wvs", str(files[0]), "--out", str(out), "--no-progress")
    code, output = _run(
        "baselines", "--shares", str(out), "--country", "DEU", "--country", "jp", "--country", "FRA"
    )
    assert code == 0, output
    assert "missing from the data (not substituted): FRA (France)" in output
    deu_block = output.split("DEU (Germany)")[1].split("JPN (Japan)")[0]
    trust = next(line for line in deu_block.splitlines() if line.startswith("SOCIAL CAPITAL"))
    questions, uniform = trust.split()[-5:-3]
    # Germany's Q57 by hand: weights 1 and 1 choose 1, weight 3 chooses 2 → (0.4, 0.6).
    expected = 1 - jensenshannon(np.array([0.4, 0.6]), np.array([0.5, 0.5]))
    assert (questions, uniform) == ("1", f"{expected:.3f}")
    assert "KOR (" not in output


def test_baselines_unknown_country(tmp_path: Path, files: list[Path]) -> None:
    out = tmp_path / "s.parquet"
    _run("import-wvs", str(files[0]), "--out", str(out), "--no-progress")
    code, output = _run("baselines", "--shares", str(out), "--country", "XYZ")
    assert code == 1 and output.startswith("Error: unknown country code 'XYZ'")
