"""The whole pipeline in order; every stage reuses what an earlier run already built from the same inputs."""

from __future__ import annotations

from pathlib import Path

from pipeline.bench import run_bench
from pipeline.calibrate import run_calibrate
from pipeline.config import RunConfig
from pipeline.distill import run_distill
from pipeline.export import run_export
from pipeline.gate import raise_if_run_failed
from pipeline.prune import run_prune
from pipeline.report import run_report
from pipeline.rundir import RunDir
from targets import TARGETS


def run_pipeline(config: RunConfig, out: Path, force: set[str]) -> Path:
    """distill (or, with ``distill: null``, take in the trained student) → (prune) → calibrate → export → bench →
    report into ``out``; ``force`` names stages to redo. Every model is checked against the data before any
    training.

    A target that fails to build does not stop the others (they are benched and reported). After the report is
    written: ExportError (exit 5) when a target failed to build, else GateError (exit 8) when an artifact is over
    its accuracy budget or the accuracy gate failed."""
    run = RunDir.create(out, config)
    run_distill(run, force="distill" in force)
    if config.prune is not None:
        run_prune(run, force="prune" in force)
    if any(TARGETS.get(name).needs_calibration for name in config.export.targets):
        run_calibrate(run, force="calibrate" in force)
    run_export(run, force=set(config.export.targets) if "export" in force else set())
    run_bench(run)
    run_report(run)
    raise_if_run_failed(run.manifest, run.root)
    return out
