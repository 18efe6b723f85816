"""The report's figures as inline SVG (matplotlib, no pyplot): accuracy vs latency, file sizes, latency spread.

Each figure is laid out for any number of rows and any range of values: a row gets the height its wrapped label
needs, axis limits leave room for the markers at either end, ticks are the densest set whose labels do not
overlap (log axes in plain milliseconds: 0.05, 0.1, 0.2 …), and legends sit outside the axes, clear of the data.
"""

from __future__ import annotations

import io
import math
import re

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pipeline.formats import runtime_format
from pipeline.manifest import Measurement

TORCH_MARKER = "o"  # PyTorch rows; a format's own runtime has its table marker, anything else (tf2onnx) a diamond
OTHER_MARKER = "D"
_NO_METADATA = {"Format": None, "Type": None, "Creator": None, "Date": None}
_WIDTH_IN = 8.0
_TICK_PT = 9.0  # tick and row labels
_LEGEND_PT = 8.0
_MARKER_PT = 7.0  # marker size across
_EDGE_ROOM_PT = 12.0  # least space between an axis end and the centre of the outermost marker
_LABEL_GAP_PT = 8.0  # least space between two neighbouring tick labels
_WRAP_CHARS = 48  # row labels wrap at spaces beyond this many characters
_LINE_IN = _TICK_PT * 1.25 / 72  # height of one line of a row label
_MIN_ROW_IN = 0.3
# Log-axis tick sets, densest first: mantissas of each labelled decade, and the step between labelled decades.
_LOG_TICK_SETS: tuple[tuple[tuple[float, ...], int], ...] = (
    (tuple(k / 10 for k in range(10, 100)), 1),
    (tuple(k / 2 for k in range(2, 20)), 1),
    (tuple(range(1, 10)), 1),
    ((1, 2, 3, 5), 1),
    ((1, 2, 5), 1),
    ((1, 3), 1),
    ((1,), 1),
    ((1,), 2),
    ((1,), 3),
    ((1,), 5),
)
_GRID_MANTISSAS = tuple(range(1, 10))


def row_label(m: Measurement) -> str:
    """How a figure names one artifact × runtime: the thread count is the headline timing's."""
    return f"{m.artifact} · {m.runtime} ({m.provider}, {m.threads} thr)"


def runtime_marker(runtime: str) -> str:
    """The matplotlib marker of rows on ``runtime``: PyTorch's, a format's own runtime's, or a diamond."""
    if runtime == "pytorch":
        return TORCH_MARKER
    fmt = runtime_format(runtime)
    return fmt.marker if fmt is not None else OTHER_MARKER


def artifact_colors(measurements: list[Measurement]) -> dict[str, str]:
    """One colour per artifact, in order of first measurement, the same in every figure: tab10, or beyond 10
    artifacts tab20 (distinct up to 20; beyond that colours repeat and the runtime marker tells rows apart)."""
    names = list(dict.fromkeys(m.artifact for m in measurements))
    palette = matplotlib.colormaps["tab10"].colors
    if len(names) > 10:  # tab20: its ten strong colours (tab10's) first, then their light twins
        palette = palette + matplotlib.colormaps["tab20"].colors[1::2]
    return {name: to_hex(palette[i % len(palette)]) for i, name in enumerate(names)}


def pareto_front(measurements: list[Measurement]) -> list[Measurement]:
    """Rows no other row beats on both test top-1 (higher) and p50 latency at batch 1 (lower), fastest first."""
    front: list[Measurement] = []
    for m in sorted(measurements, key=lambda m: (m.latency.p50_ms, -m.accuracy)):
        if not front or m.accuracy > front[-1].accuracy:
            front.append(m)
    return front


def figure_svg(figure: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element to inline: no XML prolog or metadata, text kept as text, every id
    (and every reference to one) prefixed with ``name`` so figures on one page never share an id."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgepipe"}):
        figure.savefig(buffer, format="svg", metadata=_NO_METADATA, bbox_inches="tight")
    text = buffer.getvalue()
    text = re.sub(r'(<[^<>]*?\sid=")', rf"\1{name}-", text[text.index("<svg") :])
    return re.sub(r'(url\(#|xlink:href="#)', rf"\1{name}-", text)


def _new_figure(height_in: float, axes_height_in: float | None = None) -> tuple[Figure, Axes]:
    """A figure ``_WIDTH_IN`` wide with one axes, drawable off-screen (text can be measured before saving).

    With ``axes_height_in``, the axes is that tall (rows of a fixed height) and the rest of ``height_in`` is
    split 1:3 above and below it for the axis label; ``bbox_inches="tight"`` trims or extends the saved figure."""
    figure = Figure(figsize=(_WIDTH_IN, height_in))
    FigureCanvasAgg(figure)
    if axes_height_in is not None:
        spare = (height_in - axes_height_in) / height_in
        figure.subplots_adjust(bottom=spare * 0.75, top=1 - spare * 0.25)
    return figure, figure.subplots()


def _px(figure: Figure, points: float) -> float:
    return points * figure.dpi / 72


def _with_room(lo: float, hi: float, length_px: float, room_px: float, log: bool) -> tuple[float, float]:
    """Axis limits holding data from ``lo`` to ``hi`` ``room_px`` inside each end of an axis ``length_px`` long
    (log: room measured in decades); a single value gets a span of 1 unit (log: a tenth of a decade)."""
    to_axis, from_axis = (math.log10, lambda v: 10**v) if log else (float, float)
    a, b = to_axis(lo), to_axis(hi)
    if b - a <= 0:
        a, b = a - (0.05 if log else 0.5), b + (0.05 if log else 0.5)
    pad = (b - a) * room_px / (length_px - 2 * room_px)
    return from_axis(a - pad), from_axis(b + pad)


def _log_ticks(lo: float, hi: float, mantissas: tuple[float, ...], step: int) -> list[float]:
    """Values mantissa × 10^k within [lo, hi] (k a multiple of ``step``), parsed from decimal text so that
    0.03 is the float nearest 0.03."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    values = (float(f"{mantissa}e{k}") for k in decades if k % step == 0 for mantissa in mantissas)
    return sorted(v for v in values if lo <= v <= hi)


def _ms(value: float) -> str:
    """A tick label in milliseconds: 0.05, 2, 1500."""
    return f"{value:g}"


def _labels_fit(ax: Axes, axis: str, ticks: list[float], labels: list[str]) -> bool:
    """Whether the labels, centred on their ticks, leave ``_LABEL_GAP_PT`` between neighbours, measured in DejaVu
    Sans (the font the SVG names first; the usual substitutes, Arial or Helvetica, are narrower)."""
    gap = _px(ax.figure, _LABEL_GAP_PT)
    length = ax.bbox.width if axis == "x" else ax.bbox.height
    if (len(ticks) - 1) * gap > length:  # too many to fit whatever their width
        return False
    renderer, font = ax.figure.canvas.get_renderer(), FontProperties(size=_TICK_PT)
    extents = []
    for tick, label in zip(ticks, labels):
        width, height, _ = renderer.get_text_width_height_descent(label, font, ismath=False)
        centre = ax.transData.transform((tick, 0) if axis == "x" else (0, tick))[0 if axis == "x" else 1]
        half = (width if axis == "x" else height) / 2
        extents.append((centre - half, centre + half))
    extents.sort()
    return all(b[0] - a[1] >= gap for a, b in zip(extents, extents[1:]))


def _log_ms_axis(ax: Axes, lo: float, hi: float) -> None:
    """Log-scale x limits ``lo``..``hi`` (widened to the nearest ticks of the densest set when fewer than two
    fall inside), labelled with the densest tick set whose labels fit, an unlabelled grid at 1…9 × 10^k."""
    ax.set_xscale("log")
    dense = _log_ticks(lo / 10, hi * 10, *_LOG_TICK_SETS[0])
    if len([v for v in dense if lo <= v <= hi]) < 2:
        lo, hi = max(v for v in dense if v <= lo), min(v for v in dense if v >= hi)
    ax.set_xlim(lo, hi)
    candidates = [ticks for ticks in (_log_ticks(lo, hi, *tick_set) for tick_set in _LOG_TICK_SETS) if ticks]
    ticks = next((t for t in candidates if _labels_fit(ax, "x", t, [_ms(v) for v in t])), candidates[-1])
    ax.set_xticks(ticks, [_ms(v) for v in ticks], fontsize=_TICK_PT)
    ax.set_xticks([v for v in _log_ticks(lo, hi, _GRID_MANTISSAS, 1) if v not in ticks], minor=True)
    ax.tick_params(axis="x", which="minor", labelbottom=False)


def _linear_axis(ax: Axes, axis: str, lo: float, hi: float, clip: tuple[float, float] | None = None) -> None:
    """Linear limits ``lo``..``hi`` with round ticks (1, 2, 2.5, 5 × 10^k; only those within ``clip`` when given),
    the most that fit, labelled with the decimals their step needs."""
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)
    low, high = (max(lo, clip[0]), min(hi, clip[1])) if clip else (lo, hi)
    for bins in (12, 10, 8, 6, 5, 4, 3, 2, 1):
        ticks = [v for v in MaxNLocator(bins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if low <= v <= high]
        labels = _decimal_labels(ticks)
        if _labels_fit(ax, axis, ticks, labels):
            break
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, labels, fontsize=_TICK_PT)


def _decimal_labels(ticks: list[float]) -> list[str]:
    """Evenly spaced ticks as text with the fewest decimals that write their step exactly (2.5 → one)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * max(1.0, step)), 6)
    return [f"{v:.{decimals}f}" for v in ticks]


def _wrap(label: str) -> str:
    """A row label broken into lines of at most ``_WRAP_CHARS`` where spaces allow: the last space before "(" or
    "·" that fits, else the last after ",", else the last; a word longer than a line kept whole."""
    lines, rest = [], label
    while len(rest) > _WRAP_CHARS:
        spaces = [i for i in range(1, _WRAP_CHARS + 1) if rest[i] == " "]
        if not spaces:
            break
        before_part = [i for i in spaces if rest[i + 1] in "(·"]
        after_comma = [i for i in spaces if rest[i - 1] == ","]
        cut = (before_part or after_comma or spaces)[-1]
        lines.append(rest[:cut])
        rest = rest[cut + 1 :]
    return "\n".join([*lines, rest])


def _row_pitch_in(labels: list[str]) -> float:
    """Height of one row: the tallest wrapped label's lines, at least ``_MIN_ROW_IN``."""
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    return max(_MIN_ROW_IN, lines * _LINE_IN + 0.1)


def _rows_figure(labels: list[str]) -> tuple[Figure, Axes]:
    """A figure with one row per label (wrapped), first row on top, rows ``_row_pitch_in`` apart."""
    wrapped = [_wrap(label) for label in labels]
    axes_height = _row_pitch_in(wrapped) * max(len(labels), 1)
    figure, ax = _new_figure(axes_height + 0.8, axes_height)
    ax.set_yticks(range(len(labels)), wrapped, fontsize=_TICK_PT)
    ax.set_ylim(max(len(labels), 1) - 0.5, -0.5)
    return figure, ax


def _legend(ax: Axes, handles: list, where: str) -> None:
    """A legend outside the axes, ``below`` it (clear of tick and axis labels) or ``above`` it, left-aligned with
    it, in the most columns that fit the figure's width."""
    figure = ax.figure
    renderer = figure.canvas.get_renderer()
    figure.draw_without_rendering()
    outer = ax.get_tightbbox(renderer)
    gap = _px(figure, 6)
    y = outer.y0 - gap if where == "below" else outer.y1 + gap
    anchor = (0, ax.transAxes.inverted().transform((0, y))[1])
    loc = "upper left" if where == "below" else "lower left"
    for ncols in range(len(handles), 0, -1):
        legend = ax.legend(
            handles=handles, loc=loc, bbox_to_anchor=anchor, ncols=ncols, fontsize=_LEGEND_PT, borderaxespad=0
        )
        if legend.get_window_extent(renderer).x1 <= figure.bbox.x1:
            return


def accuracy_latency_figure(measurements: list[Measurement]) -> Figure:
    """Test top-1 against p50 latency at batch 1, one point per row (colour: artifact; marker: runtime; hollow: a
    noisy p50), the Pareto front as a step line, the legend below."""
    figure, ax = _new_figure(4.5)
    colors = artifact_colors(measurements)
    for m in measurements:
        noisy = m.latency.noisy
        ax.plot(
            [m.latency.p50_ms],
            [m.accuracy],
            runtime_marker(m.runtime),
            ms=_MARKER_PT,
            color=colors[m.artifact],
            mfc="none" if noisy else colors[m.artifact],
            mew=1.5,
            label=row_label(m) + (", noisy p50" if noisy else ""),
            zorder=3,
        )
    front = pareto_front(measurements)
    ax.step(
        [m.latency.p50_ms for m in front],
        [m.accuracy for m in front],
        where="post",
        color="0.4",
        linestyle="--",
        linewidth=1,
        label="Pareto front",
        zorder=2,
    )
    room = _px(figure, _EDGE_ROOM_PT)
    p50s = [m.latency.p50_ms for m in measurements]
    _log_ms_axis(ax, *_with_room(min(p50s), max(p50s), ax.bbox.width, room, log=True))
    accuracies = [m.accuracy for m in measurements]
    low, high = min(accuracies), max(accuracies)
    if high - low < 1:  # never magnify less than one point of top-1 to the whole height
        low, high = max(0.0, min(low, (low + high) / 2 - 0.5)), min(100.0, max(high, (low + high) / 2 + 0.5))
    _linear_axis(ax, "y", *_with_room(low, high, ax.bbox.height, room, log=False), clip=(0, 100))
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, which="both", linewidth=0.3)
    _legend(ax, ax.get_legend_handles_labels()[0], "below")
    return figure


def accuracy_latency_svg(measurements: list[Measurement]) -> str:
    """``accuracy_latency_figure`` as inline SVG."""
    return figure_svg(accuracy_latency_figure(measurements), "plot-accuracy-latency")


def size_figure(sizes: dict[str, int], colors: dict[str, str]) -> Figure:
    """Horizontal bars: bytes of each artifact's file, labelled in KiB, every label inside the axes."""
    names = list(sizes)
    kib = [sizes[name] / 1024 for name in names]
    figure, ax = _rows_figure(names)
    bars = ax.barh(range(len(names)), kib, color=[colors.get(name, "C7") for name in names], height=0.7)
    texts = [f"{value:.1f} KiB" for value in kib]
    ax.bar_label(bars, labels=texts, padding=3, fontsize=_TICK_PT - 1)
    renderer, font = figure.canvas.get_renderer(), FontProperties(size=_TICK_PT - 1)
    widest = max((renderer.get_text_width_height_descent(t, font, ismath=False)[0] for t in texts), default=0)
    length = ax.bbox.width
    room = widest + _px(figure, 3 + _LABEL_GAP_PT)  # the label's padding, then a gap to the axis end
    _linear_axis(ax, "x", 0, max(kib, default=1.0) * length / (length - room))
    ax.set_xlabel("file size (KiB)")
    return figure


def size_svg(sizes: dict[str, int], colors: dict[str, str]) -> str:
    """``size_figure`` as inline SVG."""
    return figure_svg(size_figure(sizes, colors), "plot-sizes")


def _latency_row(ax: Axes, y: int, m: Measurement, color: str) -> bool:
    """Row ``y``: a solid line from p50 to p99 (over all three percentiles) with each marked (hollow when noisy),
    the mean marked and, when it lies outside that line, a dotted line out to it. True when the mean lies outside."""
    stats = m.latency
    marked = (stats.p50_ms, stats.p90_ms, stats.p99_ms)
    ax.hlines(y, min(marked), max(marked), color=color, linewidth=2)
    beyond = not min(marked) <= stats.mean_ms <= max(marked)
    if beyond:
        end = min(marked) if stats.mean_ms < min(marked) else max(marked)
        low, high = min(end, stats.mean_ms), max(end, stats.mean_ms)
        ax.hlines(y, low, high, color=color, linewidth=1.2, linestyles=":", label="_beyond")
    face = "white" if stats.noisy else color
    for name, value, marker in (("p50", stats.p50_ms, "o"), ("p90", stats.p90_ms, "D"), ("p99", stats.p99_ms, "|")):
        width = 2 if marker == "|" else 1.2
        ax.plot([value], [y], marker, color=color, mfc=face, ms=_MARKER_PT, mew=width, label=f"_{name}")
    ax.plot([stats.mean_ms], [y], "x", color="black", ms=_MARKER_PT - 1, mew=1.5, label="_mean", zorder=4)
    return beyond


def _latency_legend(beyond: bool, noisy: bool) -> list[Line2D]:
    """What each mark of the latency figure is; the dotted line and hollow marks only when some row has them."""
    grey = "0.3"
    handles = [
        Line2D([], [], color=grey, linewidth=2, label="p50 to p99"),
        Line2D([], [], marker="o", linestyle="", color=grey, label="p50"),
        Line2D([], [], marker="D", linestyle="", color=grey, label="p90"),
        Line2D([], [], marker="|", linestyle="", color=grey, mew=2, ms=_MARKER_PT, label="p99"),
        Line2D([], [], marker="x", linestyle="", color="black", mew=1.5, label="mean"),
    ]
    if beyond:
        handles.append(Line2D([], [], color=grey, linewidth=1.2, linestyle=":", label="out to a mean outside p50–p99"))
    if noisy:
        handles.append(
            Line2D([], [], marker="o", linestyle="", color=grey, mfc="white", label="hollow: noisy (rounds disagree)")
        )
    return handles


def latency_figure(measurements: list[Measurement]) -> Figure:
    """Per row, the recorded batch-1 latency statistics: a line from p50 to p99 with p50, p90, p99 and the mean
    marked, and a dotted line out to a mean beyond them (a heavy tail: a few calls far slower than p99). The
    manifest keeps these statistics, not the raw samples, so no quartile box can be drawn."""
    labels = [f"{row_label(m)}, {m.latency.runs} runs" + (", noisy" if m.latency.noisy else "") for m in measurements]
    figure, ax = _rows_figure(labels)
    colors = artifact_colors(measurements)
    beyond = [_latency_row(ax, y, m, colors[m.artifact]) for y, m in enumerate(measurements)]
    ends = [v for m in measurements for v in (m.latency.p50_ms, m.latency.p90_ms, m.latency.p99_ms, m.latency.mean_ms)]
    _log_ms_axis(ax, *_with_room(min(ends), max(ends), ax.bbox.width, _px(figure, _EDGE_ROOM_PT), log=True))
    ax.set_xlabel("latency at batch 1 (ms, log scale)")
    ax.grid(True, axis="x", which="both", linewidth=0.3)
    _legend(ax, _latency_legend(any(beyond), any(m.latency.noisy for m in measurements)), "above")
    return figure


def latency_svg(measurements: list[Measurement]) -> str:
    """``latency_figure`` as inline SVG."""
    return figure_svg(latency_figure(measurements), "plot-latency")
