"""Quantization-aware distillation as a pipeline step: which int8 targets need it, and the QAT-KD student
(trained once per run and reused while its inputs are unchanged)."""

from __future__ import annotations

from pipeline import distributed
from pipeline.distill import load_student, load_teacher
from pipeline.manifest import ArtifactRecord
from pipeline.models import count_parameters, save_checkpoint
from pipeline.qat import qat_distill
from pipeline.rundir import RunDir
from targets import TARGETS

QAT_STUDENT = "student-qat"
QAT_STUDENT_PATH = "checkpoints/student-qat.pt"


def qat_targets(run: RunDir, records: list[ArtifactRecord]) -> list[str]:
    """The shipped int8 targets to rebuild from a QAT-KD student: all of them (``when: always``), or those whose
    post-training int8 still breaks ``max_int8_drop`` after the fallback (``auto``)."""
    when = run.config.quantize.qat.when
    if when == "never":
        return []
    int8 = [r for r in records if TARGETS.get(r.name).precision == "int8" and not TARGETS.get(r.name).reference]
    return [r.name for r in int8 if when == "always" or not r.info.get("within_budget", True)]


def ensure_qat_student(run: RunDir, force: bool = False) -> ArtifactRecord:
    """Fine-tune the student under int8 fake quantization while the teacher distils into it (reused when unchanged)."""
    cfg, student_record = run.config.quantize.qat, run.require("student")
    onnx_int8 = run.config.export.onnx_int8
    key = {
        "qat": cfg.model_dump(exclude={"when"}),
        "losses": [spec.model_dump() for spec in run.config.distill.losses],
        "grid": {"per_channel": onnx_int8.per_channel, "reduce_range": onnx_int8.reduce_range},
    }
    qat_id = run.artifact_id(QAT_STUDENT, key, [student_record.id, run.require("teacher").id])
    reused = None if force else run.manifest.reusable(QAT_STUDENT, qat_id, run.root)
    if reused:
        return reused
    model, summary = qat_distill(
        load_student(run),
        load_teacher(run),
        run.config.distill.losses,
        run.splits,
        cfg,
        seed=run.config.seed,
        progress_dir=run.path("checkpoints"),
        job_id=qat_id,
        per_channel=onnx_int8.per_channel,
        reduce_range=onnx_int8.reduce_range,
    )
    meta = {key: student_record.info[key] for key in ("arch", "arch_kwargs", "in_channels", "num_classes", "kind")}
    path = run.path(QAT_STUDENT_PATH)
    if distributed.is_main():
        save_checkpoint(model, path, meta)
    distributed.barrier()
    return run.record(
        QAT_STUDENT,
        "qat",
        qat_id,
        path,
        parent="student",
        info={**meta, "parameters": count_parameters(model), "int8_only": True, **summary},
    )
