"""``report.html`` in a real browser: Debian's headless chromium driven by Selenium through
Debian's chromium-driver, the page opened from a ``file://`` URL (no server, no network).

The page must load without console errors, every table must have body rows (the known table
exactly its three), every figure (inline SVG or embedded image) must render with a non-zero size
and every ``url(#id)`` an SVG uses must resolve, and verdict cells must be coloured by verdict.
Skips, saying how to get them, without chromium/chromedriver or selenium
(``bash scripts/ensure-browser.sh`` installs the browser; ``make pytest`` runs it).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from report_pages import FIGURES, TABLE_HEADER, TABLE_ROWS, TITLE, VERDICTS, write_report

from robustlab.analysis.figures import pyplot
from robustlab.experiments.html import write_html

TIMEOUT_S = 30
NO_BROWSER = ("chromium/chromedriver not installed: run `bash scripts/ensure-browser.sh` "
              "(apt-get install chromium chromium-driver)")
NO_SELENIUM = "selenium not installed: pip install -e '.[dev]' (or pip install 'selenium>=4.15')"


def _executables() -> tuple[str, str] | None:
    """The chromium binary and its chromedriver, or ``None`` when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).is_file()), None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium that records the page's console (``goog:loggingPrefs``); quit at the end."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(NO_SELENIUM)
    found = _executables()
    if found is None:
        pytest.skip(NO_BROWSER)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.set_page_load_timeout(TIMEOUT_S)
        driver.set_script_timeout(TIMEOUT_S)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def loaded(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    """The toy report (two SVG figures, one PNG embedded as data) open in ``browser``; and the
    console entries its load logged."""
    from selenium.webdriver.support.ui import WebDriverWait

    folder = tmp_path_factory.mktemp("report-page")
    (folder / "raw").mkdir()
    pyplot().imsave(folder / "raw" / "grid.png", [[0.0, 1.0, 0.5], [1.0, 0.0, 0.25]], cmap="gray")
    text = write_report(folder, extra="![image grid](raw/grid.png)\n")
    path = write_html(folder / "report.html", text, title=TITLE)
    browser.get_log("browser")  # drop anything logged before this page
    browser.get(path.as_uri())
    WebDriverWait(browser, TIMEOUT_S).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return browser, browser.get_log("browser")


def test_the_page_loads_without_console_errors(loaded):
    driver, log = loaded
    assert driver.title == TITLE
    assert [e for e in log if e.get("level") == "SEVERE"] == []


def test_every_table_has_rows_and_the_known_one_all_of_them(loaded):
    driver, _ = loaded
    tables = driver.execute_script(
        "return Array.from(document.querySelectorAll('table')).map(t => ["
        "  Array.from(t.querySelectorAll('thead th')).map(th => th.textContent.trim()),"
        "  Array.from(t.querySelectorAll('tbody tr')).map(tr =>"
        "    Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim()))]);")
    assert len(tables) == 2
    assert all(len(rows) >= 1 for _, rows in tables)
    assert [rows for header, rows in tables if header == TABLE_HEADER] == [TABLE_ROWS]


def test_every_figure_renders_with_a_size(loaded):
    driver, _ = loaded
    figures = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg, img')).map(e => {"
        "  const r = e.getBoundingClientRect();"
        "  return {tag: e.tagName.toLowerCase(), label: e.getAttribute('aria-label') || e.getAttribute('alt'),"
        "          width: r.width, height: r.height,"
        "          decoded: e.tagName.toLowerCase() !== 'img' || (e.complete && e.naturalWidth > 0)};});")
    assert [(f["tag"], f["label"]) for f in figures] == [("svg", alt) for alt in FIGURES] + [("img", "image grid")]
    for f in figures:
        assert f["width"] > 0 and f["height"] > 0 and f["decoded"], f
    # every url(#id) an SVG element refers to (clip paths, markers) names an element of the page
    dangling = driver.execute_script(
        "const out = [];"
        "for (const e of document.querySelectorAll('svg *')) for (const a of e.attributes) {"
        "  for (const m of a.value.matchAll(/url\\(#([^)]+)\\)/g)) if (!document.getElementById(m[1])) out.push(m[1]);"
        "  if ((a.name === 'href' || a.name === 'xlink:href') && a.value.startsWith('#')"
        "      && !document.getElementById(a.value.slice(1))) out.push(a.value);}"
        "return out;")
    assert dangling == []


def test_verdict_cells_are_coloured_by_verdict(loaded):
    driver, _ = loaded
    colours = driver.execute_script(
        "const out = {};"
        "for (const tr of document.querySelectorAll('tbody tr')) {"
        "  const td = tr.querySelectorAll('td');"
        "  out[td[0].textContent.trim()] = getComputedStyle(td[td.length - 1]).backgroundColor;}"
        "return out;")
    by_verdict = {text: colours[claim] for claim, (text, _) in VERDICTS.items()}
    plain = colours[TABLE_ROWS[0][0]]  # a number cell of the other table
    assert len(set(by_verdict.values())) == 3, by_verdict
    assert plain not in by_verdict.values()
    assert "rgba(0, 0, 0, 0)" not in by_verdict.values()
