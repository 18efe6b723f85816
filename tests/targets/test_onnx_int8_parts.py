"""onnx-int8's parts on tiny inline models: settings for the search, the pre-process retry, float groups and
one-line failures (the whole target runs in test_onnx_targets.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from targets.onnx_int8 import OnnxQuantConfig, failure, float_groups, pre_process, search_options, stage


class UpsampleResidual(nn.Module):
    """x + Upsample(bilinear)(MaxPool(Conv(x))): the dynamo exporter's Resize with a dynamic batch defeats
    onnxruntime's symbolic shape inference (FIELD-NOTES)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        return self.head((a + self.up(self.down(a))).mean((2, 3)))


def export(model: nn.Module, path: Path, dynamo: bool) -> Path:
    batch = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo else {"dynamic_axes": {"input": {0: "b"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(2, 1, 8, 8),), path, dynamo=dynamo, input_names=["input"], **batch)
    onnx.save(onnx.load(path), path)  # weights inside the file, as onnx-fp32 writes it
    return path


def test_auto_settings_try_the_portable_value_first() -> None:
    assert search_options(OnnxQuantConfig()) == {
        "per_channel": [True, False],
        "reduce_range": [False, True],
        "activation_type": ["uint8", "int8"],
    }
    fixed = OnnxQuantConfig(per_channel=False, reduce_range=True, activation_type="int8")
    assert search_options(fixed) == {"per_channel": [False], "reduce_range": [True], "activation_type": ["int8"]}


def test_pre_process_retries_without_symbolic_shape_inference(tmp_path: Path, monkeypatch) -> None:
    """The retry is recorded; onnxruntime's partial model lands in the work folder, not the current directory."""
    source = export(UpsampleResidual(), tmp_path / "up.onnx", dynamo=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "work").mkdir()
    done = pre_process(source, tmp_path / "work" / "prepared.onnx", log_path=tmp_path / "onnx-int8.log")
    reason = "Incomplete symbolic shape inference"
    assert done == {"skip_symbolic_shape": True, "symbolic_shape_inference_error": reason}
    onnx.checker.check_model(onnx.load(tmp_path / "work" / "prepared.onnx"))
    assert list((tmp_path / "cwd").iterdir()) == []


def test_floating_a_node_floats_its_readers_up_to_the_next_compute_op(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.Flatten())
    path = export(model, tmp_path / "chain.onnx", dynamo=False)
    nodes = onnx.load(path).graph.node
    ops = {node.name: node.op_type for node in nodes}
    first = next(node.name for node in nodes if node.op_type == "Conv")
    assert [ops[name] for name in float_groups(path)[first]] == ["Conv", "Relu", "MaxPool", "Conv"]


def test_a_failure_is_one_line_with_stage_node_op_and_hint(tmp_path: Path) -> None:
    text = "[ONNXRuntimeError] : 1 : FAIL : Node (node_Resize_3) Op (Resize) [ShapeInferenceError] x"
    error = RuntimeError(f"{text}\nmore")
    message = failure("quantize_static", error, "dynamo", tmp_path / "onnx-int8.log")
    assert str(message) == (
        f"onnx-int8: quantize_static failed at node node_Resize_3, op Resize: {text}; quantizer output in "
        f"{tmp_path / 'onnx-int8.log'}"
    )
    assert "export.exporter: torchscript" in message.hint
    with pytest.raises(Exception, match="^onnx-int8: scoring failed: boom$") as raised, stage("scoring"):
        raise ValueError("boom")
    assert raised.value.hint and "\n" not in str(raised.value)
