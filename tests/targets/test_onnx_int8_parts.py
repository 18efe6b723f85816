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


def test_slimming_keeps_outputs_and_fused_int8_ops(tmp_path: Path) -> None:
    """The quantizer's unused opset imports and value_info go; outputs stay bit-identical and onnxruntime still
    fuses the same int8 kernels (QLinearConv, QGemm)."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, quantize_static

    from calibration.readers import ort_reader
    from calibration.sampling import CalibrationSet
    from targets.onnx_io import slim_onnx

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 10))
    source = export(model, tmp_path / "small.onnx", dynamo=False)
    pre_process(source, tmp_path / "prepared.onnx")
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    calibration = CalibrationSet(x, np.arange(16), np.zeros(16, int))
    quantized = tmp_path / "int8.onnx"
    quantize_static(
        str(tmp_path / "prepared.onnx"), str(quantized), ort_reader(calibration, "input"), quant_format=QuantFormat.QDQ
    )

    def run(path: Path) -> tuple[np.ndarray, list[str]]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        outputs = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})
        return outputs[0], sorted(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)

    before, before_ops = run(quantized)
    assert len(onnx.load(quantized).opset_import) > 1  # the pre-processing's extra domains
    saved = slim_onnx(quantized)
    slim = onnx.load(quantized)
    after, after_ops = run(quantized)
    assert saved > 0 and [o.domain for o in slim.opset_import] == [""] and not slim.graph.value_info
    assert np.array_equal(before, after) and after_ops == before_ops and "QLinearConv" in after_ops
    assert slim_onnx(quantized) == 0  # nothing left to drop
