"""Models from anywhere: a user's model file or importable module as the student, a teacher given as a
TorchScript or torch.export program, and the one-line ModelErrors for everything that does not fit."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config_load import parse_config
from pipeline.errors import ModelError
from pipeline.io import sha256_file
from pipeline.rundir import RunDir
from pipeline.stages.distill import ensure_teacher, run_distill
from pipeline.training.models import build_model, count_parameters, is_program, load_program, save_checkpoint
from pipeline.training.run_models import load_student, load_teacher
from pipeline.training.train import accuracy, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")

USER_MODELS = '''
import numpy as np
import torch
from torch import nn


def make_student(num_classes, width=8):
    """A tiny CNN for 1-channel images; takes no in_channels."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


def make_wide(in_channels, num_classes, width=4):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def not_a_model(num_classes):
    return {"num_classes": num_classes}


class Buggy(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1)) * undefined_scale  # noqa: F821


def make_buggy(num_classes):
    return Buggy(num_classes)


class NumpyInside(Buggy):
    def forward(self, x):
        return self.head(torch.from_numpy(np.pad(x.numpy(), ((0, 0),) * 3)).flatten(1))


def make_numpy_inside(num_classes):
    return NumpyInside(num_classes)


class TrainingOnlyBug(Buggy):
    def forward(self, x):
        if self.training:
            x = x * undefined_in_training  # noqa: F821
        return self.head(x.flatten(1))


def make_training_only_bug(num_classes):
    return TrainingOnlyBug(num_classes)


class EvaluationBatchBug(Buggy):
    def forward(self, x):
        if not self.training and x.shape[0] > 2:
            raise ValueError("too many images at once")
        return self.head(x.flatten(1))


def make_evaluation_batch_bug(num_classes):
    return EvaluationBatchBug(num_classes)


def make_factory_bug(num_classes):
    raise ValueError("factory broken")


NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def trained_teacher(teacher_checkpoint: Path, digits_splits) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    """(state_dict checkpoint, the teacher module in eval mode, a normalized digits batch) — trained 2 epochs."""
    from pipeline.training.models import load_checkpoint

    teacher = load_checkpoint(teacher_checkpoint, "teacher-cnn", 1, 10)
    example = torch.from_numpy(digits_splits.normalize(digits_splits.test.x[:64]))
    return teacher_checkpoint, teacher, example


@pytest.fixture
def student_config(tiny_config_dict: dict, trained_teacher) -> dict:
    tiny_config_dict["teacher"]["checkpoint"] = str(trained_teacher[0])
    tiny_config_dict["export"]["targets"] = []
    return tiny_config_dict


@pytest.fixture
def user_models(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODELS)
    return path


def assert_one_line(error: ModelError) -> None:
    assert "\n" not in str(error) and "\n" not in error.one_line()
    assert error.exit_code == 4


# --- the student from a user's file or module ------------------------------------------------------------------


def test_student_from_a_model_file_trains_and_is_recorded(
    tmp_path: Path, student_config: dict, user_models: Path
) -> None:
    """`distill.arch: path/my_models.py:make_student` with arch_kwargs trains via run_distill; the manifest
    records the spec and kwargs, and the student loads back from its checkpoint through the same spec."""
    spec = f"{user_models}:make_student"
    student_config["distill"].update(arch=spec, arch_kwargs={"width": 8})
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    student = run_distill(run)
    record = run.manifest.artifacts["student"]
    expected_parameters = count_parameters(build_model(spec, 1, 10, {"width": 8}))
    assert record.info["arch"] == spec and record.info["arch_kwargs"] == {"width": 8}
    assert record.info["parameters"] == count_parameters(student) == expected_parameters
    assert student[0].out_channels == 8
    assert record.info["val_accuracy"] > 25  # well above chance (10 %) for a 2-epoch 8-wide CNN
    loaded = load_student(RunDir.open(run.root))
    x = torch.from_numpy(run.splits.normalize(run.splits.test.x[:16]))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student.eval()(x))


def test_factory_gets_in_channels_and_num_classes_when_it_takes_them(user_models: Path) -> None:
    model = build_model(f"{user_models}:make_wide", 3, 7, {"width": 5})
    assert model[0].in_channels == 3 and model[0].out_channels == 5 and model[-1].out_features == 7


def test_a_model_file_is_importable_by_its_module_name(tmp_path: Path) -> None:
    """What re-imports a model's module (torch.cond, pickle) finds a file model's; a file that fails to run is
    not left behind half-made."""
    import importlib

    (tmp_path / "cond_models.py").write_text(
        "from torch import nn\n\nclass Net(nn.Linear):\n    pass\n\ndef make():\n    return Net(4, 2)\n"
    )
    try:
        model = build_model(f"{tmp_path / 'cond_models.py'}:make", 1, 2, {})
        assert importlib.import_module(type(model).__module__).Net is type(model)
    finally:
        sys.modules.pop("edgepipe_user_cond_models", None)
    (tmp_path / "raising.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ModelError, match="cannot import"):
        build_model(f"{tmp_path / 'raising.py'}:make", 1, 2, {})
    assert "edgepipe_user_raising" not in sys.modules


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module (on sys.path) holding the same factories; removed from sys.modules afterwards."""
    name = "edgepipe_test_user_models"
    (tmp_path / f"{name}.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_student_from_an_importable_module(tmp_path: Path, student_config: dict, user_module: str) -> None:
    """`module:factory` imports the module from sys.path and trains the student it builds."""
    spec = f"{user_module}:make_student"
    assert isinstance(build_model(spec, 1, 10, {"width": 4}), torch.nn.Module)
    student_config["distill"].update(arch=spec, arch_kwargs={"width": 4}, epochs=1)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    run_distill(run)
    record = run.manifest.artifacts["student"]
    assert record.info["arch"] == spec and record.info["arch_kwargs"] == {"width": 4}
    assert count_parameters(load_student(run)) == record.info["parameters"]


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("{dir}/absent.py:make_student", {}, "model file {dir}/absent.py does not exist"),
        ("{file}:make_teacher", {}, "has no callable 'make_teacher'"),
        ("{file}:NOT_CALLABLE", {}, "has no callable 'NOT_CALLABLE'"),
        ("{file}:not_a_model", {}, "returned dict, not a torch.nn.Module"),
        ("{file}:make_student", {"depth": 3}, "rejected its arguments ['depth', 'num_classes']"),
        ("{dir}/broken.py:make_student", {}, "cannot import"),
        ("edgepipe_no_such_module:make_student", {}, "cannot import 'edgepipe_no_such_module'"),
        ("{file}:make_factory_bug", {}, "failed to build the model: ValueError: factory broken (at {file}:"),
    ],
)
def test_bad_model_specs_are_one_line_model_errors(
    tmp_path: Path, user_models: Path, arch: str, kwargs: dict, message: str
) -> None:
    """Missing file, missing or non-callable attribute, a factory returning no Module, wrong kwargs, a file
    that does not import, a missing module, a factory that raises: each one ModelError line naming the problem."""
    (tmp_path / "broken.py").write_text("def make_student(:\n")
    fill = {"dir": tmp_path, "file": user_models}
    with pytest.raises(ModelError) as caught:
        build_model(arch.format(**fill), 1, 10, kwargs)
    assert message.format(**fill) in str(caught.value)
    assert_one_line(caught.value)


def _line_of(marker: str) -> int:
    """The line of USER_MODELS (as written to its file) holding ``marker``."""
    return next(n for n, line in enumerate(USER_MODELS.splitlines(), 1) if marker in line)


@pytest.mark.parametrize(
    ("factory", "line", "marker"),
    [
        (
            "make_buggy",
            "the student's forward fails on the data's input (2, 1, 8, 8): NameError: name 'undefined_scale' is not "
            "defined",
            "undefined_scale",
        ),
        (  # numpy raises deep in its own code: the location is still the user's line that called it
            "make_numpy_inside",
            "the student's forward fails on the data's input (2, 1, 8, 8): ValueError: ",
            "np.pad",
        ),
        (  # the eval-mode check passes; the first training step raises
            "make_training_only_bug",
            "training the student fails on a batch (",
            "undefined_in_training",
        ),
        (  # the 2-image check and training pass; the validation pass, at a larger batch, raises
            "make_evaluation_batch_bug",
            "the student's forward fails on an evaluation batch (",
            "too many images at once",
        ),
    ],
)
def test_a_forward_that_raises_names_the_error_and_the_users_line(
    tmp_path: Path, student_config: dict, user_models: Path, factory: str, line: str, marker: str
) -> None:
    """A student whose forward has a bug of its own (not a shape mismatch), in eval mode or only in training, is
    one ModelError line with the exception's type and message and the file:line of the user's code that raised it;
    the frames of torch, edgepipe and installed packages (numpy) are skipped."""
    student_config["distill"]["arch"] = f"{user_models}:{factory}"
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    with pytest.raises(ModelError) as caught:
        run_distill(run)
    assert line in str(caught.value)
    assert str(caught.value).endswith(f" (at {user_models}:{_line_of(marker)})")
    assert caught.value.hint.startswith("fix the model's code at that line (it gets 1-channel images of 8×8 here)")
    assert_one_line(caught.value)


def test_a_model_file_imports_the_modules_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model file importing a helper module from its own folder builds, as when Python runs the file."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "edgepipe_test_blocks.py").write_text(
        "from torch import nn\n\ndef head(n):\n    return nn.Linear(4, n)\n"
    )
    (tmp_path / "net.py").write_text(
        "import edgepipe_test_blocks\n\ndef make(num_classes):\n    return edgepipe_test_blocks.head(num_classes)\n"
    )
    try:
        assert build_model(f"{tmp_path / 'net.py'}:make", 1, 3, {}).out_features == 3
    finally:
        sys.modules.pop("edgepipe_user_net", None)
        sys.modules.pop("edgepipe_test_blocks", None)
    with pytest.raises(ModelError) as caught:
        build_model("edgepipe_no_such_module:make", 1, 2, {})
    assert "PYTHONPATH" in caught.value.hint


def test_a_neighbour_module_already_imported_from_elsewhere_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Teacher and student files in two folders, each importing its own ``edgepipe_test_helpers``: Python hands the
    second file the first one's module, and edgepipe says so, naming both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for folder, width in (("a", 3), ("b", 5)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "edgepipe_test_helpers.py").write_text(f"WIDTH = {width}\n")
        (tmp_path / folder / "nets.py").write_text(
            "from torch import nn\nfrom edgepipe_test_helpers import WIDTH\n\n"
            "def make(num_classes):\n    return nn.Linear(WIDTH, num_classes)\n"
        )
    try:
        first = build_model(f"{tmp_path / 'a' / 'nets.py'}:make", 1, 2, {})
        assert "warning" not in "".join(capsys.readouterr())
        second = build_model(f"{tmp_path / 'b' / 'nets.py'}:make", 1, 2, {})
    finally:
        sys.modules.pop("edgepipe_user_nets", None)
        sys.modules.pop("edgepipe_test_helpers", None)
    assert first.in_features == second.in_features == 3  # what Python does; the warning says it
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert (
        f"edgepipe: warning: {tmp_path / 'b' / 'nets.py'} imports edgepipe_test_helpers, which sits beside it, but a "
        f"module edgepipe_test_helpers is already imported from {tmp_path / 'a' / 'edgepipe_test_helpers.py'}"
    ) in " ".join(out.split())


def test_bad_student_spec_stops_the_distill_stage(tmp_path: Path, student_config: dict, user_models: Path) -> None:
    """Through the stage, the same mistake is a ModelError and records no student."""
    student_config["distill"]["arch"] = f"{user_models}:not_a_model"
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        run_distill(run)
    assert "student" not in run.manifest.artifacts


def test_cli_reports_a_bad_student_spec_on_one_line(tmp_path: Path, student_config: dict, user_models: Path) -> None:
    """`edgepipe distill` turns the ModelError into one `edgepipe: error:` line and exit code 4."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    student_config["distill"]["arch"] = f"{user_models}:make_teacher"
    RunDir.create(tmp_path / "run", parse_config(student_config))
    result = CliRunner().invoke(app, ["distill", str(tmp_path / "run")])
    assert result.exit_code == 4
    errors = [line for line in result.output.splitlines() if line.startswith("edgepipe: error:")]
    assert len(errors) == 1 and "has no callable 'make_teacher'" in errors[0]
    assert "Traceback" not in result.output


def test_editing_the_model_file_retrains_the_student(tmp_path: Path, student_config: dict, user_models: Path) -> None:
    student_config["distill"].update(arch=f"{user_models}:make_student", epochs=1)
    root = tmp_path / "run"
    run = RunDir.create(root, parse_config(copy.deepcopy(student_config)))
    run_distill(run)
    first_id = run.manifest.artifacts["student"].id
    user_models.write_text(USER_MODELS.replace("width=8", "width=6"))
    run = RunDir.create(root, parse_config(student_config))
    student = run_distill(run)
    assert run.manifest.artifacts["student"].id != first_id
    assert student[0].out_channels == 6


# --- the teacher as a program --------------------------------------------------------------------------------


def _save_program(kind: str, teacher: torch.nn.Module, example: torch.Tensor, directory: Path) -> Path:
    if kind == "script":
        path = directory / "teacher_script.pt"
        torch.jit.save(torch.jit.script(teacher), str(path))
    elif kind == "trace":
        path = directory / "teacher_trace.pt"
        torch.jit.save(torch.jit.trace(teacher, example[:2]), str(path))
    else:
        path = directory / "teacher.pt2"
        batch = torch.export.Dim("batch")
        torch.export.save(torch.export.export(teacher, (example[:2],), dynamic_shapes=({0: batch},)), str(path))
    return path


PROGRAM_KINDS = [
    "script",
    "trace",
    "export",
]


@pytest.mark.filterwarnings("ignore:No complete tensor found in the group")  # torch.export.save on CPU
@pytest.mark.parametrize("kind", PROGRAM_KINDS)
def test_program_teacher_distils_a_student(tmp_path: Path, student_config: dict, trained_teacher, kind: str) -> None:
    """A TorchScript (scripted or traced) or torch.export teacher given as teacher.checkpoint is copied into the
    run as `kind: program`, gives the original teacher's logits when loaded back, and distils a student."""
    _, teacher, example = trained_teacher
    source = _save_program(kind, teacher, example, tmp_path)
    assert is_program(source)
    student_config["teacher"]["checkpoint"] = str(source)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    student = run_distill(run)
    record = run.manifest.artifacts["teacher"]
    assert record.info["kind"] == "program"
    assert record.info["arch"] == f"program:{source.name}"
    assert record.info["source"] == str(source)
    assert record.info["parameters"] == count_parameters(teacher)
    assert record.path == f"checkpoints/teacher{source.suffix}"
    assert record.sha256 == sha256_file(source)
    with torch.no_grad():
        torch.testing.assert_close(load_teacher(RunDir.open(run.root))(example), teacher(example))
    student_record = run.manifest.artifacts["student"]
    assert student_record.parent == "teacher"
    test_accuracy = accuracy(predict_logits(student, run.splits, run.splits.test), run.splits.test.y)
    assert test_accuracy > 80


def test_state_dict_checkpoints_are_not_programs(trained_teacher) -> None:
    assert not is_program(trained_teacher[0])


# --- teachers that do not fit ----------------------------------------------------------------------------------


def test_state_dict_with_the_wrong_class_count_names_key_and_shapes(tmp_path: Path, student_config: dict) -> None:
    """A teacher-cnn checkpoint for 7 classes on 10-class digits: the classifier key and both shapes."""
    path = tmp_path / "seven.pt"
    save_checkpoint(build_model("teacher-cnn", 1, 7), path, {})
    student_config["teacher"]["checkpoint"] = str(path)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    with pytest.raises(ModelError) as caught:
        ensure_teacher(run)
    message = str(caught.value)
    assert "seven.pt" in message and "17.weight" in message
    assert "(7, 128) in the file" in message and "(10, 128) in the model" in message
    assert_one_line(caught.value)
    assert "teacher" not in run.manifest.artifacts


def test_program_teacher_with_the_wrong_class_count_names_both(tmp_path: Path, student_config: dict) -> None:
    """A program whose output has 7 logits for 10-class data: ModelError naming both counts."""
    path = tmp_path / "seven_classes.pt"
    torch.jit.save(torch.jit.script(build_model("teacher-cnn", 1, 7).eval()), str(path))
    student_config["teacher"]["checkpoint"] = str(path)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    with pytest.raises(ModelError) as caught:
        ensure_teacher(run)
    assert "gives 7 outputs, the data has 10 classes" in str(caught.value)
    assert_one_line(caught.value)


def test_program_teacher_for_other_inputs_is_a_model_error(tmp_path: Path, student_config: dict) -> None:
    """A program built for 3-channel images fails on 1-channel digits with one line naming the input shape."""
    path = tmp_path / "rgb.pt"
    torch.jit.save(torch.jit.script(build_model("teacher-cnn", 3, 10).eval()), str(path))
    student_config["teacher"]["checkpoint"] = str(path)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    with pytest.raises(
        ModelError, match=r"the teacher's forward fails on the data's input \(2, 1, 8, 8\): RuntimeError: "
    ) as caught:
        ensure_teacher(run)
    assert_one_line(caught.value)


@pytest.mark.parametrize("name", ["garbage.pt", "garbage.pt2", "truncated_script.pt"])
def test_corrupt_teacher_files_are_model_errors(
    tmp_path: Path, student_config: dict, trained_teacher, name: str
) -> None:
    """Random bytes (as a checkpoint or a .pt2) and a TorchScript file cut in half each give one ModelError line
    naming the file."""
    path = tmp_path / name
    if name.startswith("truncated"):
        _, teacher, example = trained_teacher
        whole = _save_program("script", teacher, example, tmp_path).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    student_config["teacher"]["checkpoint"] = str(path)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    with pytest.raises(ModelError) as caught:
        run_distill(run)
    assert name in str(caught.value)
    assert_one_line(caught.value)
    assert not run.manifest.artifacts


def test_load_program_of_a_state_dict_is_a_model_error(trained_teacher) -> None:
    with pytest.raises(ModelError, match="cannot load program") as caught:
        load_program(trained_teacher[0])
    assert_one_line(caught.value)
