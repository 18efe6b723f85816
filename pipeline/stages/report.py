"""Stage 5: report.md and report.html from the manifest (the manifest is the single source of every figure)."""

from __future__ import annotations

from pipeline.io import write_text_atomic
from pipeline.report import sanity
from pipeline.report.gate import evaluate_gate
from pipeline.report.html import render_html
from pipeline.report.markdown import render_report
from pipeline.rundir import RunDir


def run_report(run: RunDir) -> str:
    """Evaluate the accuracy gate and the sanity warnings (said on stderr), then write ``report.md`` and
    ``report.html`` beside the manifest and return the markdown (a failed gate is raised by the caller after this, so
    the report is always written)."""
    gate = evaluate_gate(run.manifest, run.config.gate)
    run.manifest.gate = gate
    failing = [w for w in sanity.record_warnings(run) if w.fails_gate]  # saves the manifest
    if gate is not None and failing:
        run.manifest.gate = gate.model_copy(update={"passed": False})
        run.save()
    text = render_report(run.manifest)
    write_text_atomic(run.path("report.md"), text)
    write_text_atomic(run.path("report.html"), render_html(run.manifest))
    return text
