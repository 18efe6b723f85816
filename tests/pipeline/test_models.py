"""Models: the student is much smaller than the teacher; checkpoints round-trip and fail readably."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import ModelError
from pipeline.training.models import build_model, count_parameters, load_checkpoint, save_checkpoint


@pytest.mark.parametrize(("channels", "classes"), [(1, 10), (3, 10), (1, 4)])
def test_student_is_at_least_5x_smaller(channels: int, classes: int) -> None:
    """The built-in student has at least 5× fewer parameters than the built-in teacher."""
    teacher = count_parameters(build_model("teacher-cnn", channels, classes))
    student = count_parameters(build_model("student-cnn", channels, classes))
    assert student * 5 <= teacher


@pytest.mark.parametrize("arch", ["teacher-cnn", "student-cnn"])
def test_models_map_images_to_logits(arch: str) -> None:
    """Each architecture maps an N×C×H×W batch to N×classes logits (8×8 and 28×28 inputs)."""
    model = build_model(arch, 1, 7).eval()
    for size in (8, 28):
        assert model(torch.zeros(3, 1, size, size)).shape == (3, 7)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    """save_checkpoint → load_checkpoint restores every tensor and the same outputs, in eval mode."""
    torch.manual_seed(0)
    model = build_model("student-cnn", 1, 10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    model.eval()
    path = tmp_path / "ckpt" / "student.pt"
    save_checkpoint(model, path, {"arch": "student-cnn"})
    loaded = load_checkpoint(path, "student-cnn", 1, 10)
    assert not loaded.training
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert torch.load(path, weights_only=True)["meta"] == {"arch": "student-cnn"}


def test_no_temp_files_left(tmp_path: Path) -> None:
    """An atomic save leaves only the checkpoint in its directory."""
    path = tmp_path / "teacher.pt"
    save_checkpoint(build_model("teacher-cnn", 1, 10), path, {})
    save_checkpoint(build_model("teacher-cnn", 1, 10), path, {})  # overwrite too
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.pt"]


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    """A save that fails mid-way leaves neither a checkpoint nor a temp file."""
    path = tmp_path / "student.pt"
    with pytest.raises(Exception):
        save_checkpoint(build_model("student-cnn", 1, 10), path, {"unpicklable": lambda: None})
    assert list(tmp_path.iterdir()) == []


def test_plain_state_dict_loads(tmp_path: Path) -> None:
    """A bare ``torch.save(model.state_dict())`` file is accepted as a checkpoint."""
    model = build_model("student-cnn", 1, 10).eval()
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path, "student-cnn", 1, 10)
    torch.testing.assert_close(loaded.state_dict()["0.weight"], model.state_dict()["0.weight"])


def assert_one_line(error: ModelError) -> None:
    assert "\n" not in str(error)
    assert "\n" not in error.one_line()
    assert "Traceback" not in error.one_line()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_checkpoint_raises_model_error(tmp_path: Path) -> None:
    """Garbage bytes raise ModelError naming the file, on one readable line."""
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x80\x04this is not a checkpoint" * 10)
    with pytest.raises(ModelError) as caught:
        load_checkpoint(path, "student-cnn", 1, 10)
    assert "broken.pt" in str(caught.value)
    assert "corrupt" in str(caught.value)
    assert caught.value.exit_code == 4
    assert_one_line(caught.value)


def test_truncated_checkpoint_raises_model_error(tmp_path: Path) -> None:
    """A checkpoint cut in half raises ModelError, not a torch/zip exception."""
    path = tmp_path / "half.pt"
    save_checkpoint(build_model("student-cnn", 1, 10), path, {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError) as caught:
        load_checkpoint(path, "student-cnn", 1, 10)
    assert_one_line(caught.value)


def test_class_count_mismatch_raises_model_error(tmp_path: Path) -> None:
    """A checkpoint for 10 classes loaded as 7 names the bad tensor and hints at the class count."""
    path = tmp_path / "ten.pt"
    save_checkpoint(build_model("student-cnn", 1, 10), path, {})
    with pytest.raises(ModelError) as caught:
        load_checkpoint(path, "student-cnn", 1, 7)
    message = str(caught.value)
    assert "does not fit student-cnn" in message
    assert "10" in message and "7" in message
    assert "class count" in caught.value.one_line()
    assert_one_line(caught.value)


def test_wrong_architecture_raises_model_error(tmp_path: Path) -> None:
    """A teacher checkpoint loaded as the student names missing/unexpected keys."""
    path = tmp_path / "teacher.pt"
    save_checkpoint(build_model("teacher-cnn", 1, 10), path, {})
    with pytest.raises(ModelError, match="does not fit student-cnn") as caught:
        load_checkpoint(path, "student-cnn", 1, 10)
    assert_one_line(caught.value)


def test_missing_checkpoint_and_non_state_dict(tmp_path: Path) -> None:
    """A missing file and a file holding no state_dict each raise ModelError."""
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt", "student-cnn", 1, 10)
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match="no state_dict"):
        load_checkpoint(path, "student-cnn", 1, 10)


def test_unknown_architecture_is_config_error() -> None:
    """An unknown arch name lists the valid architectures."""
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="student-cnn"):
        build_model("student-cn", 1, 10)
