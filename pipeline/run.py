"""The whole pipeline in order; every stage reuses what an earlier run already built from the same inputs."""

from __future__ import annotations

from pathlib import Path

from pipeline import progress
from pipeline.config import RunConfig
from pipeline.report.gate import raise_if_run_failed
from pipeline.rundir import RunDir
from pipeline.stages.bench import run_bench
from pipeline.stages.calibrate import run_calibrate
from pipeline.stages.distill import run_distill
from pipeline.stages.export import run_export
from pipeline.stages.prune import run_prune
from pipeline.stages.qat import run_qat
from pipeline.stages.report import run_report
from targets import TARGETS


def calibrates(config: RunConfig, targets: list[str] | None = None) -> bool:
    """Whether a run of ``config`` needs the calibration set: an int8 target among ``targets`` (default: the
    config's), or pruning measured on one."""
    names = list(targets or config.export.targets)
    names += [config.prune.measure.target] if config.prune is not None else []
    return any(TARGETS.get(name).needs_calibration for name in names)


def trains_qat(config: RunConfig, targets: list[str] | None = None) -> bool:
    """Whether the qat stage may train: an int8 target among ``targets`` (default: the config's) and
    ``quantize.qat.when`` not ``never``."""
    int8 = any(TARGETS.get(name).precision == "int8" for name in targets or config.export.targets)
    return int8 and config.quantize.qat.when != "never"


def qat_stage(config: RunConfig) -> progress.Stage:
    """The qat stage as the progress view lists it: which int8 targets it rebuilds (``quantize.qat.when``)."""
    return progress.Stage("qat", "every int8 target" if config.quantize.qat.when == "always" else "int8 over budget")


def planned_stages(config: RunConfig) -> list[progress.Stage]:
    """The stages ``config`` runs, in order: data, distill, calibrate (when an export target, or pruning's measure
    target, is int8), prune (with a ``prune:`` section), export, qat (when an int8 target may need QAT-KD), bench,
    report."""
    targets = len(config.export.targets)
    stages = [
        progress.Stage("data"),
        progress.Stage("distill", "" if config.distill is not None else "take in the trained student"),
        progress.Stage("calibrate", quick=True) if calibrates(config) else None,
        progress.Stage("prune") if config.prune is not None else None,
        progress.Stage("export", progress.plural(targets, "target")),
        qat_stage(config) if trains_qat(config) else None,
        progress.Stage("bench"),
        progress.Stage("report", quick=True),
    ]
    return [stage for stage in stages if stage is not None]


def _run_stage(name: str, run: RunDir, force: set[str]) -> None:
    if name == "distill":
        run_distill(run, force="distill" in force)
    elif name == "calibrate":
        run_calibrate(run, force="calibrate" in force)
    elif name == "prune":
        run_prune(run, force="prune" in force)
    elif name == "export":
        run_export(run, force=set(run.config.export.targets) if "export" in force else set())
    elif name == "qat":
        run_qat(run, force=set(run.config.export.targets) if "qat" in force else set())
    elif name == "bench":
        run_bench(run)
    elif name == "report":
        run_report(run)


def run_pipeline(config: RunConfig, out: Path, force: set[str]) -> Path:
    """Load the data, then distill (or, with ``distill: null``, take in the trained student) → calibrate → (prune)
    → export → qat → bench → report into ``out``; ``force`` names stages to redo. Every model is checked against the
    data before any training. Each stage is reported to the progress view (:func:`planned_stages`).

    A target that fails to build does not stop the others (they are benched and reported). After the report is
    written: ExportError (exit 5) when a target failed to build, else GateError (exit 8) when an artifact is over
    its accuracy budget or the accuracy gate failed."""
    stages = planned_stages(config)
    progress.plan(stages)
    with progress.stage("data"):
        run = RunDir.create(out, config)
    for stage in stages[1:]:
        with progress.stage(stage.name):
            _run_stage(stage.name, run, force)
    raise_if_run_failed(run.manifest, run.root)
    return out
