"""The report's figures as inline SVG (matplotlib, no pyplot): accuracy vs latency, file sizes, latency spread."""

from __future__ import annotations

import io
import re

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.manifest import Measurement

_RUNTIME_MARKERS = {"pytorch": "o", "onnxruntime": "s", "tflite": "^"}
_NO_METADATA = {"Format": None, "Type": None, "Creator": None, "Date": None}
_WIDTH_IN = 8.0


def row_label(m: Measurement) -> str:
    """How a figure names one artifact × runtime."""
    return f"{m.artifact} · {m.runtime} ({m.provider})"


def artifact_colors(measurements: list[Measurement]) -> dict[str, str]:
    """One colour per artifact, in order of first measurement, the same in every figure."""
    names = dict.fromkeys(m.artifact for m in measurements)
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def pareto_front(measurements: list[Measurement]) -> list[Measurement]:
    """Rows no other row beats on both test top-1 (higher) and p50 latency at batch 1 (lower), fastest first."""
    front: list[Measurement] = []
    for m in sorted(measurements, key=lambda m: (m.latency.p50_ms, -m.accuracy)):
        if not front or m.accuracy > front[-1].accuracy:
            front.append(m)
    return front


def _svg(figure: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element to inline: no XML prolog or metadata, text kept as text, every id
    (and every reference to one) prefixed with ``name`` so figures on one page never share an id."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgepipe"}):
        figure.savefig(buffer, format="svg", metadata=_NO_METADATA, bbox_inches="tight")
    text = buffer.getvalue()
    text = re.sub(r'(<[^<>]*?\sid=")', rf"\1{name}-", text[text.index("<svg") :])
    return re.sub(r'(url\(#|xlink:href="#)', rf"\1{name}-", text)


def _row_height(rows: int) -> float:
    return 1.2 + 0.3 * rows


def accuracy_latency_svg(measurements: list[Measurement]) -> str:
    """Test top-1 against p50 latency at batch 1, one point per row, with the Pareto front as a step line."""
    figure = Figure(figsize=(_WIDTH_IN, 4.5))
    ax = figure.subplots()
    colors = artifact_colors(measurements)
    for m in measurements:
        marker = _RUNTIME_MARKERS.get(m.runtime, "D")
        ax.scatter(m.latency.p50_ms, m.accuracy, marker=marker, color=colors[m.artifact], label=row_label(m), zorder=3)
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
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _svg(figure, "plot-accuracy-latency")


def size_svg(sizes: dict[str, int], colors: dict[str, str]) -> str:
    """Horizontal bars: bytes of each artifact's file, labelled in KiB."""
    names = list(sizes)
    kib = [sizes[name] / 1024 for name in names]
    figure = Figure(figsize=(_WIDTH_IN, _row_height(len(names))))
    ax = figure.subplots()
    bars = ax.barh(names, kib, color=[colors.get(name, "C7") for name in names])
    ax.bar_label(bars, labels=[f"{value:.1f} KiB" for value in kib], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.2)
    ax.set_xlabel("file size (KiB)")
    return _svg(figure, "plot-sizes")


def latency_svg(measurements: list[Measurement]) -> str:
    """Per row, the recorded batch-1 latency statistics: a line from p50 to p99 with p50, p90, p99 and mean
    marked (the manifest keeps these statistics, not the raw samples, so no quartile box can be drawn)."""
    figure = Figure(figsize=(_WIDTH_IN, _row_height(len(measurements))))
    ax = figure.subplots()
    colors = artifact_colors(measurements)
    for y, m in enumerate(measurements):
        stats, color = m.latency, colors[m.artifact]
        ax.hlines(y, stats.p50_ms, stats.p99_ms, color=color, linewidth=2)
        ax.plot([stats.p50_ms], [y], "o", [stats.p90_ms], [y], "D", [stats.p99_ms], [y], "|", color=color, ms=7)
        ax.plot([stats.mean_ms], [y], "x", color="black", ms=6)
    ax.set_yticks(range(len(measurements)), [f"{row_label(m)}, {m.latency.runs} runs" for m in measurements])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency at batch 1 (ms, log scale)")
    ax.grid(True, axis="x", which="both", linewidth=0.3)
    legend = [
        Line2D([], [], marker=marker, linestyle="", color=color, label=label)
        for marker, color, label in (("o", "0.3", "p50"), ("D", "0.3", "p90"), ("|", "0.3", "p99"), ("x", "k", "mean"))
    ]
    ax.legend(handles=legend, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _svg(figure, "plot-latency")
