"""Stage 1: the teacher (loaded or trained) and the student distilled from it."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline.models import build_model, count_parameters, load_checkpoint, save_checkpoint
from pipeline.rundir import RunDir
from pipeline.errors import ModelError
from pipeline.io import sha256_file
from pipeline.train import distill_student, predict_logits, seed_everything, train_teacher

TEACHER_PATH = "checkpoints/teacher.pt"
STUDENT_PATH = "checkpoints/student.pt"


def _shape(run: RunDir) -> tuple[int, int]:
    return run.splits.input_shape[0], len(run.splits.classes)


def load_teacher(run: RunDir) -> nn.Module:
    channels, classes = _shape(run)
    return load_checkpoint(run.path(run.require("teacher").path), run.config.teacher.arch, channels, classes)


def load_student(run: RunDir) -> nn.Module:
    channels, classes = _shape(run)
    return load_checkpoint(run.path(run.require("student").path), run.config.distill.arch, channels, classes)


def _teacher_id(run: RunDir) -> str:
    cfg = run.config.teacher.model_dump()
    if run.config.teacher.checkpoint:
        checkpoint = Path(run.config.teacher.checkpoint)
        if not checkpoint.is_file():
            raise ModelError(f"teacher checkpoint {checkpoint} does not exist", "fix teacher.checkpoint in the config")
        cfg = {"arch": cfg["arch"], "checkpoint_sha256": sha256_file(checkpoint)}
    return run.artifact_id("teacher", {"teacher": cfg, "data": run.config.data.model_dump(), "seed": run.config.seed}, [])


def ensure_teacher(run: RunDir, force: bool = False) -> nn.Module:
    """Load the configured teacher checkpoint, or train one; reuse the run's teacher when unchanged."""
    cfg = run.config.teacher
    channels, classes = _shape(run)
    teacher_id = _teacher_id(run)
    if not force and run.manifest.reusable("teacher", teacher_id, run.root):
        return load_teacher(run)
    if cfg.checkpoint:
        teacher = load_checkpoint(Path(cfg.checkpoint), cfg.arch, channels, classes)
        info = {"source": cfg.checkpoint}
    else:
        seed_everything(run.config.seed)
        teacher = build_model(cfg.arch, channels, classes)
        info = {"source": "trained by edgepipe", **train_teacher(teacher, run.splits, cfg, run.config.seed)}
    meta = {"arch": cfg.arch, "in_channels": channels, "num_classes": classes}
    save_checkpoint(teacher, run.path(TEACHER_PATH), meta)
    run.record("teacher", "distill", teacher_id, run.path(TEACHER_PATH),
               info={**meta, "parameters": count_parameters(teacher), **info})
    return teacher


def run_distill(run: RunDir, force: bool = False) -> nn.Module:
    """Distil the student from the teacher (both reused when their inputs are unchanged)."""
    teacher = ensure_teacher(run, force)
    cfg = run.config.distill
    channels, classes = _shape(run)
    student_id = run.artifact_id("student", {"distill": cfg.model_dump(), "seed": run.config.seed},
                                 [run.manifest.artifacts["teacher"].id])
    if not force and run.manifest.reusable("student", student_id, run.root):
        return load_student(run)
    seed_everything(run.config.seed)
    student = build_model(cfg.arch, channels, classes)
    teacher_logits = predict_logits(teacher, run.splits, run.splits.train)
    history = distill_student(student, teacher_logits, run.splits, cfg, run.config.seed)
    meta = {"arch": cfg.arch, "in_channels": channels, "num_classes": classes}
    save_checkpoint(student, run.path(STUDENT_PATH), meta)
    run.record("student", "distill", student_id, run.path(STUDENT_PATH), parent="teacher",
               info={**meta, "parameters": count_parameters(student), "loss": cfg.loss, **history})
    return student
