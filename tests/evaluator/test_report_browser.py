"""The report pages in a real browser: headless Chromium (the distribution's package, driven by
its own chromedriver so Selenium Manager never reaches the network) loads each page from a
file:// URL without console errors, and every figure decodes to a non-empty image.

Skips, saying why, where Chromium, chromedriver or selenium is missing (`.ci/run` installs
Chromium when it can). With CVS_SCREENSHOT set, the alignment page's screenshot is also copied
there (the README's picture).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from cvs_evaluator.reports import LatencyRecord, collect_provenance, write_reports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None
DRIVER = DRIVER or shutil.which("chromedriver")
MISSING = [
    name
    for name, found in (
        ("chromium", CHROMIUM),
        ("chromedriver", DRIVER),
        ("selenium", importlib.util.find_spec("selenium")),
    )
    if not found
]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs a browser: {', '.join(MISSING)} not found "
    "(apt-get install chromium chromium-driver; pip install selenium)",
)


def load_fixture() -> ModuleType:
    """The made-up run of test_reports_alignment.py (test modules are not importable by name)."""
    name = "reports_fixture_for_browser"
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


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixture = load_fixture()
    made = fixture.make_run(seed=0, engine="ort", precision="int8-wo")
    # The comparison engine: log-probs moved by N(0, 0.01), distributions renormalised from them.
    compare = made.results.assign(engine="torch", precision="fp32")
    rng = np.random.default_rng(5)
    logprobs = [np.asarray(lp) + rng.normal(0, 0.01, len(lp)) for lp in compare["option_logprobs"]]
    scored = compare["model_dist"].notna()
    dists = [np.exp(lp) / np.exp(lp).sum() for lp in logprobs]
    compare["option_logprobs"] = [list(lp) for lp in logprobs]
    compare["model_dist"] = [list(d) if s else None for d, s in zip(dists, scored, strict=True)]
    compare["similarity"] = [
        float(1 - jensenshannon(h, d)) if s else None
        for h, d, s in zip(compare["human_dist"], dists, scored, strict=True)
    ]
    folder = tmp_path_factory.mktemp("browser-run")
    stages = {"prompt": [0.01, 0.012], "vision": [1.9], "prefix": [0.8, 0.7], "suffix": [0.3] * 5}
    write_reports(
        folder,
        made.results,
        made.shares,
        made.bank,
        provenance=collect_provenance(["cvs-eval", "--out", str(folder)], {}, "f" * 64, [], {}),
        precision="int8-wo",
        compare=compare,
        latency=LatencyRecord(stages=stages, items=len(made.results), wall_seconds=4.0),
        compare_latency=LatencyRecord(stages={"score": [2.0, 2.2]}, items=20, wall_seconds=4.2),
        screening=made.screening,
        income_of=fixture.INCOME_OF,
        notes=["Made-up numbers: a fixture of the test suite."],
    )
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, page: Path) -> list[dict[str, Any]]:
    """Load the page; return its console entries."""
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(page.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return entries


def figures(driver: Any) -> list[tuple[bool, int, int]]:
    found: list[tuple[bool, int, int]] = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    return found


@pytest.mark.parametrize(("page", "n_figures"), [("alignment.html", 3), ("parity.html", 1)])
def test_page_loads_cleanly_with_every_figure_drawn(
    browser: Any, run_folder: Path, tmp_path: Path, page: str, n_figures: int
) -> None:
    entries = open_page(browser, run_folder / page)
    severe = [e for e in entries if e.get("level") == "SEVERE"]
    assert not severe, severe
    shown = figures(browser)
    assert len(shown) == n_figures
    assert all(complete and width > 0 and height > 0 for complete, width, height in shown), shown
    screenshot = tmp_path / page.replace(".html", ".png")
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    target = os.environ.get("CVS_SCREENSHOT")
    if target and page == "alignment.html":
        destination = Path(target)
        if destination.is_dir():
            destination = destination / screenshot.name
        shutil.copyfile(screenshot, destination)
