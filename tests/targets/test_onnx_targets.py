"""ONNX targets: fp32 is valid and equal to the student; int8 is really int8 (QDQ, int8 weights)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch


@pytest.fixture(scope="module")
def test_input(digits_splits) -> np.ndarray:
    return digits_splits.normalize(digits_splits.test.x)


def artifact(finished_run: Path, manifest_json: dict, name: str) -> Path:
    return finished_run / manifest_json["artifacts"][name]["path"]


def test_onnx_fp32_passes_checker(finished_run: Path, manifest_json: dict) -> None:
    """The fp32 graph passes onnx.checker (full check) and has a dynamic batch input."""
    model = onnx.load(artifact(finished_run, manifest_json, "onnx-fp32"))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert model.graph.input[0].name == manifest_json["artifacts"]["onnx-fp32"]["inputs"][0]["name"]


def test_onnx_fp32_matches_student(finished_run, manifest_json, student_model, test_input, onnx_invoke) -> None:
    """onnxruntime on the fp32 file gives the PyTorch student's logits (atol 1e-4) at any batch size."""
    path = artifact(finished_run, manifest_json, "onnx-fp32")
    with torch.no_grad():
        expected = student_model(torch.from_numpy(test_input)).numpy()
    np.testing.assert_allclose(onnx_invoke(path, test_input), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_invoke(path, test_input[:1]), expected[:1], atol=1e-4, rtol=0)


def test_onnx_int8_has_qdq_nodes(finished_run: Path, manifest_json: dict) -> None:
    """The int8 graph holds QuantizeLinear/DequantizeLinear nodes, as the manifest's op counts say."""
    model = onnx.load(artifact(finished_run, manifest_json, "onnx-int8"))
    counts = Counter(node.op_type for node in model.graph.node)
    assert counts["QuantizeLinear"] > 0
    assert counts["DequantizeLinear"] > 0
    assert dict(counts) == manifest_json["artifacts"]["onnx-int8"]["info"]["op_counts"]
    onnx.checker.check_model(model)


def test_onnx_int8_weights_are_int8(finished_run: Path, manifest_json: dict) -> None:
    """Every Conv/Gemm weight is an int8 initializer dequantized in the graph; no float weight remains."""
    model = onnx.load(artifact(finished_run, manifest_json, "onnx-int8"))
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    int8_inits = [i for i in initializers.values() if i.data_type == onnx.TensorProto.INT8]
    assert int8_inits
    weighted = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(weighted) >= 3
    for node in weighted:
        weight = node.input[1]
        assert weight not in initializers, f"{node.name} reads a float weight initializer directly"
        dequant = producers[weight]
        assert dequant.op_type == "DequantizeLinear"
        assert initializers[dequant.input[0]].data_type == onnx.TensorProto.INT8


def test_onnx_int8_smaller_than_fp32(manifest_json: dict) -> None:
    """int8 weights make the file clearly smaller than fp32."""
    artifacts = manifest_json["artifacts"]
    assert artifacts["onnx-int8"]["bytes"] < 0.6 * artifacts["onnx-fp32"]["bytes"]


def test_onnx_int8_records_its_choices(manifest_json: dict) -> None:
    """auto calibration tried every method on validation and kept the best; the record holds the per-layer
    errors, the budget check and the scale/zero point of the in-graph input quantization."""
    info = manifest_json["artifacts"]["onnx-int8"]["info"]
    tried = [a for a in info["attempts"] if not a["float_layers"]]
    assert [a["method"] for a in tried] == ["minmax", "percentile", "entropy"]
    best = max(tried, key=lambda a: a["val_accuracy"])
    assert info["calibration_method"] == best["method"] or info["float_layers"]
    assert info["val_drop"] == round(info["fp32_val_accuracy"] - info["val_accuracy"], 2)
    assert info["within_budget"] == (info["val_drop"] <= info["max_int8_drop"])
    sqnr = [layer["sqnr_db"] for layer in info["worst_layers"]]
    assert len(sqnr) >= 3 and sqnr == sorted(sqnr)
    io = info["io_quantization"]["input"]
    assert io["scale"] > 0 and io["tensor"] == manifest_json["artifacts"]["onnx-int8"]["inputs"][0]["name"]
