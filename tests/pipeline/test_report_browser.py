"""report.html in a real browser: headless Chromium renders it without errors, draws the figures, and the
numbers it shows are the manifest's. Skips where Chromium is absent (CI installs Debian's `chromium`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_report_html import FIGURES, tables

from pipeline.manifest import Manifest

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
    assert [dict(zip(header, row))["p50 ms"] for row in rows] == [
        f"{m.latency.p50_ms:.3f}" for m in manifest.measurements
    ]
    shot = tmp_path / "report.png"
    drawn = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert drawn.returncode == 0 and shot.stat().st_size > 20_000, drawn.stderr[-2000:]
