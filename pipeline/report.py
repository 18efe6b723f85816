"""Stage 5: report.md and report.html from the manifest (the manifest is the single source of every figure)."""

from __future__ import annotations

from pipeline.io import write_text_atomic
from pipeline.manifest import Manifest
from pipeline.report_html import render_html
from pipeline.report_sections import (
    INT8_HEADER,
    MAIN_HEADER,
    int8_table,
    main_caption,
    main_cells,
    model_bullets,
    skipped_bullets,
    summary_bullets,
    teacher_and_student,
)
from pipeline.rundir import RunDir


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_md_row(header), "|" + "---|" * len(header), *(_md_row(row) for row in rows)]


def _md_int8_section(manifest: Manifest) -> list[str]:
    table = int8_table(manifest)
    if table is None:
        return []
    lines = ["## int8", "", table.intro, "", *_md_table(INT8_HEADER, table.rows)]
    if table.reference:
        lines += ["", table.reference]
    return lines + [""]


def render_report(manifest: Manifest) -> str:
    """Markdown: what was run on what, one row per artifact × runtime, and what could not be measured."""
    lines = ["# edgepipe report", "", *(f"- {b}" for b in summary_bullets(manifest)), ""]
    models = model_bullets(manifest)
    if models:
        lines += [f"- {b}" for b in models] + [""]
    teacher, student = teacher_and_student(manifest)
    if teacher is None:
        return "\n".join(lines + ["No measurements yet: run `edgepipe bench RUN_DIR`.", ""])
    rows = [main_cells(manifest, m, teacher, student) for m in manifest.measurements]
    lines += [main_caption(manifest), "", *_md_table(MAIN_HEADER, rows), ""]
    lines += _md_int8_section(manifest)
    if manifest.skipped:
        lines += ["Not measured:", ""] + [f"- {b}" for b in skipped_bullets(manifest)] + [""]
    return "\n".join(lines)


def run_report(run: RunDir) -> str:
    """Write ``report.md`` and ``report.html`` beside the manifest and return the markdown."""
    text = render_report(run.manifest)
    write_text_atomic(run.path("report.md"), text)
    write_text_atomic(run.path("report.html"), render_html(run.manifest))
    return text
