"""The HTML report: self-contained, plots and overlays present, and it loads in headless Chromium without errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medseg.evaluation import evaluate
from medseg.evaluation.report import render_report, write_report

pytest.importorskip("matplotlib", reason="the HTML report needs matplotlib: pip install 'medseg[report]'")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]

# Injected into a copy of the report: record script errors, failed resource loads and console.error calls on the
# <html> element, where --dump-dom shows them.
ERROR_HOOK = """<script>
(function () {
  var root = document.documentElement;
  function note(text) { root.setAttribute('data-js-errors', (root.getAttribute('data-js-errors') || '') + text + ';'); }
  window.addEventListener('error', function (e) {
    note(e.message || ('failed to load ' + ((e.target && (e.target.src || e.target.href)) || 'a resource')));
  }, true);
  window.addEventListener('unhandledrejection', function (e) { note('unhandled rejection ' + e.reason); });
  var original = console.error;
  console.error = function () {
    note('console.error ' + Array.prototype.join.call(arguments, ' '));
    original.apply(console, arguments);
  };
})();
</script>"""

# Appended after the report's own script: sort the case table by Dice (one click: ascending) and record the order.
SORT_PROBE = """<script>
(function () {
  var table = document.getElementById('cases');
  var heads = table.tHead.rows[0].cells, col = -1;
  for (var i = 0; i < heads.length; i++) { if (heads[i].textContent.trim() === 'Dice') { col = i; } }
  heads[col].click();
  var values = Array.prototype.map.call(table.tBodies[0].rows, function (r) {
    return r.cells[col].getAttribute('data-v');
  });
  document.body.setAttribute('data-sorted-dice', values.join(','));
})();
</script>"""


@pytest.fixture()
def report_result(case_folders):
    pred, ref, images = case_folders()
    return evaluate(pred, ref, images=images, nsd_tolerances_mm=[1.0])


def test_report_is_self_contained(report_result, tmp_path: Path) -> None:
    path = write_report(report_result, tmp_path / "report.html", worst=2)
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)  # nothing fetched
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", html, re.I)
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert html.count("<svg") == len(report_result.metric_keys) == 6  # one plot per metric
    assert html.count("<img") == 2  # c3 and c2, the two worst cases: one three-plane picture each
    assert html.count("<tr class=") == 6 and "<tr class=missed>" in html
    assert "c3 — foreground Dice" in html


def test_report_without_images_says_so(case_folders) -> None:
    pred, ref, _ = case_folders()
    html = render_report(evaluate(pred, ref, metrics=["dice", "hd95"]), worst=1)
    assert "no image: pass --images" in html and html.count("<svg") == 2


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"headless browser check skipped: {CHROMIUM} not found (Debian/Ubuntu: apt-get install chromium; "
    ".ci/run installs it)",
)
def test_report_renders_in_headless_chromium(report_result, tmp_path: Path) -> None:
    html = render_report(report_result, worst=3)
    probe = html.replace("<head>", "<head>" + ERROR_HOOK, 1).replace("</body>", SORT_PROBE + "</body>", 1)
    page = tmp_path / "report.html"
    page.write_text(probe, encoding="utf-8")
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    dom = done.stdout
    assert done.returncode == 0 and "<body" in dom, done.stderr[-2000:]
    errors = re.search(r'data-js-errors="([^"]*)"', dom)
    assert errors is None, errors.group(1)
    assert "Uncaught" not in done.stderr
    assert 'data-ready="1"' in dom  # the report's own script ran to the end
    assert dom.count("<svg") >= len(report_result.metric_keys) and dom.count("<img") >= 1
    sorted_dice = [float(v) for v in re.search(r'data-sorted-dice="([^"]*)"', dom).group(1).split(",")]
    assert sorted_dice == sorted(sorted_dice) and len(sorted_dice) == 6
