"""Stage 1: the teacher (loaded or trained), the student distilled from it, and optionally a baseline
student trained from labels alone with the same budget (to measure the KD gain)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from pipeline import distributed
from pipeline.config import LossSpec, TrainConfig
from pipeline.errors import ModelError
from pipeline.io import sha256_file
from pipeline.losses import Objective
from pipeline.manifest import ArtifactRecord
from pipeline.models import (
    arch_fingerprint,
    build_model,
    count_parameters,
    is_program,
    load_checkpoint,
    load_program,
    outputs_record,
    pick_output,
    save_checkpoint,
    select_logits,
)
from pipeline.rundir import RunDir
from pipeline.teacher_files import adopt_teacher_file, file_format, file_parameters, load_file_teacher, source_digest
from pipeline.train import TrainJob, fit, predict_logits, seed_everything

CE_ONLY = [LossSpec(name="ce")]
TEACHER_PATH = "checkpoints/teacher.pt"
STUDENT_PATH = "checkpoints/student.pt"
BUNDLED_TEACHER = Path(__file__).parent / "assets" / "teacher-cnn-fashion-mnist.pt"
BUNDLED_TEACHER_NOTE = "bundled with edgepipe (pipeline/assets; made by `python bench/bundled_teacher.py`)"


def _shape(run: RunDir) -> tuple[int, int]:
    return run.splits.input_shape[0], len(run.splits.classes)


def _example(run: RunDir) -> torch.Tensor:
    return torch.from_numpy(run.splits.normalize(run.splits.train.x[:2]))


def _output_key(role: str) -> str:
    return "teacher.output" if role == "teacher" else "distill.output"


def _check_outputs(model: nn.Module, run: RunDir, role: str, output: int | str = 0) -> tuple[nn.Module, dict | None]:
    """The model must take the data's input shape and give one logit per class, as its only output or as its
    output ``output``; returns the model answering with that output alone, and the manifest's record of it
    (None for a model that returns one tensor)."""
    classes = _shape(run)[1]
    try:
        with torch.no_grad():
            result = model.eval()(_example(run))
    except Exception as e:
        raise ModelError(
            f"the {role} does not accept the data's input {tuple(_example(run).shape)}: "
            f"{str(e).strip().splitlines()[0]}"
        ) from e
    logits = pick_output(result, output, _output_key(role))
    if logits.ndim != 2 or logits.shape[1] != classes:
        raise ModelError(
            f"the {role} gives outputs of shape {tuple(logits.shape)}, the data has {classes} classes",
            "check the model's class count or the data source"
            + ("" if logits is result else f", or {_output_key(role)} (the model returns several outputs)"),
        )
    record = outputs_record(result, output)
    return (model if record is None else select_logits(model, output)), record


def load_model(run: RunDir, name: str) -> nn.Module:
    """Load a trained model of this run (teacher, student or baseline) from its checkpoint; a model with several
    outputs answers with the logits output its record (or that of the model it was made from) selected."""
    record = run.require(name)
    model = _load_plain(run, record)
    outputs = _outputs_of(run, record)
    return select_logits(model, outputs["selected"]) if outputs else model


def _load_plain(run: RunDir, record: ArtifactRecord) -> nn.Module:
    path = run.path(record.path)
    if record.info.get("kind") == "program":
        return load_program(path)
    if record.info.get("kind") == "file":
        return load_file_teacher(path, record.info["interface"], run.splits.mean, run.splits.std)
    channels, classes = _shape(run)
    if record.info.get("kind") == "pruned":  # smaller layers than the arch builds: rebuilt from meta.structure
        from pipeline.prune_ops import load_pruned_checkpoint

        return load_pruned_checkpoint(path, record.info["arch"], channels, classes, record.info.get("arch_kwargs"))
    return load_checkpoint(path, record.info["arch"], channels, classes, record.info.get("arch_kwargs"))


def _outputs_of(run: RunDir, record: ArtifactRecord) -> dict | None:
    """The ``outputs`` info of a distilled model, or of the one a pruned or QAT student was made from."""
    artifacts = run.manifest.artifacts
    while "outputs" not in record.info and record.stage != "distill" and record.parent in artifacts:
        record = artifacts[record.parent]
    return record.info.get("outputs")


def load_teacher(run: RunDir) -> nn.Module:
    return load_model(run, "teacher")


def load_student(run: RunDir) -> nn.Module:
    return load_model(run, "student")


def teacher_source(run: RunDir) -> Path | None:
    """The teacher file to load (``checkpoint: auto`` resolved), or None when the pipeline trains the teacher."""
    cfg = run.config.teacher
    if cfg.checkpoint == "auto":
        bundled = cfg.arch == "teacher-cnn" and not cfg.arch_kwargs and run.config.data.source == "fashion-mnist"
        return BUNDLED_TEACHER if bundled else None
    return Path(cfg.checkpoint) if cfg.checkpoint else None


def _output_only_if_set(cfg: dict, output: int | str) -> dict:
    """A section's cache key with its ``output`` only when not the default (runs made before it keep their ids)."""
    return {**cfg, "output": output} if output != 0 else cfg


def _teacher_id(run: RunDir) -> str:
    cfg = run.config.teacher.model_dump(exclude={"output"})
    checkpoint = teacher_source(run)
    if checkpoint:
        foreign = file_format(checkpoint)
        if not (checkpoint.is_file() or (foreign and checkpoint.is_dir())):
            raise ModelError(f"teacher checkpoint {checkpoint} does not exist", "fix teacher.checkpoint in the config")
        try:
            digest = source_digest(checkpoint)
        except OSError as e:
            raise ModelError(f"cannot read teacher checkpoint {checkpoint}: {e.strerror}", "check its mode") from e
        if foreign:
            cfg = {"format": foreign, "input": cfg["input"], "checkpoint_sha256": digest}
        else:
            cfg = {"arch": cfg["arch"], "arch_kwargs": cfg["arch_kwargs"], "checkpoint_sha256": digest}
    key = {
        "teacher": _output_only_if_set(cfg, run.config.teacher.output),
        "model": arch_fingerprint(run.config.teacher.arch),
        "data": run.config.data.model_dump(),
        "seed": run.config.seed,
    }
    return run.artifact_id("teacher", key, [])


def _train(
    run: RunDir,
    name: str,
    arch: str,
    arch_kwargs: dict,
    cfg: TrainConfig,
    losses: list[LossSpec],
    artifact_id: str,
    teacher: nn.Module | None = None,
    parent: str | None = None,
    output: int | str = 0,
) -> nn.Module:
    """Build, train, save and record one model (resuming from its progress checkpoint when one matches)."""
    channels, classes = _shape(run)
    seed_everything(run.config.seed)
    model, outputs = _check_outputs(build_model(arch, channels, classes, arch_kwargs), run, name, output)
    objective = Objective(losses, model, teacher, _example(run))
    teacher_logits = None
    if objective.needs_teacher and not objective.teacher_layers and not run.splits.augment.enabled:
        teacher_logits = predict_logits(teacher, run.splits, run.splits.train)
    progress_path = run.path(f"checkpoints/{name}.progress.pt")
    job = TrainJob(
        name=name,
        model=model,
        objective=objective,
        cfg=cfg,
        seed=run.config.seed,
        progress_path=progress_path,
        job_id=artifact_id,
        teacher=teacher,
        teacher_logits=teacher_logits,
    )
    summary = fit(job, run.splits)
    meta = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "in_channels": channels,
        "num_classes": classes,
        "kind": "state_dict",
    }
    path = run.path(f"checkpoints/{name}.pt")
    if distributed.is_main():
        save_checkpoint(model, path, meta)
    distributed.barrier()
    run.record(
        name,
        "distill",
        artifact_id,
        path,
        parent=parent,
        info={
            **meta,
            "parameters": count_parameters(model),
            **({"outputs": outputs} if outputs else {}),
            "losses": [spec.model_dump() for spec in losses],
            **summary,
        },
    )
    if distributed.is_main():
        progress_path.unlink(missing_ok=True)
    # Contiguous, as when loaded from its checkpoint: channels-last weights (from fit) give other float rounding,
    # so a student distilled from a just-trained teacher would differ from one distilled after a resume.
    return model.cpu().to(memory_format=torch.contiguous_format)


def ensure_teacher(run: RunDir, force: bool = False) -> nn.Module:
    """Load the configured teacher (checkpoint or program), or train one; reuse the run's when unchanged."""
    cfg = run.config.teacher
    teacher_id = _teacher_id(run)
    if not force and run.manifest.reusable("teacher", teacher_id, run.root):
        return load_teacher(run)
    source = teacher_source(run)
    if source is None:
        return _train(run, "teacher", cfg.arch, cfg.arch_kwargs, cfg, CE_ONLY, teacher_id, output=cfg.output)
    channels, classes = _shape(run)
    if file_format(source):
        return _adopt_file_teacher(run, source, teacher_id)
    if is_program(source):
        teacher, kind, path = load_program(source), "program", run.path(f"checkpoints/teacher{source.suffix or '.pt'}")
    else:
        teacher = load_checkpoint(source, cfg.arch, channels, classes, cfg.arch_kwargs)
        kind, path = "state_dict", run.path(TEACHER_PATH)
    teacher, outputs = _check_outputs(teacher, run, "teacher", cfg.output)
    meta = {
        "arch": cfg.arch if kind == "state_dict" else f"program:{source.name}",
        "arch_kwargs": cfg.arch_kwargs,
        "in_channels": channels,
        "num_classes": classes,
        "kind": kind,
    }
    if distributed.is_main():
        if kind == "program":
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path)
        else:
            save_checkpoint(teacher, path, meta)
    distributed.barrier()
    run.record(
        "teacher",
        "distill",
        teacher_id,
        path,
        info={
            **meta,
            "parameters": count_parameters(teacher),
            **({"outputs": outputs} if outputs else {}),
            "source": BUNDLED_TEACHER_NOTE if source == BUNDLED_TEACHER else str(source),
            "source_sha256": sha256_file(source),
        },
    )
    return teacher


def _adopt_file_teacher(run: RunDir, source: Path, teacher_id: str) -> nn.Module:
    """An ONNX, TFLite or Keras teacher: checked against the data, copied into the run, run in its own runtime."""
    channels, classes = _shape(run)
    folder = run.path("checkpoints")  # store_teacher_file's atomic write makes it
    teacher = adopt_teacher_file(source, run.config.teacher.input, run.splits, run.config.data.source, folder)
    _check_outputs(teacher, run, "teacher", run.config.teacher.output)
    interface = teacher.interface
    run.record(
        "teacher",
        "distill",
        teacher_id,
        teacher.path,
        info={
            "arch": f"{interface.format} file {source.name}",
            "in_channels": channels,
            "num_classes": classes,
            "kind": "file",
            "interface": interface.model_dump(),
            "parameters": file_parameters(teacher.path, interface),
            "source": str(source),
            "source_sha256": source_digest(source),
        },
    )
    return teacher


def run_distill(run: RunDir, force: bool = False, baseline: bool | None = None) -> nn.Module:
    """Distil the student from the teacher; with ``baseline``, also train it from labels alone."""
    cfg = run.config.distill
    channels, classes = _shape(run)
    _check_outputs(build_model(cfg.arch, channels, classes, cfg.arch_kwargs), run, "student", cfg.output)  # fail fast
    teacher = ensure_teacher(run, force)
    key = {
        "distill": _output_only_if_set(cfg.model_dump(exclude={"baseline", "output"}), cfg.output),
        "model": arch_fingerprint(cfg.arch),
        "data": run.config.data.model_dump(),
        "seed": run.config.seed,
    }
    student_id = run.artifact_id("student", key, [run.manifest.artifacts["teacher"].id])
    if force or not run.manifest.reusable("student", student_id, run.root):
        student = _train(
            run, "student", cfg.arch, cfg.arch_kwargs, cfg, cfg.losses, student_id, teacher, "teacher", cfg.output
        )
    else:
        student = load_student(run)
    if cfg.baseline if baseline is None else baseline:
        baseline_cfg = cfg.model_dump(exclude={"baseline", "losses", "output"})
        baseline_key = {**key, "distill": _output_only_if_set(baseline_cfg, cfg.output)}
        baseline_id = run.artifact_id("baseline", baseline_key, [])
        if force or not run.manifest.reusable("baseline", baseline_id, run.root):
            _train(run, "baseline", cfg.arch, cfg.arch_kwargs, cfg, CE_ONLY, baseline_id, output=cfg.output)
    return student
