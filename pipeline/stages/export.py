"""Stage 4: build export targets from the shipped student, each verified against the float student before it lands.

A target that fails is recorded in ``manifest.failures`` with its one-line reason (and the targets converted from it
as skipped); every other target is still built. Int8 targets still over their accuracy budget are the qat stage's
(:mod:`pipeline.stages.qat`), which rebuilds them with this stage's :class:`Exporter`."""

from __future__ import annotations

import time
import traceback
from functools import cached_property
from pathlib import Path

import numpy as np

from calibration.sampling import CalibrationSet
from pipeline import progress as view
from pipeline.converter_log import captured_output
from pipeline.errors import DataError, EdgepipeError, ExportError, ModelError, RunStateError, first_line
from pipeline.formats import FORMATS
from pipeline.io import atomic_path
from pipeline.manifest import PRUNED_STUDENT, ArtifactRecord, TargetFailure
from pipeline.measure.prune_measure import gzip_bytes
from pipeline.measure.runtimes import torch_runner
from pipeline.rundir import RunDir
from pipeline.stages.calibrate import CALIBRATION_PATH
from pipeline.training.run_models import load_model
from targets import TARGETS, ExportInputs, ExportResult, Target

VERIFY_SAMPLES = 256
LOGS_DIR = "logs"  # converters write their whole output to RUN/logs/<artifact>.log (ExportInputs.log_path)
MAX_REASON_CHARS = 300


def artifact_runner(path, fmt: str, inputs, outputs, threads: int | None):
    """A CPU runner for a file of format ``fmt`` (a ``FORMATS`` name; an unknown one raises ConfigError)."""
    return FORMATS.get(fmt).cpu_runner(path, inputs, outputs, threads)


class Exporter:
    """Builds targets from one source model (``student`` or ``student-qat``) in dependency order, reusing any
    whose inputs are unchanged. Artifacts of another source than ``student`` are named ``<target>-<suffix>``."""

    def __init__(self, run: RunDir, force: set[str], source: str = "student") -> None:
        self.run = run
        self.force = force
        self.source = source
        self.suffix = "" if source == PRUNED_STUDENT else source.removeprefix("student")
        self.built: dict[str, ArtifactRecord] = {}  # by target name: each target is built (or reused) once
        self.failures: dict[str, TargetFailure] = {}  # by target name, failed or skipped

    @cached_property
    def student(self):
        return load_model(self.run, self.source)

    @cached_property
    def calibration(self) -> CalibrationSet:
        self.run.require("calibration")
        return CalibrationSet.load(self.run.path(CALIBRATION_PATH))

    @cached_property
    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        val = self.run.splits.val
        return self.run.splits.normalize(val.x), val.y

    @cached_property
    def verify_batch(self) -> tuple[np.ndarray, np.ndarray]:
        splits = self.run.splits
        x = splits.normalize(splits.val.x[:VERIFY_SAMPLES])
        return x, torch_runner(self.student, None).predict(x)

    def parent_record(self, target: Target) -> ArtifactRecord:
        if target.parent == "student":
            return self.run.require(self.source)
        return self.build(target.parent)

    def attempt(self, name: str) -> ArtifactRecord | None:
        """``build(name)``, its failure recorded in ``failures`` (and its record dropped) instead of raised; a target
        whose parent failed is recorded as skipped. What every target shares is raised, not recorded: RunStateError (an
        earlier stage's output missing), ModelError (the student checkpoint) and DataError (the run's data)."""
        if name in self.failures:
            return None
        target = TARGETS.get(name)
        if target.parent != "student" and self.attempt(target.parent) is None:
            parent = self.failures[target.parent]
            failed = parent.depends_on or parent.target
            skip = {"stage": "skipped", "reason": f"depends on {failed}, which failed", "depends_on": failed}
            self._fail(name, TargetFailure(target=name + self.suffix, **skip))
            return None
        log = log_path(self.run, name + self.suffix)
        before = mtime(log)
        try:
            return self.build(name)
        except (RunStateError, ModelError, DataError):
            raise
        except Exception as e:  # noqa: BLE001 (any converter's failure is this target's row, never the run's end)
            self._fail(name, target_failure(self.run, e, name + self.suffix, "export", log, before))
            return None

    def _fail(self, name: str, failure: TargetFailure) -> None:
        self.failures[name] = failure
        self.run.manifest.artifacts.pop(failure.target, None)  # an earlier build's record would be benched as this one

    def build(self, name: str) -> ArtifactRecord:
        """Export target ``name`` (and any parent it needs) unless an identical artifact exists; raises its
        converter's or verification's error."""
        if name not in self.built:
            self.built[name] = self._build(name)
        return self.built[name]

    def _build(self, name: str) -> ArtifactRecord:
        target = TARGETS.get(name)()
        record_name = name + self.suffix
        parent = self.parent_record(target)
        parents = [parent.id] + ([self.run.require("calibration").id] if target.needs_calibration else [])
        reference = None  # the int8 budget is measured against the real student's fp32 file, not a QAT one
        if self.suffix and target.parent != "student":
            reference = self.run.require(target.parent)
            parents.append(reference.id)
        artifact_id = self.run.artifact_id(f"export:{record_name}", target.config_key(self.run.config), parents)
        if name not in self.force:
            reused = self.run.manifest.reusable(record_name, artifact_id, self.run.root)
            if reused:
                return reused
        path = self.run.path(f"artifacts/{self.source}-{name}{target.suffix}")
        work_dir = self.run.path("work")
        work_dir.mkdir(parents=True, exist_ok=True)
        # whatever a converter or runtime prints beyond its own capture (first-use banners) goes to the log too
        with atomic_path(path) as tmp, captured_output(log_path(self.run, record_name)):
            result = target.export(
                ExportInputs(
                    parent_path=self.run.path(parent.path),
                    parent_sha256=parent.sha256,
                    output_path=tmp,
                    work_dir=work_dir,
                    config=self.run.config,
                    preprocessing=self.run.preprocessing,
                    calibration=self.calibration if target.needs_calibration else None,
                    validation=self.validation if target.needs_calibration else None,
                    reference_path=self.run.path(reference.path) if reference else None,
                    model=self.student if target.parent == "student" else None,
                    log_path=log_path(self.run, record_name),
                )
            )
            verification = self.verify(target, tmp, result)
        return self.run.record(
            record_name,
            "export",
            artifact_id,
            path,
            parent=parent.name,
            inputs=result.inputs,
            outputs=result.outputs,
            info={
                "target": name,
                "format": target.format,
                "precision": target.precision,
                "source": self.source,
                "verification": verification,
                "gzip_bytes": gzip_bytes(path),  # what an app download of the file costs
                **result.info,
            },
        )

    def verify(self, target: Target, path, result: ExportResult) -> dict:
        """Compare the artifact's logits with the float student's on validation samples, within the target's
        tolerance (relative to the logits' magnitude for fp16), recorded with the result."""
        x, reference = self.verify_batch
        try:
            logits = artifact_runner(path, target.format, result.inputs, result.outputs, None).predict(x)
        except Exception as e:
            raise ExportError(f"{target.name}: the exported file does not run: {str(e).strip().splitlines()[0]}") from e
        if logits.shape != reference.shape:
            raise ExportError(f"{target.name}: output shape {logits.shape}, student gives {reference.shape}")
        max_abs_diff = float(np.abs(logits - reference).max())
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean() * 100)
        tolerance = target.tolerance(reference)
        if tolerance is not None and max_abs_diff > tolerance:
            raise ExportError(
                f"{target.name}: logits differ from the student by {max_abs_diff:.3g} (tolerance {tolerance:.3g} = "
                f"{target.max_abs_diff:g} + {target.rtol:g} × largest |logit| {np.abs(reference).max():.3g}); "
                "the conversion is wrong",
                "report it with the run's logs/ folder; meanwhile drop this target from export.targets",
            )
        return {
            "samples": len(x),
            "max_abs_diff_vs_student": round(max_abs_diff, 6),
            "tolerance": None if tolerance is None else round(tolerance, 6),
            "top1_agreement_vs_student": round(agreement, 2),
        }


def log_path(run: RunDir, artifact: str) -> Path:
    """Where the converters' whole output for ``artifact`` goes (appended)."""
    return run.path(f"{LOGS_DIR}/{artifact}.log")


def mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def target_failure(
    run: RunDir, error: Exception, artifact: str, stage: str, log: Path, log_mtime: int | None
) -> TargetFailure:
    """The failure record of ``artifact``: an edgepipe error's line and hint, with ``log`` when the attempt wrote to
    it (its mtime before was ``log_mtime``); any other exception's first line, its traceback appended to ``log``."""
    if isinstance(error, EdgepipeError):
        reason, hint = first_line(error, MAX_REASON_CHARS), error.hint
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as file:
            file.write("".join(traceback.format_exception(error)))
        reason = f"{artifact}: {type(error).__name__}: {first_line(error, MAX_REASON_CHARS)}"
        hint = f"an unexpected error (traceback in the log); drop {artifact} from export.targets to ship the others"
    written = log.is_file() and mtime(log) != log_mtime
    relative = str(log.relative_to(run.root)) if written else None
    return TargetFailure(target=artifact, stage=stage, reason=reason, hint=hint, log=relative)


def build_all(exporter: Exporter, names: list[str]) -> list[ArtifactRecord]:
    """The records of ``names`` that were built; the others are in ``exporter.failures``. Each target is a step
    of the progress view's bar and one line (built, reused, failed or skipped)."""
    records = []
    with view.task(f"export{exporter.suffix}", total=len(names)) as bar:
        for name in names:
            bar.update(name + exporter.suffix)
            record, line = _attempt(exporter, name)
            if record is not None:
                records.append(record)
            bar.advance()
            view.log(line)  # after the step, so its ETA counts this target as done
    return records


def _attempt(exporter: Exporter, name: str) -> tuple[ArtifactRecord | None, str]:
    """``exporter.attempt(name)`` and the progress view's line for it (built, reused, failed or skipped)."""
    artifact = name + exporter.suffix
    previous = exporter.run.manifest.artifacts.get(artifact)
    started = time.perf_counter()
    record = exporter.attempt(name)
    if record is None:
        failure = exporter.failures[name]
        return None, f"{artifact} {'skipped' if failure.stage == 'skipped' else 'failed'}: {failure.reason}"
    if record is previous:
        return record, f"{artifact} reused"
    return record, f"{artifact} built in {view.duration(time.perf_counter() - started)}"


def with_parents(names: list[str]) -> set[str]:
    """``names`` and every target they are converted from."""
    closure = set()
    for name in names:
        while name != "student" and name not in closure:
            closure.add(name)
            name = TARGETS.get(name).parent
    return closure


def run_export(run: RunDir, targets: list[str] | None = None, force: set[str] | None = None) -> list[ArtifactRecord]:
    """Export ``targets`` (default: the config's) from the shipped student, rebuilding those in ``force``. Returns
    the records built or reused.

    A target that fails is recorded in ``manifest.failures``, the targets converted from it as skipped, and the
    others are still built; a re-run replaces the failures of every target it tries. Raises RunStateError when an
    earlier stage's output (student, calibration) is missing."""
    force = force or set()
    names = run.config.export.targets if targets is None else targets
    exporter = Exporter(run, force, run.shipped_student())
    records = build_all(exporter, names)
    replace_failures(run, with_parents(names), list(exporter.failures.values()))
    return records


def replace_failures(run: RunDir, tried: set[str], failures: list[TargetFailure]) -> None:
    """Drop the recorded failures of the artifacts in ``tried``, add ``failures`` and save the manifest."""
    kept = [failure for failure in run.manifest.failures if failure.target not in tried]
    run.manifest.failures = kept + failures
    run.save()
