"""Teachers from other frameworks: a Keras and an ONNX teacher trained here distill through `run`; a TFLite teacher
edgepipe exported in an earlier run distills like its PyTorch original; mismatches and feature losses are one-line
errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from torch import nn

from pipeline.config_load import parse_config
from pipeline.errors import ConfigError, DataError, ModelError
from pipeline.run import run_pipeline
from pipeline.rundir import RunDir
from pipeline.stages.bench import run_bench
from pipeline.stages.distill import ensure_teacher, run_distill
from pipeline.training.run_models import load_model
from pipeline.training.teacher_files import FileTeacher
from pipeline.training.train import accuracy, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")

PIXELS = {"mean": [0.0], "std": [1.0]}  # the teachers below take pixel / 255 unchanged
# Digits' test split has 359 images: one image is 0.28 points, and two students of 2-4 epochs differ by a few
# images from seed effects alone. A student within this of its baseline is "within noise".
NOISE_POINTS = 2.0
QUICK_BENCH = {"batch_sizes": [1], "threads": [1], "memory": False}


def _config(teacher: dict, **distill) -> dict:
    raw = copy.deepcopy(TINY_CONFIG)
    raw["teacher"] = teacher
    raw["distill"] |= distill
    raw["export"] = {"targets": ["onnx-fp32"]}
    raw["bench"] |= QUICK_BENCH
    return raw


def _nhwc_pixels(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1).astype(np.float32) / 255


@pytest.fixture(scope="module")
def keras_teacher(tmp_path_factory: pytest.TempPathFactory, digits_splits) -> Path:
    """A Keras CNN trained here on digits (NHWC pixels / 255), ending in a softmax as Keras models often do."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPool2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(_nhwc_pixels(digits_splits.train.x), digits_splits.train.y, epochs=30, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "teacher.keras"
    model.save(path)
    return path


class _NHWCPixels(nn.Module):
    """``model`` behind an NHWC input of pixel / 255, the normalization it was trained with inside the graph."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.permute(0, 3, 1, 2) - self.mean) / self.std)


def _to_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(
        model.eval(), (example,), str(path), input_names=["x"], dynamic_axes={"x": {0: "batch"}}, dynamo=False
    )
    return path


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory: pytest.TempPathFactory, teacher_checkpoint: Path, digits_splits) -> Path:
    """The teacher-cnn trained on digits (conftest), as ONNX taking NHWC pixels / 255."""
    from pipeline.training.models import load_checkpoint

    teacher = load_checkpoint(teacher_checkpoint, "teacher-cnn", 1, 10, {})
    wrapped = _NHWCPixels(teacher, digits_splits.mean, digits_splits.std)
    example = torch.from_numpy(_nhwc_pixels(digits_splits.test.x[:2]))
    return _to_onnx(wrapped, example, tmp_path_factory.mktemp("onnx") / "teacher.onnx")


def _measured(run: RunDir, artifact: str):
    return next(m for m in run.manifest.measurements if m.artifact == artifact)


def test_keras_teacher_distills_through_run(keras_teacher: Path, tmp_path: Path, digits_splits) -> None:
    """A .keras teacher runs on TensorFlow: its softmax outputs become log-probabilities, its accuracy is measured
    on TensorFlow (as Keras itself scores it), the report names the runtime, and the student is at least as good
    as the same student trained from labels alone, within noise."""
    import keras

    raw = _config({"checkpoint": str(keras_teacher), "input": PIXELS}, epochs=4, baseline=True)
    run = RunDir.open(run_pipeline(parse_config(raw), tmp_path / "run", set()))
    teacher = _measured(run, "teacher")
    assert (teacher.runtime, teacher.provider) == ("tensorflow", "CPU")
    probabilities = keras.saving.load_model(keras_teacher).predict(_nhwc_pixels(digits_splits.test.x), verbose=0)
    assert teacher.accuracy == pytest.approx(accuracy(probabilities, digits_splits.test.y), abs=0.01)
    info = run.require("teacher").info
    assert info["kind"] == "file" and info["interface"]["outputs"] == "probabilities"
    assert info["interface"]["input"]["layout"] == "NHWC" and info["interface"]["layout_from"] == "file"
    student, baseline = _measured(run, "student").accuracy, _measured(run, "baseline").accuracy
    assert student >= baseline - NOISE_POINTS, (student, baseline)
    report = (run.root / "report.md").read_text()
    assert "run on **tensorflow**" in report and "| teacher | tensorflow (CPU" in report


def test_onnx_teacher_distills_through_run(onnx_teacher: Path, teacher_checkpoint: Path, tmp_path: Path) -> None:
    """An ONNX teacher (NHWC, its own normalization) runs on onnxruntime with the accuracy of the PyTorch model
    it was exported from, and its student is within noise of the baseline or better."""
    raw = _config({"checkpoint": str(onnx_teacher), "input": PIXELS}, epochs=4, baseline=True)
    run = RunDir.open(run_pipeline(parse_config(raw), tmp_path / "run", set()))
    teacher = _measured(run, "teacher")
    assert (teacher.runtime, teacher.provider) == ("onnxruntime", "CPU")
    pytorch = RunDir.create(tmp_path / "pytorch", parse_config(_config({"checkpoint": str(teacher_checkpoint)})))
    test = pytorch.splits.test
    pytorch_top1 = accuracy(predict_logits(ensure_teacher(pytorch), pytorch.splits, test), test.y)
    assert teacher.accuracy == pytest.approx(pytorch_top1, abs=0.01)  # the manifest rounds to 2 decimals
    assert run.require("teacher").info["interface"]["outputs"] == "logits"
    student, baseline = _measured(run, "student").accuracy, _measured(run, "baseline").accuracy
    assert student >= baseline - NOISE_POINTS, (student, baseline)
    assert "run on **onnxruntime**" in (run.root / "report.md").read_text()


def _student_top1(root: Path, teacher: dict) -> tuple[float, RunDir]:
    raw = _config(teacher, epochs=4)
    raw["export"] = {"targets": []}
    run = RunDir.create(root, parse_config(raw))
    student = run_distill(run)
    test = run.splits.test
    return accuracy(predict_logits(student, run.splits, test), test.y), run


@pytest.mark.parametrize(
    ("target", "within"),
    [("tflite-fp32", 0.5), ("tflite-int8", NOISE_POINTS), ("onnx-int8", NOISE_POINTS)],
)
def test_exported_file_teacher_matches_its_pytorch_original(
    finished_run: Path, tmp_path: Path, target: str, within: float
) -> None:
    """The earlier run's student, as edgepipe exported it, teaches a new student as well as its PyTorch checkpoint
    does: within 0.5 points from the float TFLite file (its logits are the checkpoint's to ~1e-5); int8 files
    (quantized TFLite, QDQ ONNX) give dequantized logits, other by a few percent, so their students are compared
    within noise. The file's normalization is read from the manifest.json beside it, and bench measures it on its
    runtime with the earlier run's accuracy for that file."""
    earlier = RunDir.open(finished_run)
    original = {"checkpoint": str(finished_run / "checkpoints" / "student.pt"), "arch": "student-cnn"}
    from_original, _ = _student_top1(tmp_path / "pytorch", original)
    exported = earlier.path(earlier.require(target).path)
    from_file, run = _student_top1(tmp_path / "file", {"checkpoint": str(exported)})
    assert abs(from_file - from_original) <= within, (from_file, from_original)
    interface = run.require("teacher").info["interface"]
    assert interface["normalization_from"].startswith(str(finished_run / "manifest.json"))
    assert (interface["input"]["scale"] is not None) == (target == "tflite-int8")
    run_bench(run)
    runtime = "tflite" if target.startswith("tflite") else "onnxruntime"
    earlier_top1 = next(
        m.accuracy for m in earlier.manifest.measurements if m.artifact == target and m.runtime == runtime
    )
    assert _measured(run, "teacher").runtime == runtime and _measured(run, "teacher").accuracy == earlier_top1


@pytest.mark.parametrize(
    ("form", "stored", "fmt"),
    [("saved", "teacher.savedmodel.zip", "SavedModel"), ("teacher.h5", "teacher.h5", "Keras")],
)
def test_other_keras_forms(keras_teacher: Path, tmp_path: Path, form: str, stored: str, fmt: str) -> None:
    """A SavedModel directory (stored in the run as one zip) and a legacy .h5 file teach like the .keras file:
    same logits, and the run's stored copy reloads with them."""
    import keras

    model = keras.saving.load_model(keras_teacher)
    source = tmp_path / form
    if form == "saved":
        model.export(str(source), verbose=False)
    else:
        model.save(source)
    runs = {}
    for name, checkpoint in (("keras", keras_teacher), ("other", source)):
        raw = _config({"checkpoint": str(checkpoint), "input": PIXELS}, epochs=1)
        runs[name] = RunDir.create(tmp_path / name, parse_config(raw))
    x = torch.from_numpy(runs["keras"].splits.normalize(runs["keras"].splits.val.x[:16]))
    expected = ensure_teacher(runs["keras"])(x)
    teacher = ensure_teacher(runs["other"])
    record = runs["other"].require("teacher")
    assert record.path == f"checkpoints/{stored}" and record.info["interface"]["format"] == fmt
    assert torch.allclose(teacher(x), expected, atol=1e-5)
    assert torch.equal(load_model(RunDir.open(runs["other"].root), "teacher")(x), teacher(x))


def test_config_contradicting_the_file_is_an_error(finished_run: Path, tmp_path: Path) -> None:
    """teacher.input.mean/std other than what the run manifest beside the file says: one line with both."""
    exported = finished_run / RunDir.open(finished_run).require("tflite-fp32").path
    run = RunDir.create(tmp_path / "run", parse_config(_config({"checkpoint": str(exported), "input": PIXELS})))
    with pytest.raises(ModelError) as caught:
        ensure_teacher(run)
    line = caught.value.one_line()
    assert "the teacher student-tflite-fp32.tflite normalizes with pixel_scale 0.00392157, mean [0." in line
    assert "teacher.input says 0.00392157, [0.0], [1.0]" in line and "manifest.json" in line


def _count_calls(monkeypatch) -> list[int]:
    calls = []
    forward = FileTeacher.forward
    monkeypatch.setattr(FileTeacher, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    return calls


@pytest.mark.parametrize("augment", [False, True])
def test_logits_cached_unless_augmented(onnx_teacher: Path, tmp_path: Path, monkeypatch, augment: bool) -> None:
    """Without augmentation the teacher sees each training image once (its logits cached); with it, every
    augmented batch goes through the teacher."""
    raw = _config({"checkpoint": str(onnx_teacher), "input": PIXELS}, epochs=2)
    if augment:
        raw["data"] = {"source": "digits", "augment": {"hflip": True}}
    run = RunDir.create(tmp_path / "run", parse_config(raw))
    calls = _count_calls(monkeypatch)
    run_distill(run)
    train = len(run.splits.train)
    training_images = sum(calls) - 2  # the class-count check feeds two images
    assert training_images == (2 * train if augment else train)


def _onnx_file(path: Path, model: nn.Module, shape: tuple[int, ...]) -> Path:
    return _to_onnx(model, torch.zeros(shape), path)


def _tiny(in_channels: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))


@pytest.mark.parametrize(
    ("shape", "classes", "message"),
    [
        (
            (1, 3, 8, 8),
            10,
            "the teacher bad.onnx takes 3-channel images (NCHW ['batch', 3, 8, 8]); the data (digits) "
            "gives 1×8×8 (C×H×W) (hint: set data.channels: 3)",
        ),
        (
            (1, 1, 16, 16),
            10,
            "the teacher bad.onnx takes 16×16 images (NCHW ['batch', 1, 16, 16]); the data (digits) "
            "gives 1×8×8 (C×H×W) (hint: set data.image_size: [16, 16])",
        ),
        ((1, 1, 8, 8), 5, "the teacher bad.onnx outputs 5 classes; the data (digits) has 10"),
    ],
)
def test_mismatch_is_one_line_naming_both_sides(tmp_path: Path, shape, classes: int, message: str) -> None:
    path = _onnx_file(tmp_path / "bad.onnx", _tiny(shape[1], classes), shape)
    run = RunDir.create(tmp_path / "run", parse_config(_config({"checkpoint": str(path), "input": PIXELS})))
    with pytest.raises(DataError) as caught:
        ensure_teacher(run)
    assert message in caught.value.one_line() and "\n" not in caught.value.one_line()
    assert not (tmp_path / "run" / "checkpoints" / "teacher.onnx").exists()  # nothing half-adopted


def test_mismatch_from_the_cli(tmp_path: Path, write_config) -> None:
    """`edgepipe distill` prints the one line and exits 3 (data error); a Keras file is checked the same way."""
    import keras
    from typer.testing import CliRunner

    from pipeline.cli import app

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model.save(tmp_path / "rgb.keras")
    config = write_config(_config({"checkpoint": str(tmp_path / "rgb.keras"), "input": PIXELS}))
    result = CliRunner().invoke(app, ["distill", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 3
    errors = [line for line in result.output.splitlines() if line.startswith("edgepipe: error:")]
    assert (
        len(errors) == 1
        and "takes 3-channel images (NHWC ['batch', 8, 8, 3]); the data (digits) gives 1×8×8" in errors[0]
    )
    assert "Traceback" not in result.output


def test_feature_loss_with_a_file_teacher_is_a_config_error() -> None:
    raw = _config({"checkpoint": "teacher.onnx"})
    raw["distill"]["losses"] = [{"name": "hinton"}, {"name": "hint", "student_layer": "3", "teacher_layer": "3"}]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    line = caught.value.one_line()
    assert "loss 'hint' reads the teacher's inner layers, but the teacher is a ONNX file" in line and "\n" not in line


def test_teacher_input_without_a_file_teacher_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config({"checkpoint": "teacher.pt", "input": PIXELS}))
    assert "teacher.input describes an ONNX, TFLite or Keras teacher file" in caught.value.one_line()


@pytest.mark.parametrize(
    ("teacher", "error", "message"),
    [
        ({}, ModelError, "does not say how its input is normalized (hint: set teacher.input.mean and std"),
        (
            {"input": PIXELS | {"layout": "NCHW"}},
            ModelError,
            "takes NHWC input ['batch', 8, 8, 1], teacher.input.layout says NCHW",
        ),
    ],
)
def test_what_the_file_does_not_settle(onnx_teacher: Path, tmp_path: Path, teacher: dict, error, message: str) -> None:
    """No normalization in file or config, or a config layout the file contradicts: one line saying what to set."""
    run = RunDir.create(tmp_path / "run", parse_config(_config({"checkpoint": str(onnx_teacher)} | teacher)))
    with pytest.raises(error) as caught:
        ensure_teacher(run)
    assert message in caught.value.one_line()


def test_manifest_records_the_interface(onnx_teacher: Path, tmp_path: Path) -> None:
    """What an outside reader needs to feed the teacher again is in manifest.json."""
    run = RunDir.create(tmp_path / "run", parse_config(_config({"checkpoint": str(onnx_teacher), "input": PIXELS})))
    ensure_teacher(run)
    info = json.loads((tmp_path / "run" / "manifest.json").read_text())["artifacts"]["teacher"]["info"]
    face = info["interface"]
    assert (
        face["format"] == "ONNX" and face["runtime"] == "onnxruntime" and face["input"]["shape"] == ["batch", 8, 8, 1]
    )
    assert face["pixel_scale"] == pytest.approx(1 / 255) and face["mean"] == [0.0] and face["std"] == [1.0]
    assert face["normalization_from"] == "config (teacher.input)" and info["parameters"] > 0
