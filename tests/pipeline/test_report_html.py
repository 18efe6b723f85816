"""report.html: written beside report.md, self-contained, three inline figures, every figure from the manifest."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import with_p50
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure

from pipeline.manifest import LatencyStats, Manifest, Measurement, Timing
from pipeline.report.html import render_html
from pipeline.report.plots import accuracy_latency_figure, artifact_colors, latency_figure, pareto_front, size_figure
from pipeline.report.sections import p50_cell

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
        assert row["p50 ms"] == p50_cell(m.latency) and row["p90 ms"] == f"{m.latency.p90_ms:.3f}"
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
        assert row["p50 ms"] == p50_cell(t.latency) and row["p99 ms"] == f"{t.latency.p99_ms:.3f}"
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


# Figures laid out for any rows and ranges: built from synthetic rows (no run needed), checked on matplotlib's own
# layout (text extents from its renderer, markers in display coordinates), never on pixels.

LONG = "tflite-int8-qat on onnxruntime via tf2onnx"


def synthetic_row(
    artifact: str,
    accuracy: float,
    p50: float,
    *,
    runtime: str = "onnxruntime",
    provider: str = "CPU",
    p90: float | None = None,
    p99: float | None = None,
    mean: float | None = None,
    noisy: bool = False,
) -> Measurement:
    """One batch-1, 1-thread measurement; by default p90 = 1.3 × p50, p99 = 1.8 × p50, mean 1.1 × p50."""
    latency = LatencyStats(
        batch=1,
        runs=500,
        p50_ms=p50,
        p90_ms=p50 * 1.3 if p90 is None else p90,
        p99_ms=p50 * 1.8 if p99 is None else p99,
        mean_ms=p50 * 1.1 if mean is None else mean,
        stdev_ms=p50 * 0.2,
        noisy=noisy,
    )
    timing = Timing(threads=1, latency=latency, throughput_ips=1000 / p50)
    return Measurement(
        artifact=artifact, runtime=runtime, provider=provider, accuracy=accuracy, timings=[timing], file_bytes=4096
    )


def _two_rows() -> list[Measurement]:
    """Extremes: 0.01 ms at 10 %, 2000 ms at 100 % with its mean beyond p99 (a heavy tail)."""
    return [
        synthetic_row("teacher", 100.0, 1500.0, runtime="pytorch", mean=2600.0),
        synthetic_row("student", 10.0, 0.01, runtime="pytorch"),
    ]


def _eight_close_rows() -> list[Measurement]:
    """Less than a decade of latency (0.044–0.069 ms) and 0.07 points of accuracy; one mean beyond p99."""
    return [
        synthetic_row(f"onnx-int8-v{i}", 90.9 + 0.01 * i, 0.044 + 0.0035 * i, mean=0.15 if i == 3 else None)
        for i in range(8)
    ]


def _twenty_long_rows() -> list[Measurement]:
    """Long labels, 0.01–2000 ms, 10–100 %: some means beyond p99 or below p50, some rows noisy."""
    rows = []
    for i in range(20):
        p50 = 0.01 * (2000 / 0.01) ** (i / 19)
        artifact = f"{LONG}-{i}" if i % 4 == 0 else f"tflite-int8-qat-{i}"
        runtime, provider = ("tflite", "XNNPACK") if i % 2 else ("onnxruntime via tf2onnx", "CPUExecutionProvider")
        mean = p50 * 5.4 if i % 5 == 0 else p50 * 0.8 if i % 7 == 3 else None
        accuracy = 10 + 90 * ((i * 7) % 20) / 19
        rows.append(
            synthetic_row(artifact, accuracy, p50, runtime=runtime, provider=provider, mean=mean, noisy=i % 6 == 1)
        )
    return rows


def _one_row() -> list[Measurement]:
    """A single row spanning less than a hundredth of a decade."""
    return [synthetic_row("teacher", 99.0, 0.0441, p90=0.0443, p99=0.0447, mean=0.0444)]


ROW_SETS = {
    "2 rows": _two_rows,
    "8 close rows": _eight_close_rows,
    "20 long rows": _twenty_long_rows,
    "1 row": _one_row,
}


def _figures(rows: list[Measurement]) -> dict[str, Figure]:
    sizes = {m.artifact: 2**10 * 5**i for i, m in enumerate(rows)}  # 1 KiB up to GiBs
    built = {
        "accuracy-latency": accuracy_latency_figure(rows),
        "sizes": size_figure(sizes, artifact_colors(rows)),
        "latency": latency_figure(rows),
    }
    for figure in built.values():
        figure.draw_without_rendering()
    return built


@pytest.fixture(scope="module", params=list(ROW_SETS))
def drawn(request: pytest.FixtureRequest) -> tuple[list[Measurement], dict[str, Figure]]:
    rows = ROW_SETS[request.param]()
    return rows, _figures(rows)


def _tick_labels(axis) -> list:
    """The labels drawn on an axis, major and minor ticks."""
    return [label for label in axis.get_ticklabels(which="both") if label.get_visible() and label.get_text()]


def _overlaps(a, b, gap: float = 0.0) -> bool:
    return a.x0 < b.x1 + gap and b.x0 < a.x1 + gap and a.y0 < b.y1 + gap and b.y0 < a.y1 + gap


def test_tick_labels_never_overlap(drawn) -> None:
    """On every axis of every figure, no two tick labels (row names included) touch: at least 4 px apart."""
    for name, figure in drawn[1].items():
        ax = figure.axes[0]
        renderer = figure.canvas.get_renderer()
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [label.get_window_extent(renderer) for label in _tick_labels(axis)]
            assert len(boxes) >= 2 or axis is ax.yaxis, f"{name}: fewer than two labelled ticks"
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    assert not _overlaps(a, b, gap=4), f"{name}: tick labels overlap"


def test_log_ticks_are_plain_milliseconds(drawn) -> None:
    """Log axes are labelled with plain numbers (no 10^k mathtext) that are the ticks' own values."""
    for name in ("accuracy-latency", "latency"):
        ax = drawn[1][name].axes[0]
        assert ax.get_xscale() == "log"
        for label in _tick_labels(ax.xaxis):
            assert "$" not in label.get_text()
            assert float(label.get_text()) == pytest.approx(label.get_position()[0])


def test_every_mark_inside_the_axes(drawn) -> None:
    """Every marker (its whole width, and 2 pt clear of the frame), every latency line and every bar label lies
    inside its axes: nothing is clipped at, or drawn on, an edge."""
    for name, figure in drawn[1].items():
        ax = figure.axes[0]
        clear = 2 * figure.dpi / 72
        inside = ax.bbox.padded(-clear)
        for line in ax.lines:
            if line.get_marker() in (None, "None", ""):
                continue
            radius = line.get_markersize() * figure.dpi / 72 / 2
            for x, y in ax.transData.transform(line.get_xydata()):
                assert inside.x0 <= x - radius and x + radius <= inside.x1, f"{name}: marker clipped left/right"
                assert inside.y0 <= y - radius and y + radius <= inside.y1, f"{name}: marker clipped top/bottom"
        for collection in ax.collections:
            if isinstance(collection, LineCollection):
                for segment in collection.get_segments():
                    for x, y in ax.transData.transform(segment):
                        assert inside.x0 <= x <= inside.x1 and inside.y0 <= y <= inside.y1, f"{name}: line clipped"
            elif isinstance(collection, PathCollection):  # scatter markers: sizes are areas in points²
                radius = max(collection.get_sizes()) ** 0.5 * figure.dpi / 72 / 2
                for x, y in ax.transData.transform(collection.get_offsets()):
                    assert inside.x0 <= x - radius and x + radius <= inside.x1, f"{name}: marker clipped left/right"
                    assert inside.y0 <= y - radius and y + radius <= inside.y1, f"{name}: marker clipped top/bottom"
        renderer = figure.canvas.get_renderer()
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1, f"{name}: bar label clipped"


def test_legends_sit_outside_the_axes(drawn) -> None:
    """No legend covers the plotted area, and each fits within the figure's width."""
    for name in ("accuracy-latency", "latency"):
        figure = drawn[1][name]
        ax, legend = figure.axes[0], figure.axes[0].get_legend()
        box = legend.get_window_extent(figure.canvas.get_renderer())
        assert not _overlaps(box, ax.bbox), f"{name}: legend over the axes"
        assert box.x1 <= figure.bbox.x1


def _row_segments(ax, y: float) -> list[tuple[float, float]]:
    """(start, end) of every horizontal line drawn at row ``y``."""
    return [
        (min(s[:, 0]), max(s[:, 0])) for collection in ax.collections for s in collection.get_segments() if s[0, 1] == y
    ]


def test_mean_lies_on_its_drawn_line(drawn) -> None:
    """Each row's mean marker sits on a line drawn for that row: within the solid p50–p99 line, or at the end
    of a dotted line drawn out to it when the mean is outside p50–p99."""
    rows, figures = drawn
    ax = figures["latency"].axes[0]
    means = [line for line in ax.lines if line.get_label() == "_mean"]
    assert len(means) == len(rows)
    for y, (m, line) in enumerate(zip(rows, means)):
        (x,), (row,) = line.get_xdata(), line.get_ydata()
        assert row == y and x == m.latency.mean_ms
        segments = _row_segments(ax, y)
        assert any(start <= x <= end for start, end in segments), f"row {y}: mean off its line"
        whisker = (m.latency.p50_ms, m.latency.p99_ms)
        outside = not whisker[0] <= m.latency.mean_ms <= whisker[1]
        dotted = [c for c in ax.collections if c.get_label() == "_beyond" and c.get_segments()[0][0, 1] == y]
        assert len(dotted) == outside


def test_latency_legend_names_every_mark(drawn) -> None:
    """The legend says what each mark is; the dotted line and hollow marks are named only when drawn."""
    rows, figures = drawn
    labels = [text.get_text() for text in figures["latency"].axes[0].get_legend().get_texts()]
    assert labels[:5] == ["p50 to p99", "p50", "p90", "p99", "mean"]
    outside = any(not m.latency.p50_ms <= m.latency.mean_ms <= m.latency.p99_ms for m in rows)
    assert ("out to a mean outside p50–p99" in labels) == outside
    assert ("hollow: noisy (rounds disagree)" in labels) == any(m.latency.noisy for m in rows)


def test_noisy_rows_are_hollow(drawn) -> None:
    """A noisy row's p50 marker is hollow in both latency figures, and its row label says so."""
    rows, figures = drawn
    p50s = [line for line in figures["latency"].axes[0].lines if line.get_label() == "_p50"]
    points = [line for line in figures["accuracy-latency"].axes[0].lines if line.get_marker() not in ("None", None)]
    labels = [label.get_text() for label in figures["latency"].axes[0].get_yticklabels()]
    for m, p50, point, label in zip(rows, p50s, points, labels):
        assert (p50.get_markerfacecolor() == "white") == m.latency.noisy
        assert (point.get_markerfacecolor() == "none") == m.latency.noisy
        assert label.endswith(", noisy") == m.latency.noisy


def test_artifact_colours_distinct_up_to_twenty() -> None:
    """Twenty artifacts get twenty colours (the first ten are matplotlib's C0–C9, as with fewer artifacts)."""
    rows = _twenty_long_rows()
    colors = artifact_colors(rows)
    assert len(set(colors.values())) == 20
    assert list(colors.values())[:10] == list(artifact_colors(rows[:10]).values())
