"""A trained model shipped as-is (`distill: null`), a student initialised from a checkpoint, library architectures by
name, and the one-line errors that come before any training."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config_load import parse_config
from pipeline.errors import ConfigError, ModelError
from pipeline.io import sha256_file
from pipeline.rundir import RunDir
from pipeline.stages.distill import run_distill
from pipeline.training.models import build_model, load_checkpoint
from pipeline.training.run_models import load_student, load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

FEW_TARGETS = ["onnx-fp32", "onnx-int8", "tflite-fp32"]
BENCH = {"warmup": 1, "min_runs": 3, "min_seconds": 0, "eval_batch": 128, "batch_sizes": [1], "threads": [1]}


def _trained_like(seed: int = 1) -> torch.nn.Module:
    """A student-cnn whose BatchNorm statistics are far from their defaults (as a trained model's are)."""
    torch.manual_seed(seed)
    model = build_model("student-cnn", 1, 10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def given(tmp_path_factory: pytest.TempPathFactory, digits_splits) -> dict:
    """The same trained model as a state_dict, a TorchScript file and a torch.export .pt2."""
    folder = tmp_path_factory.mktemp("given")
    model = _trained_like()
    example = torch.from_numpy(digits_splits.normalize(digits_splits.test.x[:2]))
    torch.save(model.state_dict(), folder / "weights.pt")
    torch.jit.save(torch.jit.trace(model, example), folder / "scripted.pt")
    batch = ({0: torch.export.Dim("batch")},)  # the exported file must take every batch size
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=batch), folder / "exported.pt2")
    return {"model": model, "state_dict": folder / "weights.pt", "folder": folder}


def _config(checkpoint: Path, targets: list[str], **student) -> dict:
    return {
        "data": {"source": "digits"},
        "student": {"checkpoint": str(checkpoint), **student},
        "distill": None,
        "calibration": {"size": 64, "method": "minmax"},
        "export": {
            "targets": targets,
            "onnx_int8": {"per_channel": True, "reduce_range": False, "activation_type": "uint8"},
        },
        "bench": {**BENCH, "memory": False},
    }


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory: pytest.TempPathFactory, given: dict) -> Path:
    """`edgepipe run` of a state_dict student with `distill: null` and no teacher, with every train() call counted."""
    from pipeline.run import run_pipeline

    calls: list[bool] = []
    original = torch.nn.Module.train

    def counting(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
        calls.append(mode)
        return original(module, mode)

    root = tmp_path_factory.mktemp("shipped") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Module, "train", counting)
        run_pipeline(parse_config(_config(given["state_dict"], FEW_TARGETS, arch="student-cnn")), root, set())
    assert True not in calls, "a model was put in training mode"
    return root


def test_state_dict_ships_exactly_as_given(shipped_run: Path, given: dict) -> None:
    run = RunDir.open(shipped_run)
    student = run.manifest.artifacts["student"]
    assert student.info["given"] and student.info["source"] == str(given["state_dict"])
    assert student.info["source_sha256"] == sha256_file(given["state_dict"])
    assert "epochs_run" not in student.info and "losses" not in student.info  # no training record
    assert not list(shipped_run.glob("checkpoints/*.progress.pt"))
    shipped = load_student(run).state_dict()
    for key, tensor in given["model"].state_dict().items():  # BatchNorm running stats included, bit for bit
        assert torch.equal(shipped[key], tensor), key
    teacher = run.manifest.artifacts["teacher"]
    assert teacher.path == student.path and teacher.info["same_model_as"] == "student"


def test_exported_files_agree_with_the_given_model(shipped_run: Path, given: dict, digits_splits) -> None:
    run = RunDir.open(shipped_run)
    rows = {(m.artifact, m.runtime): m for m in run.manifest.measurements}
    assert rows[("onnx-fp32", "onnxruntime")].agreement == 100.0
    assert rows[("tflite-fp32", "tflite")].agreement == 100.0
    pytorch = [m for m in run.manifest.measurements if m.runtime == "pytorch"]
    assert [m.artifact for m in pytorch] == ["teacher", "student"]  # measured once, recorded for the reference too
    assert pytorch[0].timings == pytorch[1].timings
    with torch.no_grad():
        expected = given["model"](torch.from_numpy(digits_splits.normalize(digits_splits.test.x))).argmax(1).numpy()
    accuracy = 100 * np.mean(expected == digits_splits.test.y)
    assert rows[("student", "pytorch")].accuracy == pytest.approx(accuracy, abs=0.005)


def test_report_names_the_model_itself_as_reference(shipped_run: Path) -> None:
    report = (shipped_run / "report.md").read_text()
    assert "Δ vs reference (the model itself)" in report and "shipped as trained" in report
    assert "Δ vs teacher" not in report
    table = report.split("| artifact |")[1]
    assert "| teacher |" not in table


def test_stage_commands_work_on_a_shipped_run(shipped_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(shipped_run, run_dir)
    cli = CliRunner()
    for args in (
        ["export", str(run_dir), "-t", "onnx-int8"],
        ["bench", str(run_dir)],
        ["report", str(run_dir)],
        ["release", str(run_dir), "-t", "onnx-fp32", "--out", str(tmp_path / "bundle")],
    ):
        result = cli.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert list((tmp_path / "bundle").glob("*.onnx"))
    assert "reference (the model itself)" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("name", ["scripted.pt", "exported.pt2"])
def test_programs_ship_as_given(tmp_path: Path, given: dict, digits_splits, onnx_invoke, name: str) -> None:
    from pipeline.stages.export import run_export

    source = given["folder"] / name
    raw = _config(source, ["onnx-fp32"])
    if name == "scripted.pt":  # the dynamo exporter cannot read TorchScript (a config error before any work)
        with pytest.raises(ConfigError, match="TorchScript file, which the dynamo ONNX exporter cannot read"):
            run_distill(RunDir.create(tmp_path / "dynamo", parse_config(raw)))
        raw["export"]["exporter"] = "torchscript"
    run = RunDir.create(tmp_path / "run", parse_config(raw))
    run_distill(run)
    student = run.manifest.artifacts["student"]
    assert student.info["kind"] == "program" and student.info["source_sha256"] == sha256_file(source)
    assert sha256_file(run.path(student.path)) == sha256_file(source)  # the file itself, copied
    assert load_teacher(run) is not None and run.manifest.artifacts["teacher"].info["same_model_as"] == "student"
    (record,) = run_export(run)
    x = digits_splits.normalize(digits_splits.test.x)
    logits = onnx_invoke(run.path(record.path), x)
    with torch.no_grad():
        expected = given["model"](torch.from_numpy(x)).numpy()
    assert (logits.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_a_given_teacher_is_the_reference(tmp_path: Path, given: dict) -> None:
    raw = _config(given["state_dict"], [])
    teacher_model = _trained_like(seed=2)
    torch.save(teacher_model.state_dict(), tmp_path / "teacher.pt")
    raw["teacher"] = {"arch": "student-cnn", "checkpoint": str(tmp_path / "teacher.pt")}
    run = RunDir.create(tmp_path / "run", parse_config(raw))
    run_distill(run)
    teacher = run.manifest.artifacts["teacher"]
    assert "same_model_as" not in teacher.info and teacher.info["source"] == str(tmp_path / "teacher.pt")
    assert torch.equal(load_teacher(run).state_dict()["0.weight"], teacher_model.state_dict()["0.weight"])
    assert run.manifest.artifacts["student"].info["given"]


def test_student_checkpoint_with_distill_fine_tunes_from_it(tmp_path: Path, given: dict) -> None:
    """student.checkpoint + distill: training starts from the given weights (a tiny lr keeps them close)."""
    config = {
        "data": {"source": "digits"},
        "teacher": {"arch": "student-cnn", "checkpoint": str(given["state_dict"])},
        "student": {"arch": "student-cnn", "checkpoint": str(given["state_dict"])},
        "distill": {"epochs": 1, "batch_size": 256, "lr": 1e-9, "schedule": "cosine"},
        "export": {"targets": []},
    }
    run = RunDir.create(tmp_path / "run", parse_config(config))
    student = run_distill(run)
    record = run.manifest.artifacts["student"]
    assert record.info["initialized_from_sha256"] == sha256_file(given["state_dict"])
    assert record.info["epochs_run"] == 1
    start = given["model"].state_dict()
    weights = {k: v for k, v in student.state_dict().items() if k.endswith("weight")}
    for key, tensor in weights.items():
        torch.testing.assert_close(tensor, start[key], atol=1e-5, rtol=0)
    fresh = build_model("student-cnn", 1, 10).state_dict()
    assert not torch.allclose(fresh["0.weight"], weights["0.weight"])


def _cli_error(tmp_path: Path, raw: dict) -> tuple[int, str]:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    return result.exit_code, result.output


def _assert_one_line(output: str, *fragments: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepipe: error: "), output
    for fragment in fragments:
        assert fragment in lines[0], output


def test_missing_student_checkpoint_is_one_line(tmp_path: Path) -> None:
    code, output = _cli_error(tmp_path, _config(tmp_path / "nowhere.pt", FEW_TARGETS))
    assert code == ModelError.exit_code
    _assert_one_line(output, "student checkpoint", "nowhere.pt", "does not exist")


def test_wrong_architecture_names_the_key_and_file(tmp_path: Path, given: dict) -> None:
    raw = _config(given["state_dict"], FEW_TARGETS, arch="teacher-cnn")
    code, output = _cli_error(tmp_path, raw)
    assert code == ModelError.exit_code
    _assert_one_line(output, str(given["state_dict"]), "does not fit teacher-cnn", "missing keys ['")


def test_class_mismatch_fails_before_training(tmp_path: Path) -> None:
    """A 7-class student on 10-class digits, distilled from a teacher that would train first: nothing trains."""
    model = build_model("student-cnn", 1, 7)
    torch.save(model.state_dict(), tmp_path / "seven.pt")
    raw = {
        "data": {"source": "digits"},
        "student": {"arch": "student-cnn", "arch_kwargs": {"width": 1.0}, "checkpoint": str(tmp_path / "seven.pt")},
        "teacher": {"checkpoint": None},
        "export": {"targets": []},
    }
    code, output = _cli_error(tmp_path, raw)
    assert code == ModelError.exit_code
    _assert_one_line(output, "seven.pt", "does not fit student-cnn", "13.weight is (7, 64) in the file, (10, 64)")
    assert not list((tmp_path / "out").glob("checkpoints/*"))  # the teacher did not train


def test_shipped_model_with_wrong_class_count(tmp_path: Path, given: dict) -> None:
    batch = ({0: torch.export.Dim("batch")},)
    program = torch.export.export(
        build_model("student-cnn", 1, 7).eval(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=batch
    )
    torch.export.save(program, tmp_path / "seven.pt2")
    code, output = _cli_error(tmp_path, _config(tmp_path / "seven.pt2", FEW_TARGETS))
    assert code == ModelError.exit_code
    _assert_one_line(output, "the student gives 7 outputs", "10 classes")


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


@pytest.mark.skipif(_imports("torchvision"), reason="torchvision imports here; the error path needs one that does not")
def test_torchvision_that_does_not_import_is_one_line(tmp_path: Path, given: dict) -> None:
    code, output = _cli_error(tmp_path, _config(given["state_dict"], FEW_TARGETS, arch="torchvision:resnet18"))
    assert code == ModelError.exit_code
    _assert_one_line(
        output, "arch 'torchvision:resnet18' needs torchvision", f"torch {torch.__version__}", "edgepipe[torchvision]"
    )
    assert "file.py:factory" in output


def test_distill_null_needs_a_checkpoint() -> None:
    with pytest.raises(ConfigError, match="student.checkpoint is empty"):
        parse_config({"distill": None})


def test_student_arch_given_twice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"given twice \(student.arch and distill.arch\)"):
        parse_config({"student": {"arch": "student-cnn"}, "distill": {"arch": "teacher-cnn"}})
    with pytest.raises(ConfigError, match="distill needs a teacher"):
        parse_config({"teacher": None})
    config = parse_config({"distill": {"arch": "teacher-cnn", "arch_kwargs": {}}})  # older configs keep working
    assert config.student_model().arch == "teacher-cnn"
    assert parse_config({"student": {"arch": "x.py:make"}}).student_model().arch == "x.py:make"


def test_shipped_config_round_trips_without_a_teacher(tmp_path: Path, given: dict) -> None:
    from pipeline.config import dump_config
    from pipeline.config_load import load_config

    config = parse_config(_config(given["state_dict"], FEW_TARGETS))
    assert config.teacher is None and config.distill is None
    (tmp_path / "config.yaml").write_text(dump_config(config))
    assert load_config(tmp_path / "config.yaml") == config


FAKE_LIBRARIES = {
    "torchvision/__init__.py": "",
    "torchvision/models/__init__.py": """
import torch

CALLS = []


def get_model(name, **config):
    CALLS.append((name, config))
    if name != "tiny_net":
        raise ValueError(f"Unknown model {name}")
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, config["num_classes"]))
""",
    "timm/__init__.py": """
import torch

CALLS = []


def create_model(name, pretrained=True, num_classes=1000, in_chans=3, **kwargs):
    CALLS.append((name, pretrained, num_classes, in_chans, kwargs))
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * in_chans, num_classes))
""",
}


@pytest.fixture
def fake_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stand-ins named torchvision and timm on sys.path (the real ones do not import next to the CPU torch)."""
    for relative, text in FAKE_LIBRARIES.items():
        path = tmp_path / "libs" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "libs"))
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[name]  # the stand-ins must not outlive the test (torch-pruning probes for timm)


@pytest.mark.usefixtures("fake_libraries")
def test_library_architectures_by_name(tmp_path: Path) -> None:
    import timm
    import torchvision.models

    model = build_model("torchvision:tiny_net", 1, 10, {"extra": 1})
    assert torchvision.models.CALLS == [("tiny_net", {"extra": 1, "num_classes": 10, "weights": None})]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    build_model("timm:lite", 1, 10, {"num_classes": 1000})
    assert timm.CALLS == [("lite", False, 1000, 1, {})]  # never pretrained; the user's num_classes kept
    with pytest.raises(ModelError, match="torchvision cannot build 'nope'.*Unknown model nope"):
        build_model("torchvision:nope", 1, 10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_checkpoint(tmp_path / "w.pt", "torchvision:tiny_net", 1, 10)
    assert torch.equal(loaded.state_dict()["1.weight"], model.state_dict()["1.weight"])


SOFTMAX_FACTORY = """
import torch


def make(in_channels, num_classes, softmax=False):
    layers = [torch.nn.Flatten(), torch.nn.Linear(in_channels * 64, num_classes)]
    return torch.nn.Sequential(*layers, *([torch.nn.Softmax(dim=1)] if softmax else []))
"""


def _factory_dir(folder: Path, softmax: bool = False) -> Path:
    """``folder`` holding my.py (factory ``make``) and w.pt, its trained-like weights for 1-channel digits."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my.py").write_text(SOFTMAX_FACTORY)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(model.state_dict(), folder / "w.pt")
    return folder


def test_relative_paths_work_from_another_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run started with relative file paths opens from elsewhere: its config.yaml holds them absolute."""
    import yaml

    tester = _factory_dir(tmp_path / "tester")
    raw = _config(Path("w.pt"), ["onnx-fp32"], arch="my.py:make")
    (tester / "g_rel.yaml").write_text(yaml.safe_dump(raw))
    cli = CliRunner()
    monkeypatch.chdir(tester)
    result = cli.invoke(app, ["distill", "runs/g_rel", "--config", "g_rel.yaml"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tester / "runs/g_rel/config.yaml").read_text())
    assert saved["student"] == {
        **saved["student"],
        "arch": f"{tester / 'my.py'}:make",
        "checkpoint": str(tester / "w.pt"),
    }
    monkeypatch.chdir(tmp_path)
    for args in (["export", "tester/runs/g_rel", "-t", "onnx-fp32"], ["bench", "tester/runs/g_rel"]):
        result = cli.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    measured = {m.artifact for m in RunDir.open(tester / "runs/g_rel").manifest.measurements}
    assert {"student", "onnx-fp32"} <= measured


def test_missing_model_file_names_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=f"model file {tmp_path / 'nets' / 'my.py'} does not exist") as caught:
        build_model("nets/my.py:make", 1, 10)
    assert str(tmp_path) in caught.value.hint and "absolute" in caught.value.hint
    _factory_dir(tmp_path)
    with pytest.raises(ModelError, match="has no callable 'nope'") as caught:
        build_model("my.py:nope", 1, 10)
    assert "defines make" in caught.value.hint


def test_softmax_student_ships_as_probabilities(tmp_path: Path) -> None:
    """distill: null with a model ending in softmax: recorded, bundled and documented as probabilities."""
    from pipeline.run import run_pipeline
    from pipeline.stages.release import build_release

    folder = _factory_dir(tmp_path / "model")
    raw = _config(folder / "w.pt", ["onnx-fp32"], arch=f"{folder / 'my.py'}:make", arch_kwargs={"softmax": True})
    run_pipeline(parse_config(raw), tmp_path / "run", set())
    run = RunDir.open(tmp_path / "run")
    assert run.manifest.artifacts["student"].info["output_kind"] == "probabilities"
    bundle = build_release(run, ["onnx-fp32"], tmp_path / "bundle")
    meaning = bundle.artifacts["onnx-fp32"].output_meaning
    assert meaning.kind == "probabilities" and meaning.softmax_applied
    assert "probabilities (softmax applied inside the model)" in (tmp_path / "bundle" / "README.md").read_text()


def test_plain_student_is_recorded_as_logits(shipped_run: Path) -> None:
    assert RunDir.open(shipped_run).manifest.artifacts["student"].info["output_kind"] == "logits"


def test_softmax_student_to_distill_is_one_line(tmp_path: Path) -> None:
    folder = _factory_dir(tmp_path / "model")
    raw = {
        "data": {"source": "digits"},
        "student": {"arch": f"{folder / 'my.py'}:make", "arch_kwargs": {"softmax": True}},
        "teacher": {"checkpoint": None},
        "export": {"targets": []},
    }
    code, output = _cli_error(tmp_path, raw)
    assert code == ModelError.exit_code
    _assert_one_line(output, "outputs probabilities", "remove the final softmax, it is applied by the loss")
    assert not list((tmp_path / "out").glob("checkpoints/*"))  # the teacher did not train


@pytest.mark.parametrize("name", ["rgb.pt2", "rgb.pt"])
def test_program_with_other_input_channels(tmp_path: Path, name: str) -> None:
    """A 3-channel program on 1-channel data: the channels are named, not the batch."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    example = torch.zeros(2, 3, 8, 8)
    if name.endswith(".pt2"):
        batch = ({0: torch.export.Dim("batch")},)
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=batch), tmp_path / name)
    else:
        torch.jit.save(torch.jit.trace(model, example), tmp_path / name)
    code, output = _cli_error(tmp_path, _config(tmp_path / name, []))
    assert code == ModelError.exit_code
    _assert_one_line(output, "takes 3 input channels, the data has 1", "data.channels: 3")
    assert "dynamic batch" not in output


def test_pickled_whole_model_is_named(tmp_path: Path) -> None:
    torch.save(_trained_like(), tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="pickled object .* does not unpickle") as caught:
        load_checkpoint(tmp_path / "whole.pt", "student-cnn", 1, 10)
    assert "model.state_dict()" in caught.value.hint and "Weights only" not in str(caught.value)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": sd},
        lambda sd: {"model_state_dict": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"model": {f"_orig_mod.module.{k}": v for k, v in sd.items()}},
    ],
)
def test_state_dict_wrappers_and_prefixes(tmp_path: Path, wrap) -> None:
    model = _trained_like()
    torch.save(wrap(model.state_dict()), tmp_path / "w.pt")
    loaded = load_checkpoint(tmp_path / "w.pt", "student-cnn", 1, 10)
    assert torch.equal(loaded.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_prefix_on_some_keys_only_is_kept(tmp_path: Path) -> None:
    state = _trained_like().state_dict()
    state = {("module." + k if k.startswith("0.") else k): v for k, v in state.items()}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ModelError, match="unexpected keys \\['module.0.weight'"):
        load_checkpoint(tmp_path / "w.pt", "student-cnn", 1, 10)


def test_timm_that_does_not_import_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm fails at import when torchvision does; the hint says so (not torchvision's own install advice)."""
    (tmp_path / "libs" / "timm").mkdir(parents=True)
    (tmp_path / "libs" / "timm" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "libs"))
    for name in [n for n in sys.modules if n.split(".")[0] == "timm"]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModelError, match="needs timm, which does not import here: operator torchvision") as caught:
        build_model("timm:lite", 1, 10)
    assert "timm imports torchvision" in caught.value.hint and "file.py:factory" in caught.value.hint
    sys.modules.pop("timm", None)
