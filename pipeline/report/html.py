"""report.html: the report as one self-contained page (inline SVG figures, inline CSS, no scripts or links)."""

from __future__ import annotations

import html
import re

from pipeline.manifest import Manifest, Measurement
from pipeline.report import plots, sanity
from pipeline.report import prune as report_prune
from pipeline.report.sections import (
    CLASS_COUNTS_CAPTION,
    CLASS_COUNTS_HEADER,
    FOOTPRINT_CAPTION,
    FOOTPRINT_HEADER,
    INT8_HEADER,
    TIMING_CAPTION,
    TIMING_HEADER,
    class_count_rows,
    data_notes,
    failed_lines,
    footprint_rows,
    gate_lines,
    int8_table,
    main_caption,
    main_header,
    main_rows,
    model_bullets,
    parity_bullets,
    shown_measurements,
    skipped_bullets,
    summary_bullets,
    teacher_and_student,
    timing_rows,
    unmeasured_bullets,
)

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
table.figures td { text-align: right; white-space: nowrap; }
table.figures td:nth-child(-n+2) { text-align: left; }
code { font-size: 0.92em; background: #f5f5f5; padding: 0 0.2em; }
figure { margin: 1.5em 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 13px; max-width: 60em; }
.gate-failed { color: #fff; background: #b00020; padding: 0.5em 1em; font-size: 16px; }
.gate-passed { color: #fff; background: #1b5e20; padding: 0.5em 1em; }
"""


def _inline(text: str) -> str:
    """Escape report text for HTML, then turn its `code` and **bold** markup into tags."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>"


def _table(header: list[str], rows: list[list[str]], css_class: str) -> str:
    head = "".join(f"<th>{_inline(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _main_table(manifest: Manifest, teacher: Measurement, student: Measurement | None) -> str:
    rows = main_rows(manifest, teacher, student)
    return f"<p>{_inline(main_caption(manifest))}</p>" + _table(main_header(manifest), rows, "figures")


def _figure(svg: str, caption: str, figure_id: str) -> str:
    return f'<figure id="{figure_id}">{svg}<figcaption>{_inline(caption)}</figcaption></figure>'


def _figures(manifest: Manifest) -> str:
    measurements = shown_measurements(manifest)
    sizes: dict[str, int] = {}
    for m in measurements:  # an artifact's first row is on its own runtime (later: converted copies)
        if m.file_bytes:
            sizes.setdefault(m.artifact, m.file_bytes)
    return "".join(
        [
            _figure(
                plots.accuracy_latency_svg(measurements),
                "Test top-1 against p50 latency at batch 1, one point per artifact × runtime (colour: artifact; "
                "marker: runtime; hollow: a noisy p50, its timing rounds disagreed). The dashed step line is the "
                "Pareto front: rows that no other row beats on both accuracy and latency.",
                "figure-accuracy-latency",
            ),
            _figure(
                plots.size_svg(sizes, plots.artifact_colors(measurements)),
                "File size of each measured artifact (the teacher and student are PyTorch checkpoints).",
                "figure-sizes",
            ),
            _figure(
                plots.latency_svg(measurements),
                "Latency at batch 1 per artifact × runtime, from the recorded statistics: the solid line runs from "
                "p50 to p99, with p90 and the mean (×) marked; a dotted line runs out to a mean outside p50–p99. "
                "A mean beyond p99 means a few calls were far slower than the rest (outliers pull the mean, not "
                "the percentiles). Hollow marks: a noisy row (its timing rounds disagreed). The manifest keeps "
                "p50/p90/p99/mean/stdev, not the raw samples, so this is not a box plot (no quartiles or extremes).",
                "figure-latency",
            ),
        ]
    )


def _int8_section(manifest: Manifest) -> str:
    table = int8_table(manifest)
    if table is None:
        return ""
    reference = f"<p>{_inline(table.reference)}</p>" if table.reference else ""
    return f"<h2>int8</h2><p>{_inline(table.intro)}</p>" + _table(INT8_HEADER, table.rows, "int8") + reference


def _data_parts(manifest: Manifest) -> list[str]:
    rows, notes = class_count_rows(manifest), data_notes(manifest)
    if not rows and not notes:
        return []
    parts = ["<h2>Data</h2>", _list(notes)] if notes else ["<h2>Data</h2>"]
    if rows:  # a list, not a table: the page's tables are the measurement tables of report.md
        splits = CLASS_COUNTS_HEADER[1:]
        counts = [f"{row[0]}: " + ", ".join(f"{s} {n}" for s, n in zip(splits, row[1:])) for row in rows]
        parts.append(f"<details><summary>{_inline(CLASS_COUNTS_CAPTION)}</summary>{_list(counts)}</details>")
    return parts


def render_html(manifest: Manifest) -> str:
    """The whole report as one HTML page: report.md's text and tables plus three figures."""
    parts = ["<h1>edgepipe report</h1>"]
    failed = failed_lines(manifest)
    if failed:
        parts += [f'<p class="gate-failed" id="failed">{_inline(failed[0])}</p>', _list(failed[1:])]
    gate = gate_lines(manifest)
    if gate:
        css = "gate-failed" if not manifest.gate.passed else "gate-passed"
        parts += [f'<p class="{css}">{_inline(gate[0])}</p>', _list(gate[1:])]
    parts += sanity.html_parts(manifest, _inline, _list)
    parts.append(_list(summary_bullets(manifest)))
    models = model_bullets(manifest)
    if models:
        parts += ["<h2>Models</h2>", _list(models)]
    teacher, student = teacher_and_student(manifest)
    if teacher is None:
        parts.append(f"<p>{_inline('No measurements yet: run `edgepipe bench RUN_DIR`.')}</p>")
    else:
        parts += ["<h2>Measurements</h2>", _main_table(manifest, teacher, student), _figures(manifest)]
        parity = parity_bullets(manifest)
        if parity:
            parts += [f"<p>{_inline('Converted artifacts against their own runtime:')}</p>", _list(parity)]
        parts.append(_int8_section(manifest))
        parts += report_prune.html_parts(manifest, _inline, _table)
        parts += ["<h2>Latency</h2>", f"<p>{_inline(TIMING_CAPTION)}</p>"]
        parts.append(_table(TIMING_HEADER, timing_rows(shown_measurements(manifest)), "figures"))
        parts += ["<h2>Footprint</h2>", f"<p>{_inline(FOOTPRINT_CAPTION)}</p>"]
        parts.append(_table(FOOTPRINT_HEADER, footprint_rows(shown_measurements(manifest)), "figures"))
        unmeasured = unmeasured_bullets(shown_measurements(manifest))
        if unmeasured:
            parts += ["<p>Fields left empty (—):</p>", _list(unmeasured)]
        if manifest.skipped:
            parts += ["<h2>Not measured</h2>", _list(skipped_bullets(manifest))]
    parts += _data_parts(manifest)
    title = html.escape(f"edgepipe report — {manifest.data.source}" if manifest.data else "edgepipe report")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
