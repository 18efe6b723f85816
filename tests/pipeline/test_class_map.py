"""Class maps: a model whose outputs are not the data's classes in order (e.g. 10 of an ImageNet model's 1000) is
used without a wrapper — resolved from a labels file or a mapping, restricted inside the model (PyTorch or a teacher
file), recorded in the manifest and the release bundle, and baked into the exported files."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from torch import nn

from pipeline.config_load import parse_config
from pipeline.errors import ConfigError, ModelError
from pipeline.manifest import TensorSpec
from pipeline.rundir import RunDir
from pipeline.training.class_map import (
    class_map_info,
    outputs_to_build,
    resolve_class_map,
    restrict_as_recorded,
    restrict_outputs,
)
from pipeline.training.models import load_checkpoint, save_checkpoint, select_logits, teacher_cnn
from pipeline.training.teacher_files import FileTeacher, TeacherInterface

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = [str(d) for d in range(10)]
# Where each digit sits among the 12 outputs of the teacher built below; outputs 2 and 8 are no digit.
PLACES = [11, 3, 0, 7, 5, 9, 1, 10, 4, 6]
EXTRA = [2, 8]


def _labels(tmp_path: Path, names: list[str], name: str = "labels.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def _twelve_names() -> list[str]:
    names = [f"extra-{i}" for i in range(12)]
    for digit, place in zip(DIGITS, PLACES):
        names[place] = digit
    return names


def _fails(spec, classes: list[str], outputs: int, *parts: str) -> ModelError:
    with pytest.raises(ModelError) as caught:
        resolve_class_map(spec, classes, outputs, "teacher")
    text = caught.value.one_line()
    assert "\n" not in text and caught.value.exit_code == 4
    for part in parts:
        assert part in text, text
    return caught.value


# --- resolving a class map ----------------------------------------------------------------------------------------


def test_labels_file_gives_each_data_class_its_output(tmp_path: Path) -> None:
    """Names compare after strip; the result is in the data's class order."""
    path = _labels(tmp_path, ["  tench ", "goldfish", "great white shark", "tiger shark"])
    assert resolve_class_map(str(path), ["tiger shark", "tench"], 4, "teacher") == [3, 0]


def test_labels_file_matches_case_insensitively_when_unique(tmp_path: Path) -> None:
    path = _labels(tmp_path, ["Tench", "Goldfish", "crane", "Crane"])
    assert resolve_class_map(str(path), ["goldfish", "tench"], 4, "teacher") == [1, 0]
    assert resolve_class_map(str(path), ["Crane"], 4, "teacher") == [3]  # exact match first
    _fails(str(path), ["CRANE"], 4, "'CRANE' names outputs [2, 3]", "mapping {class: output index}")


def test_labels_file_errors(tmp_path: Path) -> None:
    names = ["tench", "goldfish", "shark"]
    _fails(
        str(_labels(tmp_path, names)),
        ["goldfsh", "whale"],
        3,
        "2 data class(es) not in",
        "'goldfsh' (close: 'goldfish')",
    )
    _fails(str(_labels(tmp_path, names)), ["tench"], 1000, "names 3 outputs, the teacher gives 1000")
    blank = tmp_path / "blank.txt"
    blank.write_text("tench\n\ngoldfish\n")
    _fails(str(blank), ["tench"], 3, "has a blank line 2", "no blank lines")
    _fails(str(tmp_path / "absent.txt"), ["tench"], 3, "cannot read the labels file", "teacher.class_map")


def test_mapping_resolves_and_checks_every_class() -> None:
    classes = ["cat", "dog", "fish"]
    assert resolve_class_map({"fish": 7, "cat": 281, "dog": 207}, classes, 1000, "teacher") == [281, 207, 7]
    _fails({"cat": 281}, classes, 1000, "2 data class(es) not in teacher.class_map: 'dog', 'fish'")
    _fails({"cat": 1, "dog": 2, "fish": 3, "dgo": 4}, classes, 10, "names 'dgo', which is not a data class", "'dog'")
    _fails({"cat": 1, "dog": 2, "fish": 1000}, classes, 1000, "maps 'fish' to output 1000", "outputs 0..999")
    _fails({"cat": 1, "dog": 5, "fish": 5}, classes, 1000, "maps data classes 'dog' and 'fish' to the same output 5")


def test_no_map_needs_one_output_per_class_and_identity_is_no_map() -> None:
    assert resolve_class_map(None, DIGITS, 10, "teacher") is None
    assert resolve_class_map({d: i for i, d in enumerate(DIGITS)}, DIGITS, 10, "teacher") is None
    _fails(None, DIGITS, 1000, "the teacher gives 1000 outputs, the data has 10 classes", "set teacher.class_map")
    with pytest.raises(ModelError, match="the student gives 12 outputs"):
        resolve_class_map({}, DIGITS, 12, "student")


def test_config_takes_a_file_or_a_mapping_of_indices() -> None:
    raw = copy.deepcopy(TINY_CONFIG)
    raw["teacher"]["class_map"] = {"0": 3}
    raw["student"] = {"class_map": "labels.txt"}
    config = parse_config(raw)
    assert config.teacher.class_map == {"0": 3} and config.student_model().class_map == "labels.txt"
    for wrong, says in (({"0": -1}, "maps '0' to -1"), (5, "must be the model's labels file")):
        raw["teacher"]["class_map"] = wrong
        with pytest.raises(ConfigError, match=f"config key 'teacher.class_map': {says}"):
            parse_config(raw)


# --- restricting a model ------------------------------------------------------------------------------------------


class _Pair(nn.Module):
    """A tiny model returning (logits over 12 outputs, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 12)

    def forward(self, x):
        features = self.conv(x).mean((2, 3))
        return self.head(features), features


def test_restrict_outputs_on_a_multi_output_model() -> None:
    """After select_logits, the model answers logits[:, indices]; names, state_dict keys and copies are its own;
    restricting again composes; the record names each data class's source output."""
    torch.manual_seed(0)
    model = select_logits(_Pair(), 0)
    keys = list(model.state_dict())
    x = torch.randn(3, 1, 6, 6)
    full = model(x)
    restricted = restrict_outputs(model, [5, 2, 7], 12)
    assert torch.equal(restricted(x), full[:, [5, 2, 7]])
    assert list(restricted.state_dict()) == keys and [n for n, _ in restricted.named_modules()] == ["", "conv", "head"]
    assert torch.equal(copy.deepcopy(restricted)(x), full[:, [5, 2, 7]])
    assert class_map_info(restricted, ["a", "b", "c"]) == {"class_map": {"a": 5, "b": 2, "c": 7}, "source_outputs": 12}
    again = restrict_outputs(copy.deepcopy(restricted), [2, 0])
    assert torch.equal(again(x), full[:, [7, 5]]) and again.source_outputs == 12
    assert class_map_info(select_logits(_Pair(), 0), ["a"]) == {}


def test_restricted_model_exports_one_gather(tmp_path: Path, onnx_invoke) -> None:
    """The restriction is part of the graph: the ONNX file gives the kept outputs only, through one Gather."""
    import onnx

    model = restrict_as_recorded(
        nn.Sequential(nn.Flatten(), nn.Linear(36, 12)), {"class_map": {"a": 4, "b": 1}}, ["a", "b"]
    )
    x = torch.randn(2, 1, 6, 6)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert [n.op_type for n in onnx.load(path).graph.node].count("Gather") == 1
    np.testing.assert_allclose(onnx_invoke(path, x.numpy()), model(x).detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("probabilities", [False, True])
def test_restrict_outputs_on_an_onnx_teacher_file(tmp_path: Path, probabilities: bool) -> None:
    """A teacher file keeps the mapped columns in its runner's logits and its forward (after log of a softmax over
    all of the file's outputs)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), *([nn.Softmax(1)] if probabilities else []))
    path = tmp_path / "teacher.onnx"
    x = torch.randn(4, 1, 8, 8)
    torch.onnx.export(net.eval(), (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    interface = TeacherInterface(
        format="ONNX",
        runtime="onnxruntime",
        input=TensorSpec(name="x", shape=["batch", 1, 8, 8], dtype="float32", layout="NCHW"),
        output=TensorSpec(name="y", shape=["batch", 12], dtype="float32"),
        layout_from="file",
        pixel_scale=1 / 255,
        mean=[0.0],
        std=[1.0],
        normalization_from="config (teacher.input)",
        outputs="probabilities" if probabilities else "logits",
    )
    teacher = FileTeacher(path, interface, [0.0], [1.0])  # the run's normalization is the teacher's: fed as is
    with torch.no_grad():
        full = net(x)
    expected = (full.log() if probabilities else full)[:, PLACES]
    restricted = restrict_outputs(teacher, PLACES, 12)
    assert restricted is teacher
    torch.testing.assert_close(restricted(x), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(teacher.runner(1).predict(x.numpy()), expected.numpy(), atol=1e-5, rtol=1e-5)
    assert class_map_info(teacher, DIGITS) == {"class_map": dict(zip(DIGITS, PLACES)), "source_outputs": 12}


def test_outputs_to_build_reads_the_labels_file_or_the_checkpoint(tmp_path: Path) -> None:
    """A labels file gives the count; a mapping takes it from the checkpoint's classifier (its shape differs from
    the data's class count only in the first dimension)."""
    checkpoint = tmp_path / "twelve.pt"
    save_checkpoint(teacher_cnn(1, 12), checkpoint, {})
    build = lambda count: teacher_cnn(1, count)  # noqa: E731
    assert outputs_to_build(None, 10, checkpoint, build, "teacher") == 10
    assert outputs_to_build({"0": 3}, 10, checkpoint, build, "teacher") == 12
    assert outputs_to_build({"0": 3}, 10, None, build, "teacher") == 10
    assert outputs_to_build(str(_labels(tmp_path, _twelve_names())), 10, None, build, "teacher") == 12


# --- through the pipeline -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twelve_output_teacher(tmp_path_factory: pytest.TempPathFactory, teacher_checkpoint: Path) -> tuple[Path, nn.Module]:
    """The digits teacher-cnn (conftest) with its head spread over 12 outputs: digit d at output PLACES[d], outputs
    EXTRA no digit. Returns (its state_dict checkpoint, the original 10-output teacher)."""
    original = load_checkpoint(teacher_checkpoint, "teacher-cnn", 1, 10)
    twelve = teacher_cnn(1, 12)
    head_prefix = f"{len(original) - 1}."
    state = {key: value for key, value in original.state_dict().items() if not key.startswith(head_prefix)}
    head = twelve[-1]
    with torch.no_grad():
        head.weight[PLACES] = original[-1].weight
        head.bias[PLACES] = original[-1].bias
        head.bias[EXTRA] = 5.0  # would win every image were the map ignored
    twelve.load_state_dict({**twelve.state_dict(), **state})
    path = tmp_path_factory.mktemp("twelve") / "twelve.pt"
    save_checkpoint(twelve, path, {})
    return path, original.eval()


def test_twelve_output_teacher_distills_exports_and_releases_with_its_labels_file(
    tmp_path: Path, twelve_output_teacher: tuple[Path, nn.Module], onnx_invoke
) -> None:
    """`teacher.class_map: labels.txt` on digits: the teacher answers with the original teacher's logits, distils
    1 epoch into student-cnn, onnx-fp32 is exported and benched; the manifest and the release record the map."""
    from pipeline.run import run_pipeline
    from pipeline.stages.release import build_release
    from pipeline.training.run_models import load_teacher

    checkpoint, original = twelve_output_teacher
    labels = _labels(tmp_path, [name.upper() if name.startswith("extra") else name for name in _twelve_names()])
    raw = copy.deepcopy(TINY_CONFIG)
    raw["teacher"] = {"checkpoint": str(checkpoint), "class_map": str(labels)}
    raw["distill"]["epochs"] = 1
    raw["export"]["targets"] = ["onnx-fp32"]
    raw["bench"].update(batch_sizes=[1], threads=[1], memory=False)
    run = RunDir.open(run_pipeline(parse_config(raw), tmp_path / "run", set()))
    info = run.require("teacher").info
    assert info["class_map"] == dict(zip(DIGITS, PLACES)) and info["source_outputs"] == 12
    x = torch.from_numpy(run.splits.normalize(run.splits.test.x[:32]))
    with torch.no_grad():
        torch.testing.assert_close(load_teacher(run)(x), original(x))
    teacher_row = next(m for m in run.manifest.measurements if m.artifact == "teacher")
    assert teacher_row.accuracy > 80  # the map is right: the extra outputs (bias 5) would give chance
    assert "class_map" not in run.require("student").info  # the student has the data's 10 outputs
    onnx_file = run.path(run.require("onnx-fp32").path)
    assert onnx_invoke(onnx_file, x.numpy()).shape == (32, 10)
    bundle = build_release(run, ["onnx-fp32"], tmp_path / "bundle")
    assert bundle.labels == DIGITS and bundle.artifacts["onnx-fp32"].output_meaning.class_map is None


def test_given_student_ships_with_its_class_map_baked_in(
    tmp_path: Path, twelve_output_teacher: tuple[Path, nn.Module], onnx_invoke
) -> None:
    """`distill: null` with a 12-output student and `student.class_map` {digit: output}: the exported file gives one
    logit per data class, in the data's order (the original 10-class model's logits); the manifest and the release
    bundle record which source output each carries, and the labels stay the data's classes."""
    from pipeline.stages.bench import run_bench
    from pipeline.stages.distill import run_distill
    from pipeline.stages.export import run_export
    from pipeline.stages.release import build_release
    from pipeline.training.run_models import load_student

    checkpoint, original = twelve_output_teacher
    raw = copy.deepcopy(TINY_CONFIG)
    del raw["teacher"]
    raw["distill"] = None
    raw["student"] = {"arch": "teacher-cnn", "checkpoint": str(checkpoint), "class_map": dict(zip(DIGITS, PLACES))}
    raw["export"]["targets"] = ["onnx-fp32"]
    raw["bench"].update(batch_sizes=[1], threads=[1], memory=False)
    run = RunDir.create(tmp_path / "run", parse_config(raw))
    run_distill(run)
    run_export(run)
    run_bench(run)
    info = run.require("student").info
    assert info["class_map"] == dict(zip(DIGITS, PLACES)) and info["source_outputs"] == 12
    x = torch.from_numpy(run.splits.normalize(run.splits.test.x[:16]))
    with torch.no_grad():
        expected = original(x).numpy()
        np.testing.assert_allclose(load_student(RunDir.open(run.root))(x).numpy(), expected, atol=1e-5)
    exported = onnx_invoke(run.path(run.require("onnx-fp32").path), x.numpy())
    np.testing.assert_allclose(exported, expected, atol=1e-4)
    assert run.manifest.lineage_info("onnx-fp32", "class_map") == dict(zip(DIGITS, PLACES))
    bundle = build_release(run, ["onnx-fp32"], tmp_path / "bundle")
    meaning = bundle.artifacts["onnx-fp32"].output_meaning
    assert meaning.class_map == dict(zip(DIGITS, PLACES)) and meaning.source_outputs == 12
    assert bundle.labels == DIGITS and (tmp_path / "bundle" / "labels.txt").read_text().split() == DIGITS
    assert "carries 10 of the source model's 12 outputs" in (tmp_path / "bundle" / "README.md").read_text()


def test_onnx_teacher_with_a_class_map_is_adopted_and_reloaded(
    tmp_path: Path, twelve_output_teacher: tuple[Path, nn.Module], digits_splits
) -> None:
    """A 12-output ONNX teacher file is not refused for its class count when mapped: its runner answers with the
    mapped outputs, and the run's record reloads it restricted the same way."""
    from pipeline.stages.distill import ensure_teacher
    from pipeline.training.run_models import load_teacher

    checkpoint, original = twelve_output_teacher
    path = tmp_path / "twelve.onnx"
    x = torch.from_numpy(digits_splits.normalize(digits_splits.test.x[:16]))
    twelve = load_checkpoint(checkpoint, "teacher-cnn", 1, 12)
    torch.onnx.export(twelve, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    raw = copy.deepcopy(TINY_CONFIG)
    normalization = {"mean": list(digits_splits.mean), "std": list(digits_splits.std)}
    raw["teacher"] = {"checkpoint": str(path), "input": normalization, "class_map": dict(zip(DIGITS, PLACES))}
    run = RunDir.create(tmp_path / "run", parse_config(raw))
    teacher = ensure_teacher(run)
    assert run.require("teacher").info["class_map"] == dict(zip(DIGITS, PLACES))
    with torch.no_grad():
        expected = original(x)
    torch.testing.assert_close(teacher(x), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(load_teacher(RunDir.open(run.root))(x), expected, atol=1e-4, rtol=1e-4)
