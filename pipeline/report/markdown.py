"""report.md: the Markdown report rendered from a manifest (the single source of every figure)."""

from __future__ import annotations

from pipeline.manifest import Manifest
from pipeline.report import prune as report_prune
from pipeline.report import sanity
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


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [md_row(header), "|" + "---|" * len(header), *(md_row(row) for row in rows)]


def _md_int8_section(manifest: Manifest) -> list[str]:
    table = int8_table(manifest)
    if table is None:
        return []
    lines = ["## int8", "", table.intro, "", *md_table(INT8_HEADER, table.rows)]
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
    failed = failed_lines(manifest)
    if failed:
        lines += [failed[0], "", *(f"- {b}" for b in failed[1:]), ""]
    gate = gate_lines(manifest)
    if gate:
        lines += [gate[0], "", *(f"- {b}" for b in gate[1:]), ""]
    lines += sanity.md_lines(manifest)
    lines += [*(f"- {b}" for b in summary_bullets(manifest)), ""]
    models = model_bullets(manifest)
    if models:
        lines += [f"- {b}" for b in models] + [""]
    teacher, student = teacher_and_student(manifest)
    if teacher is None:
        return "\n".join(lines + [no_measurements_line(manifest), ""] + _md_data_section(manifest))
    rows = main_rows(manifest, teacher, student)
    lines += [main_caption(manifest), "", *md_table(main_header(manifest), rows), ""]
    parity = parity_bullets(manifest)
    if parity:
        lines += ["Converted artifacts against their own runtime:", ""] + [f"- {b}" for b in parity] + [""]
    lines += _md_int8_section(manifest)
    lines += report_prune.md_lines(manifest, md_table)
    shown = shown_measurements(manifest)
    lines += ["## Latency", "", TIMING_CAPTION, "", *md_table(TIMING_HEADER, timing_rows(shown)), ""]
    lines += [
        "## Footprint",
        "",
        FOOTPRINT_CAPTION,
        "",
        *md_table(FOOTPRINT_HEADER, footprint_rows(shown)),
        "",
    ]
    unmeasured = unmeasured_bullets(shown)
    if unmeasured:
        lines += ["Fields left empty (—):", "", *(f"- {b}" for b in unmeasured), ""]
    if manifest.skipped:
        lines += ["Not measured:", ""] + [f"- {b}" for b in skipped_bullets(manifest)] + [""]
    return "\n".join(lines + _md_data_section(manifest))


def _md_data_section(manifest: Manifest) -> list[str]:
    rows, notes = class_count_rows(manifest), data_notes(manifest)
    if not rows and not notes:
        return []
    lines = ["## Data", ""] + [f"- {b}" for b in notes] + ([""] if notes else [])
    return lines + ([CLASS_COUNTS_CAPTION, "", *md_table(CLASS_COUNTS_HEADER, rows), ""] if rows else [])
