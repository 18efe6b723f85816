"""report.md: the Markdown report rendered from a manifest (the single source of every figure)."""

from __future__ import annotations

from pipeline.manifest import Manifest
from pipeline.report import prune as report_prune
from pipeline.report import sanity, sections


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [md_row(header), "|" + "---|" * len(header), *(md_row(row) for row in rows)]


def _md_int8_section(manifest: Manifest) -> list[str]:
    table = sections.int8_table(manifest)
    if table is None:
        return []
    lines = ["## int8", "", table.intro, "", *md_table(sections.INT8_HEADER, table.rows)]
    if table.reference:
        lines += ["", table.reference]
    return lines + [""]


def no_measurements_line(manifest: Manifest) -> str:
    """What a report without measurements says to run: bench, after distill when the run has no teacher yet (bench
    needs it)."""
    distill = "" if "teacher" in manifest.artifacts else "`edgepipe distill RUN_DIR`, then "
    return f"No measurements yet: run {distill}`edgepipe bench RUN_DIR`."


def render_report(manifest: Manifest) -> str:
    """Markdown: what was run on what, one row per artifact × runtime, and what could not be measured."""
    lines = ["# edgepipe report", ""]
    failed = sections.failed_lines(manifest)
    if failed:
        lines += [failed[0], "", *(f"- {b}" for b in failed[1:]), ""]
    gate = sections.gate_lines(manifest)
    if gate:
        lines += [gate[0], "", *(f"- {b}" for b in gate[1:]), ""]
    lines += sanity.md_lines(manifest)
    lines += [*(f"- {b}" for b in sections.summary_bullets(manifest)), ""]
    models = sections.model_bullets(manifest)
    if models:
        lines += [f"- {b}" for b in models] + [""]
    teacher, student = sections.teacher_and_student(manifest)
    if teacher is None:
        return "\n".join(lines + [no_measurements_line(manifest), ""] + _md_data_section(manifest))
    rows = sections.main_rows(manifest, teacher, student)
    lines += [sections.main_caption(manifest), "", *md_table(sections.main_header(manifest), rows), ""]
    parity = sections.parity_bullets(manifest)
    if parity:
        lines += ["Converted artifacts against their own runtime:", ""] + [f"- {b}" for b in parity] + [""]
    lines += _md_int8_section(manifest)
    lines += report_prune.md_lines(manifest, md_table)
    shown = sections.shown_measurements(manifest)
    lines += [
        "## Latency",
        "",
        sections.TIMING_CAPTION,
        "",
        *md_table(sections.TIMING_HEADER, sections.timing_rows(shown)),
        "",
    ]
    lines += [
        "## Footprint",
        "",
        sections.FOOTPRINT_CAPTION,
        "",
        *md_table(sections.FOOTPRINT_HEADER, sections.footprint_rows(shown)),
        "",
    ]
    unmeasured = sections.unmeasured_bullets(shown)
    if unmeasured:
        lines += ["Fields left empty (—):", "", *(f"- {b}" for b in unmeasured), ""]
    if manifest.skipped:
        lines += ["Not measured:", ""] + [f"- {b}" for b in sections.skipped_bullets(manifest)] + [""]
    return "\n".join(lines + _md_data_section(manifest))


def _md_data_section(manifest: Manifest) -> list[str]:
    rows, notes = sections.class_count_rows(manifest), sections.data_notes(manifest)
    if not rows and not notes:
        return []
    lines = ["## Data", ""] + [f"- {b}" for b in notes] + ([""] if notes else [])
    return lines + (
        [sections.CLASS_COUNTS_CAPTION, "", *md_table(sections.CLASS_COUNTS_HEADER, rows), ""] if rows else []
    )
