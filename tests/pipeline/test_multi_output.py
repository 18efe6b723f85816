"""Models whose forward returns several outputs: `distill.output` picks the logits for training, export and bench."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import ModelError
from pipeline.training.models import pick_output, select_logits

MODELS = """
from torch import nn


class Net(nn.Module):
    def __init__(self, cin, n, as_dict=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, n)
        self.as_dict = as_dict

    def forward(self, x):
        f = self.body(x)
        return {"features": f, "logits": self.head(f)} if self.as_dict else (self.head(f), f)


def make_tuple(in_channels, num_classes):
    return Net(in_channels, num_classes)


def make_dict(in_channels, num_classes):
    return Net(in_channels, num_classes, as_dict=True)
"""


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        f = self.conv(x).mean((2, 3))
        return self.head(f), f


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "multi.py"
    path.write_text(MODELS)
    return path


def _config(tiny_config_dict: dict, arch: str, output: int | str | None = None) -> dict:
    """The tiny digits config with a user student, onnx-fp32 only and a small bench grid."""
    raw = copy.deepcopy(tiny_config_dict)
    raw["teacher"]["epochs"] = 1
    raw["distill"].update(arch=arch)
    if output is not None:
        raw["distill"]["output"] = output
    raw["export"]["targets"] = ["onnx-fp32"]
    raw["bench"].update(batch_sizes=[1], threads=[1], memory=False)
    return raw


def test_selected_output_keeps_names_and_state_dict_keys() -> None:
    """select_logits answers with one output; module names, state_dict keys and deep copies are the model's own."""
    plain = _Pair()
    keys, names = list(plain.state_dict()), [n for n, _ in plain.named_modules()]
    model = select_logits(_Pair(), 1)
    x = torch.zeros(2, 1, 6, 6)
    assert model(x).shape == (2, 4)
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_modules()] == names
    assert copy.deepcopy(model)(x).shape == (2, 4)
    assert isinstance(model, _Pair)


@pytest.mark.parametrize(
    ("result", "output", "message"),
    [
        ((torch.zeros(1), torch.zeros(1)), 2, "distill.output is 2 but the model returns a tuple of 2"),
        ({"logits": torch.zeros(1)}, "scores", "distill.output is 'scores' but the model returns a dict with keys"),
        ((torch.zeros(1), [1]), 1, "distill.output 1 picks a list, not a tensor"),
        (torch.zeros(1), 1, "distill.output is 1 but the model returns one tensor"),
    ],
)
def test_bad_selection_is_one_line(result, output, message: str) -> None:
    with pytest.raises(ModelError) as caught:
        pick_output(result, output, "distill.output")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("factory", "output", "returns"), [("make_tuple", None, "tuple of 2"), ("make_dict", "logits", "dict")]
)
def test_run_with_several_outputs(
    models_file: Path, tiny_config_dict: dict, write_config, tmp_path: Path, factory: str, output, returns: str
) -> None:
    """A tuple (default output 0, with a hint loss on an inner layer) or dict (output by key, the teacher a dict
    model too) student runs through; the manifest states the choice and the exported ONNX file has the logits as
    its only output; checkpoints keep the model's own state_dict keys."""
    raw = _config(tiny_config_dict, f"{models_file}:{factory}", output)
    if factory == "make_tuple":
        hint = {"name": "hint", "weight": 0.1, "student_layer": "body.1", "teacher_layer": "2"}
        raw["distill"]["losses"] = [{"name": "hinton", "temperature": 2.0, "alpha": 0.5}, hint]
    else:
        raw["teacher"].update(arch=f"{models_file}:make_dict", output="logits")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(write_config(raw)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    outputs = manifest["artifacts"]["student"]["info"]["outputs"]
    assert outputs["model_returns"].startswith(returns)
    assert outputs["selected"] == (output if output is not None else 0) and outputs["exported"] == "logits only"
    model = onnx.load(str(out / manifest["artifacts"]["onnx-fp32"]["path"]))
    (single,) = model.graph.output
    assert single.type.tensor_type.shape.dim[-1].dim_value == 10
    checkpoint = torch.load(out / manifest["artifacts"]["student"]["path"], weights_only=True)
    assert set(checkpoint["state_dict"]) == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}
    if factory == "make_dict":
        assert manifest["artifacts"]["teacher"]["info"]["outputs"]["selected"] == "logits"
    assert {(m["artifact"], m["runtime"]) for m in manifest["measurements"]} >= {("student", "pytorch")}


@pytest.mark.parametrize("output", [5, "scores"])
def test_bad_output_is_one_line(
    models_file: Path, tiny_config_dict: dict, write_config, tmp_path: Path, output
) -> None:
    """An index out of range or a missing key stops the run before any training with a one-line ModelError naming
    what the model returns."""
    raw = _config(tiny_config_dict, f"{models_file}:make_dict", output)
    result = CliRunner().invoke(app, ["run", str(write_config(raw)), "--out", str(tmp_path / "run")])
    assert result.exit_code == ModelError.exit_code, result.output
    assert "dict with keys ['features', 'logits']" in result.output and "Traceback" not in result.output
    assert "epoch" not in result.output
