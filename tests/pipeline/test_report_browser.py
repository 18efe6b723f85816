"""report.html in a real browser: headless Chromium renders it without errors, draws the figures, and the
numbers it shows are the manifest's. Skips where Chromium is absent (CI installs Debian's `chromium`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report_html import FIGURES, ROW_SETS, tables

from pipeline.manifest import Manifest
from pipeline.report import plots
from pipeline.report.sections import p50_cell

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


def test_chromium_renders_the_report(finished_run: Path, tmp_path: Path) -> None:
    """The DOM Chromium builds holds the three figures and the manifest's figures in its tables; a screenshot
    is drawn; the browser logs no console or page error."""
    page = (finished_run / "report.html").resolve()
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr
    for figure_id in FIGURES:
        assert f'id="{figure_id}"' in dom.stdout
    assert dom.stdout.count("<svg") == len(FIGURES)
    manifest = Manifest.load(finished_run / "manifest.json")
    header, *rows = tables(dom.stdout)[0]
    assert [dict(zip(header, row))["top-1 %"] for row in rows] == [f"{m.accuracy:.2f}" for m in manifest.measurements]
    assert [dict(zip(header, row))["p50 ms"] for row in rows] == [p50_cell(m.latency) for m in manifest.measurements]
    shot = tmp_path / "report.png"
    drawn = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert drawn.returncode == 0 and shot.stat().st_size > 20_000, drawn.stderr[-2000:]


# Layout as the browser draws it (its fonts, not matplotlib's metrics): the script appended to a page lists, per
# figure, tick labels that overlap, a legend over the plotted area, and markers outside it.
LAYOUT_CHECK = """
(() => {
  const union = (rects) => rects.reduce((a, r) => ({
    left: Math.min(a.left, r.left), right: Math.max(a.right, r.right),
    top: Math.min(a.top, r.top), bottom: Math.max(a.bottom, r.bottom),
  }));
  const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const within = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5
    && a.bottom <= b.bottom + 0.5;
  const found = [];
  let figures = 0;
  for (const svg of document.querySelectorAll("figure svg")) {
    figures += 1;
    const name = svg.closest("figure").id;
    const axes = svg.querySelector('g[id$="-axes_1"]');
    const frame = axes.querySelector(':scope > g[id$="-patch_2"]').getBoundingClientRect();
    for (const kind of ["xtick", "ytick"]) {
      const boxes = [...svg.querySelectorAll(`g[id*="-${kind}_"]`)]
        .map((g) => [...g.querySelectorAll("text")].map((t) => t.getBoundingClientRect()))
        .filter((rects) => rects.length)
        .map(union);
      boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
        if (overlap(a, b)) found.push(`${name}: ${kind} labels overlap`);
      }));
    }
    for (const legend of svg.querySelectorAll('g[id*="-legend_"]')) {
      if (overlap(legend.getBoundingClientRect(), frame)) found.push(`${name}: legend over the axes`);
    }
    for (const marker of axes.querySelectorAll(':scope > g[id*="-line2d_"] use')) {
      if (!within(marker.getBoundingClientRect(), frame)) found.push(`${name}: marker outside the axes`);
    }
  }
  const report = document.createElement("pre");
  report.id = "layout-check";
  report.textContent = JSON.stringify({ figures, found: [...new Set(found)] });
  document.body.append(report);
})();
"""


def layout_problems(tmp_path: Path, page: str) -> dict:
    """What ``LAYOUT_CHECK`` finds in ``page`` as headless Chromium lays it out: {"figures": n, "found": [...]}."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", f"<script>{LAYOUT_CHECK}</script></body>"))
    dom = chromium(tmp_path, "--dump-dom", checked.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    return json.loads(re.search(r'<pre id="layout-check">([^<]*)</pre>', dom.stdout).group(1))


@pytest.mark.parametrize("rows", list(ROW_SETS))
def test_figures_lay_out_in_chromium(tmp_path: Path, rows: str) -> None:
    """With 1, 2, 8 close and 20 long-labelled rows (0.01–2000 ms, 10–100 %), Chromium draws every figure with
    no overlapping tick labels, no legend over the plotted area and every marker inside it."""
    measurements = ROW_SETS[rows]()
    sizes = {m.artifact: 2**10 * 5**i for i, m in enumerate(measurements)}
    svgs = [
        plots.accuracy_latency_svg(measurements),
        plots.size_svg(sizes, plots.artifact_colors(measurements)),
        plots.latency_svg(measurements),
    ]
    body = "".join(f'<figure id="{name}">{svg}</figure>' for name, svg in zip(FIGURES, svgs))
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}</body></html>"
    assert layout_problems(tmp_path, page) == {"figures": 3, "found": []}


def test_report_figures_lay_out_in_chromium(finished_run: Path, tmp_path: Path) -> None:
    """The finished run's report.html, as Chromium lays it out: the same checks on its own figures."""
    page = (finished_run / "report.html").read_text()
    assert layout_problems(tmp_path, page) == {"figures": len(FIGURES), "found": []}
