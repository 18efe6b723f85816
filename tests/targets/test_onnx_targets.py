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
    """auto calibration tried every method with the portable settings first, then each other setting value, then
    onnxruntime's defaults, and kept the most accurate; the record holds the settings, the paired drop test, the host
    CPU's flags and the scale/zero point of the in-graph input quantization."""
    info = manifest_json["artifacts"]["onnx-int8"]["info"]
    tried = [a for a in info["attempts"] if not a["float_layers"]]
    portable = {"per_channel": True, "reduce_range": False, "activation_type": "uint8"}
    methods = ("minmax", "percentile", "entropy")
    assert [a["settings"] for a in tried[:3]] == [{"method": method, **portable} for method in methods]
    assert len(tried) == 7  # then per_channel false, reduce_range true, int8 activations: one at a time
    # and last, onnxruntime quantize_static's own defaults as a whole (per-tensor weights, S8S8)
    assert tried[-1]["settings"] == {
        "method": "minmax",
        "per_channel": False,
        "reduce_range": False,
        "activation_type": "int8",
    }
    best = max(tried, key=lambda a: (a["val_agreement"], a["val_accuracy"]))  # the first wins a tie, as in the search
    assert info["settings"]["method"] == info["calibration_method"]
    if not info["float_layers"]:  # the smallest of the files validation cannot tell from the most faithful one
        chosen = next(a for a in tried if a["settings"] == info["settings"])
        assert chosen["val_accuracy"] == info["val_accuracy"] and chosen["val_agreement"] <= best["val_agreement"]
        assert chosen["bytes"] <= best["bytes"]
        assert chosen["bytes"] == min(a["bytes"] for a in tried if a["val_agreement"] >= chosen["val_agreement"])
    assert {key: info["quantization"][key] for key in portable} == {key: info["settings"][key] for key in portable}
    assert set(info["host_cpu"]) == {"model", "avx2", "avx512", "vnni"}
    assert info["val_drop"] == round(info["fp32_val_accuracy"] - info["val_accuracy"], 2)
    assert info["within_budget"] == (not info["drop_test"]["significantly_over_budget"])
    assert (info["over_budget"] is None) == (info["within_budget"] and info["int8_share"]["macs"] >= 0.9)
    io = info["io_quantization"]["input"]
    assert io["scale"] > 0 and io["tensor"] == manifest_json["artifacts"]["onnx-int8"]["inputs"][0]["name"]


def test_onnx_int8_is_all_int8_without_fallback(finished_run: Path, manifest_json: dict) -> None:
    """With no float layer, every Conv/Gemm reads a dequantized activation and int8 weight: share 1.0 of MACs."""
    info = manifest_json["artifacts"]["onnx-int8"]["info"]
    assert info["float_layers"] == [], "the tiny student needs no fallback on digits"
    assert info["int8_share"]["macs"] == 1.0 and info["int8_share"]["weight_bytes"] == 1.0
    assert info["int8_share"]["float_layers"] == [] and info["int8_share"]["total_macs"] > 0
    model = onnx.load(artifact(finished_run, manifest_json, "onnx-int8"))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            assert producers.get(node.input[0]) == "DequantizeLinear", f"{node.name} reads a float activation"


def test_every_int8_record_states_its_share(manifest_json: dict) -> None:
    """onnxruntime's defaults too: int8_share {macs, weight_bytes, total_macs, float_layers}."""
    share = manifest_json["artifacts"]["onnx-int8-ort-defaults"]["info"]["int8_share"]
    assert set(share) == {"macs", "weight_bytes", "total_macs", "float_layers"}
    assert share["total_macs"] == manifest_json["artifacts"]["onnx-int8"]["info"]["int8_share"]["total_macs"]
