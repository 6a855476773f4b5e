"""The HTML report laid out by a real browser (headless Chromium): the verdict's rows keep a readable height at
1400 px and nothing is wider than the window, at 1400 px and at a laptop's 1280 px.

Needs a Chromium on the PATH; on Debian: `apt-get install -y chromium`. Without one these tests skip."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "results" / "xnli-e5-cpu"
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser on the PATH (Debian: `apt-get install -y chromium`)"
)
# a verdict row (its numbers and its line of text each) taller than this is squeezed: before the fix, 119-343 px
MAX_ROW_PX = 120

# run in the page once it is laid out: the facts the tests check, written into the DOM for --dump-dom to return
MEASURE = """
(function () {
  var width = window.innerWidth;
  var inScroll = function (e) { return e.closest(".scroll") !== null && !e.classList.contains("scroll"); };
  var wide = Array.from(document.body.querySelectorAll("*")).filter(function (e) {
    return !inScroll(e) && e.getBoundingClientRect().right > width + 0.5;
  }).map(function (e) { return e.tagName.toLowerCase() + "." + e.className; });
  var out = {
    width: width,
    scrollWidth: document.documentElement.scrollWidth,
    verdictRows: Array.from(document.querySelectorAll("table.verdict tbody tr")).map(function (r) {
      return r.getBoundingClientRect().height;
    }),
    wider: wide.slice(0, 5),
    // how much the page shrinks each figure: below 1 its 8 pt text is drawn smaller than 8 pt
    imageScale: Array.from(document.images).map(function (i) { return i.clientWidth / i.naturalWidth; }),
  };
  var pre = document.createElement("pre");
  pre.id = "xlgm-layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"""


def layout(report: Path, width: int, tmp_path: Path) -> dict:
    """The layout facts of `report` in a window `width` px wide."""
    page = tmp_path / f"layout-{width}.html"
    page.write_text(report.read_text().replace("</body>", f"<script>{MEASURE}</script></body>"))
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # the tests may run as root (CI)
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={width},900",
        "--dump-dom",
        page.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    text = dom.split('<pre id="xlgm-layout">', 1)[1].split("</pre>", 1)[0]
    return json.loads(text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))


def check_layout(report: Path, tmp_path: Path, verdict_rows: int) -> None:
    for width in (1400, 1280):
        facts = layout(report, width, tmp_path)
        assert facts["width"] == width
        assert facts["scrollWidth"] <= width, f"page wider than the {width} px window: {facts}"
        assert not facts["wider"], f"elements past the window's edge at {width} px: {facts['wider']}"
        if width == 1400:
            rows = facts["verdictRows"]
            assert len(rows) == 2 * verdict_rows  # each measure: its numbers, then its line of text
            assert max(rows) < MAX_ROW_PX, f"verdict rows of {max(rows):.0f} px at 1400 px: {rows}"
            assert facts["imageScale"] and min(facts["imageScale"]) >= 1.0, facts["imageScale"]


def test_report_layout_with_the_shipped_verdict(tiny_study, tmp_path):
    """The tiny study's report with the shipped study's verdict and health (13 measures, long reasons)."""
    from xlgm.study.analyze import analysis_tables, load_study, resolve_study
    from xlgm.study.report import build_report, load_analysis_files, read_study_records

    (tmp_path / "analysis").mkdir()
    for name in ("verdict.csv", "health.csv"):
        shutil.copy(RESULTS / "analysis" / name, tmp_path / "analysis" / name)
    data = load_study(*resolve_study(tiny_study))
    analysis = load_analysis_files(tmp_path)
    page = build_report(data, analysis_tables(data), None, analysis, read_study_records(data))[0]
    assert page.count('<tr class="text">') == 13
    path = tmp_path / "report.html"
    path.write_text(page)
    check_layout(path, tmp_path, verdict_rows=13)


@pytest.mark.slow
def test_shipped_study_report_layout(tmp_path):
    """The report of the shipped CPU study (results/xnli-e5-cpu), built from a copy of its folder."""
    from xlgm.study.report import report_study

    folder = tmp_path / "xnli-e5-cpu"
    shutil.copytree(RESULTS, folder, ignore=shutil.ignore_patterns("report.html", "report.md", "figures"))
    check_layout(report_study(folder, echo=False), tmp_path, verdict_rows=13)
