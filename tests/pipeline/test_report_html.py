"""report.html: written beside report.md, self-contained, three inline figures, every figure from the manifest."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import with_p50

from pipeline.manifest import Manifest
from pipeline.plots import pareto_front
from pipeline.report_html import render_html

FIGURES = ["figure-accuracy-latency", "figure-sizes", "figure-latency"]


class _Tables(HTMLParser):
    """Text of every table cell, as tables → rows → cells (tags inside a cell dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def markdown_table(text: str, header_start: str) -> list[list[str]]:
    """Rows (header first) of the report.md table whose header starts with ``header_start``."""
    block = text[text.index(header_start) :].split("\n\n")[0].splitlines()
    return [line.strip("| ").split(" | ") for line in block if not line.startswith("|---")]


@pytest.fixture(scope="module")
def manifest(finished_run: Path) -> Manifest:
    return Manifest.load(finished_run / "manifest.json")


@pytest.fixture(scope="module")
def page(finished_run: Path) -> str:
    return (finished_run / "report.html").read_text()


def test_html_is_the_manifest_rendered(page: str, manifest: Manifest) -> None:
    """The report stage writes report.html beside report.md, rendered from the manifest alone (reproducibly)."""
    assert page == render_html(manifest)


def test_html_is_self_contained(page: str) -> None:
    """No scripts, stylesheets, images or fonts fetched from anywhere: nothing but in-page references."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    lowered = page.lower()
    for fetching in ("<script", "<link", "<img", "<iframe", "<object", "@import"):
        assert fetching not in lowered
    assert set(re.findall(r'xlink:href="(.)', page)) <= {"#"}
    assert set(re.findall(r"""url\(\s*["']?(.)""", page)) <= {"#"}


@pytest.mark.parametrize("figure_id", FIGURES)
def test_each_figure_is_inline_svg(page: str, figure_id: str) -> None:
    """Accuracy vs latency, sizes and latency spread are each one well-formed inline <svg> with a caption."""
    figure = page[page.index(f'<figure id="{figure_id}">') :].split("</figure>")[0]
    assert figure.count("<svg") == 1 and "<figcaption>" in figure
    svg = ElementTree.fromstring(figure[figure.index("<svg") : figure.index("</svg>") + len("</svg>")])
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and len(svg.findall(".//{*}path")) > 5


def test_svg_ids_are_unique(page: str) -> None:
    """Three figures inlined in one page never share an element id, and every in-page reference resolves."""
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    references = re.findall(r'(?:url\(#|xlink:href="#)([^)"]+)', page)
    assert references and set(references) <= set(ids)


def test_main_table_figures_match_manifest(page: str, manifest: Manifest) -> None:
    """One row per measurement with its accuracy, agreement, p50/p90, size and comparisons with the teacher
    (speed-up and size ×), formatted from the manifest's figures."""
    header, *rows = tables(page)[0]
    assert len(rows) == len(manifest.measurements)
    (teacher,) = [m for m in manifest.measurements if m.artifact == "teacher"]
    for cells, m in zip(rows, manifest.measurements):
        row = dict(zip(header, cells))
        assert row["artifact"] == m.artifact
        assert row["top-1 %"] == f"{m.accuracy:.2f}" and row["agreement %"] == f"{m.agreement:.2f}"
        assert row["Δ vs teacher"] == f"{m.accuracy - teacher.accuracy:+.2f}"
        assert row["p50 ms"] == f"{m.latency.p50_ms:.3f}" and row["p90 ms"] == f"{m.latency.p90_ms:.3f}"
        assert row["speed-up"] == f"{teacher.latency.p50_ms / m.latency.p50_ms:.2f}×"
        assert row["size ×"] == f"{teacher.file_bytes / m.file_bytes:.2f}×"


def test_latency_table_has_every_timing(page: str, manifest: Manifest) -> None:
    """The latency table holds each measurement's every batch × threads timing with its manifest figures."""
    header, *rows = tables(page)[2]
    timings = [(m, t) for m in manifest.measurements for t in m.timings]
    assert len(rows) == len(timings)
    for cells, (m, t) in zip(rows, timings):
        row = dict(zip(header, cells))
        assert (row["artifact"], row["batch"], row["threads"]) == (m.artifact, str(t.latency.batch), str(t.threads))
        assert row["p50 ms"] == f"{t.latency.p50_ms:.3f}" and row["p99 ms"] == f"{t.latency.p99_ms:.3f}"
        assert row["GMAC/s"] == f"{t.gmac_per_s:.2f}"


def test_tables_are_report_md_tables(page: str, finished_run: Path) -> None:
    """Every table of the page holds report.md's cells, markup aside."""
    text = (finished_run / "report.md").read_text()
    main, int8, latency, footprint = tables(page)
    assert main == markdown_table(text, "| artifact | runtime | size")
    assert int8 == [[cell.replace("`", "") for cell in row] for row in markdown_table(text, "| artifact | calib")]
    assert latency == markdown_table(text, "| artifact | runtime | batch")
    assert footprint == markdown_table(text, "| artifact | runtime | file")


def test_text_is_escaped(manifest: Manifest) -> None:
    """Names from the manifest are escaped, never markup."""
    hostile = "<script>alert(1)</script>&"
    measurements = [
        m.model_copy(update={"artifact": hostile}) if m.artifact == "student" else m for m in manifest.measurements
    ]
    page = render_html(manifest.model_copy(update={"measurements": measurements}))
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in page


def test_without_measurements(manifest: Manifest) -> None:
    """Before bench the page says so and draws nothing."""
    page = render_html(manifest.model_copy(update={"measurements": [], "skipped": []}))
    assert "No measurements yet" in page and "<svg" not in page and "<table" not in page


def test_pareto_front(manifest: Manifest) -> None:
    """The front keeps rows nothing beats on both accuracy and latency, fastest first."""
    base = manifest.measurements[0]

    def row(name: str, accuracy: float, p50: float):
        return with_p50(base, p50).model_copy(update={"artifact": name, "accuracy": accuracy})

    rows = [row("slow-best", 99, 5), row("dominated", 90, 2), row("fast", 95, 1), row("tie-worse", 94, 1)]
    rows += [row("mid", 97, 3), row("same-as-mid", 97, 3)]
    assert [m.artifact for m in pareto_front(rows)] == ["fast", "mid", "slow-best"]
