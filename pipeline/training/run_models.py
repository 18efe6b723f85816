"""The trained models of a run (teacher, student, baseline, pruned or QAT-KD student), loaded from the checkpoints
the manifest records; every stage after distill loads its models here."""

from __future__ import annotations

from torch import nn

from pipeline.manifest import ArtifactRecord
from pipeline.rundir import RunDir
from pipeline.training.class_map import restrict_as_recorded
from pipeline.training.models import load_checkpoint, load_program, select_logits
from pipeline.training.teacher_files import load_file_teacher


def load_model(run: RunDir, name: str) -> nn.Module:
    """Load a trained model of this run (teacher, student or baseline) from its checkpoint; a model with several
    outputs answers with the logits output its record (or that of the model it was made from) selected."""
    record = run.require(name)
    model = _load_plain(run, record)
    outputs = _outputs_of(run, record)
    model = select_logits(model, outputs["selected"]) if outputs else model
    mapped = {key: run.manifest.lineage_info(name, key) for key in ("class_map", "source_outputs")}
    return restrict_as_recorded(model, mapped, run.splits.classes)


def _load_plain(run: RunDir, record: ArtifactRecord) -> nn.Module:
    path = run.path(record.path)
    if record.info.get("kind") == "program":
        return load_program(path)
    if record.info.get("kind") == "file":
        return load_file_teacher(path, record.info["interface"], run.splits.mean, run.splits.std)
    channels, classes = run.splits.input_shape[0], len(run.splits.classes)
    classes = run.manifest.lineage_info(record.name, "source_outputs") or classes  # a class-mapped model's own count
    if record.info.get("kind") == "pruned":  # smaller layers than the arch builds: rebuilt from meta.structure
        from pipeline.training.prune_ops import load_pruned_checkpoint

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
