"""Distill stage: a teacher from a checkpoint, a student distilled from it, reuse and retraining rules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.config_load import parse_config
from pipeline.errors import ModelError
from pipeline.rundir import RunDir
from pipeline.stages.distill import (
    BUNDLED_TEACHER,
    STUDENT_PATH,
    TEACHER_PATH,
    ensure_teacher,
    run_distill,
    teacher_source,
)
from pipeline.training.models import count_parameters, load_checkpoint


def inode(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture
def checkpoint_config(finished_run: Path, tiny_config_dict: dict) -> dict:
    """The tiny config with the session run's trained teacher as ``teacher.checkpoint``."""
    tiny_config_dict["teacher"]["checkpoint"] = str(finished_run / TEACHER_PATH)
    return tiny_config_dict


def test_teacher_from_checkpoint_then_reused(tmp_path: Path, finished_run: Path, checkpoint_config: dict) -> None:
    """A configured checkpoint becomes the run's teacher unchanged; a second call rewrites nothing."""
    run = RunDir.create(tmp_path / "run", parse_config(checkpoint_config))
    teacher = ensure_teacher(run)
    original = load_checkpoint(finished_run / TEACHER_PATH, "teacher-cnn", 1, 10)
    for key, tensor in original.state_dict().items():
        assert torch.equal(teacher.state_dict()[key], tensor)
    record = run.manifest.artifacts["teacher"]
    assert record.info["source"] == checkpoint_config["teacher"]["checkpoint"]
    assert record.info["parameters"] == count_parameters(original)
    state = inode(run.path(TEACHER_PATH))
    ensure_teacher(RunDir.open(run.root))
    assert inode(run.path(TEACHER_PATH)) == state


def test_distill_reuse_and_retrain(tmp_path: Path, checkpoint_config: dict) -> None:
    """run_distill records the student; unchanged inputs reuse it; a changed distill config retrains
    only the student."""
    root = tmp_path / "run"
    run = RunDir.create(root, parse_config(checkpoint_config))
    student = run_distill(run)
    record = run.manifest.artifacts["student"]
    assert record.parent == "teacher" and record.stage == "distill"
    assert len(record.info["history"]) == checkpoint_config["distill"]["epochs"]
    assert record.info["val_accuracy"] > 50
    assert record.info["parameters"] * 5 <= run.manifest.artifacts["teacher"].info["parameters"]
    assert not student.training
    teacher_state, student_state = inode(root / TEACHER_PATH), inode(root / STUDENT_PATH)

    run_distill(RunDir.create(root, parse_config(checkpoint_config)))
    assert inode(root / TEACHER_PATH) == teacher_state
    assert inode(root / STUDENT_PATH) == student_state

    checkpoint_config["distill"]["losses"] = [{"name": "hinton", "temperature": 4.0, "alpha": 0.5}]
    changed = RunDir.create(root, parse_config(checkpoint_config))
    run_distill(changed)
    assert inode(root / TEACHER_PATH) == teacher_state
    assert inode(root / STUDENT_PATH) != student_state
    assert changed.manifest.artifacts["student"].id != record.id


def test_distill_is_deterministic(tmp_path: Path, checkpoint_config: dict) -> None:
    """Two runs with the same config seed distil bit-identical students, whatever ran before them."""
    students = []
    for name, unrelated_seed in (("a", 123), ("b", 456)):
        torch.manual_seed(unrelated_seed)  # e.g. another stage or library drew random numbers first
        students.append(run_distill(RunDir.create(tmp_path / name, parse_config(checkpoint_config))).state_dict())
    for key, tensor in students[0].items():
        assert torch.equal(students[1][key], tensor), key


def test_missing_teacher_checkpoint_is_model_error(tmp_path: Path, tiny_config_dict: dict) -> None:
    """A configured teacher checkpoint that does not exist raises ModelError naming it."""
    tiny_config_dict["teacher"]["checkpoint"] = str(tmp_path / "absent.pt")
    run = RunDir.create(tmp_path / "run", parse_config(tiny_config_dict))
    with pytest.raises(ModelError, match="absent.pt"):
        ensure_teacher(run)


def test_mismatched_teacher_checkpoint_is_model_error(
    tmp_path: Path, finished_run: Path, tiny_config_dict: dict
) -> None:
    """The student's checkpoint given as the teacher raises ModelError, not a torch error."""
    tiny_config_dict["teacher"]["checkpoint"] = str(finished_run / STUDENT_PATH)
    run = RunDir.create(tmp_path / "run", parse_config(tiny_config_dict))
    with pytest.raises(ModelError, match="does not fit teacher-cnn"):
        ensure_teacher(run)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "bundled"),
        ({"teacher": {"checkpoint": None}}, None),
        ({"data": {"source": "digits"}}, None),
        ({"teacher": {"arch": "student-cnn"}}, None),
        ({"teacher": {"checkpoint": "my/teacher.pt"}}, "my/teacher.pt"),
    ],
)
def test_teacher_source_resolves_auto(overrides: dict, expected: str | None) -> None:
    """``checkpoint: auto`` loads the bundled teacher only for fashion-mnist and the built-in teacher-cnn."""
    run = SimpleNamespace(config=parse_config(overrides))
    source = teacher_source(run)
    assert source == (BUNDLED_TEACHER if expected == "bundled" else expected and Path(expected))


def test_bundled_teacher_ships_and_loads() -> None:
    """The bundled teacher is a weights-only state_dict of teacher-cnn for 28×28 gray, 10 classes."""
    model = load_checkpoint(BUNDLED_TEACHER, "teacher-cnn", 1, 10)
    assert count_parameters(model) == 241_898
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
