"""Stage 3: build export targets from the student, each verified against the float student before it lands.

Int8 targets that still break the accuracy budget are rebuilt from a quantization-aware distilled student
(``<target>-qat``), beside the post-training ones, so the report shows both."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from calibration.sampling import CalibrationSet
from pipeline.calibrate import CALIBRATION_PATH
from pipeline.distill import load_model
from pipeline.errors import ExportError
from pipeline.io import atomic_path
from pipeline.manifest import ArtifactRecord
from pipeline.progress import progress_bar
from pipeline.prune import PRUNED_STUDENT, shipped_student
from pipeline.prune_measure import gzip_bytes
from pipeline.qat_stage import QAT_STUDENT, ensure_qat_student, qat_targets
from pipeline.rundir import RunDir
from pipeline.runtimes import onnxruntime_runner, tflite_runner, torch_runner
from targets import TARGETS, ExportInputs, ExportResult, Target

VERIFY_SAMPLES = 256


def artifact_runner(path, fmt: str, inputs, outputs, threads: int | None):
    """A CPU runner for an ONNX or TFLite file."""
    if fmt == "onnx":
        return onnxruntime_runner(path, "CPUExecutionProvider", threads)
    return tflite_runner(path, inputs, outputs, threads)


class Exporter:
    """Builds targets from one source model (``student`` or ``student-qat``) in dependency order, reusing any
    whose inputs are unchanged. Artifacts of another source than ``student`` are named ``<target>-<suffix>``."""

    def __init__(self, run: RunDir, force: set[str], source: str = "student") -> None:
        self.run = run
        self.force = force
        self.source = source
        self.suffix = "" if source == PRUNED_STUDENT else source.removeprefix("student")

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

    def build(self, name: str) -> ArtifactRecord:
        """Export target ``name`` (and any parent it needs) unless an identical artifact exists."""
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
        with atomic_path(path) as tmp:
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
        """Compare the artifact's logits with the float student's on validation samples."""
        x, reference = self.verify_batch
        try:
            logits = artifact_runner(path, target.format, result.inputs, result.outputs, None).predict(x)
        except Exception as e:
            raise ExportError(f"{target.name}: the exported file does not run: {str(e).strip().splitlines()[0]}") from e
        if logits.shape != reference.shape:
            raise ExportError(f"{target.name}: output shape {logits.shape}, student gives {reference.shape}")
        max_abs_diff = float(np.abs(logits - reference).max())
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean() * 100)
        if target.max_abs_diff is not None and max_abs_diff > target.max_abs_diff:
            raise ExportError(
                f"{target.name}: logits differ from the student by {max_abs_diff:.3g} "
                f"(tolerance {target.max_abs_diff}); the conversion is wrong"
            )
        return {
            "samples": len(x),
            "max_abs_diff_vs_student": round(max_abs_diff, 6),
            "top1_agreement_vs_student": round(agreement, 2),
        }


def _build_all(exporter: Exporter, names: list[str]) -> list[ArtifactRecord]:
    with progress_bar() as bar:
        task = bar.add_task(f"export{exporter.suffix}", total=len(names), status="")
        records = []
        for name in names:
            bar.update(task, status=name + exporter.suffix)
            records.append(exporter.build(name))
            bar.advance(task)
    return records


def run_export(run: RunDir, targets: list[str] | None = None, force: set[str] | None = None) -> list[ArtifactRecord]:
    """Export ``targets`` (default: the config's), rebuilding those in ``force``; then the QAT-KD variants of the
    int8 targets that need one (``quantize.qat``)."""
    force = force or set()
    records = _build_all(Exporter(run, force, shipped_student(run)), targets or run.config.export.targets)
    qat_names, reduce_range, left_out = qat_targets(run, records)
    if qat_names:
        ensure_qat_student(run, reduce_range, left_out, force=bool(force & set(qat_names)))
        records += _build_all(Exporter(run, force, source=QAT_STUDENT), qat_names)
    return records
