"""TFLite targets: fp32 equals onnx-fp32 on NHWC input, fp16 holds float16, int8 is full-integer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter


@pytest.fixture(scope="module")
def test_input(digits_splits) -> np.ndarray:
    return digits_splits.normalize(digits_splits.test.x)


def artifact(finished_run: Path, manifest_json: dict, name: str) -> Path:
    return finished_run / manifest_json["artifacts"][name]["path"]


def tensor_dtypes(path: Path) -> set[str]:
    return {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(path)).get_tensor_details()}


def test_tflite_fp32_matches_onnx_fp32(finished_run, manifest_json, test_input, tflite_invoke, onnx_invoke) -> None:
    """tflite-fp32 fed NHWC gives onnx-fp32's logits (atol 1e-3)."""
    onnx_logits = onnx_invoke(artifact(finished_run, manifest_json, "onnx-fp32"), test_input)
    nhwc = np.ascontiguousarray(test_input.transpose(0, 2, 3, 1))
    tflite_logits = tflite_invoke(artifact(finished_run, manifest_json, "tflite-fp32"), nhwc)
    assert tflite_logits.dtype == np.float32
    np.testing.assert_allclose(tflite_logits, onnx_logits, atol=1e-3, rtol=0)


def test_tflite_fp32_is_float32(finished_run: Path, manifest_json: dict) -> None:
    """The fp32 file holds no float16 or int8 tensors."""
    dtypes = tensor_dtypes(artifact(finished_run, manifest_json, "tflite-fp32"))
    assert "float32" in dtypes and "float16" not in dtypes and "int8" not in dtypes


def test_tflite_fp16_has_float16_tensors(finished_run, manifest_json, test_input, tflite_invoke, onnx_invoke) -> None:
    """fp16 stores float16 weights, keeps float32 I/O, and stays close to onnx-fp32."""
    path = artifact(finished_run, manifest_json, "tflite-fp16")
    assert "float16" in tensor_dtypes(path)
    assert manifest_json["artifacts"]["tflite-fp16"]["info"]["tensor_dtypes"].get("float16", 0) > 0
    interpreter = Interpreter(model_path=str(path))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    nhwc = np.ascontiguousarray(test_input.transpose(0, 2, 3, 1))
    onnx_logits = onnx_invoke(artifact(finished_run, manifest_json, "onnx-fp32"), test_input)
    np.testing.assert_allclose(tflite_invoke(path, nhwc), onnx_logits, atol=0.05, rtol=0)
    assert manifest_json["artifacts"]["tflite-fp16"]["bytes"] < 0.7 * manifest_json["artifacts"]["tflite-fp32"]["bytes"]


def test_tflite_int8_is_full_integer(finished_run: Path, manifest_json: dict) -> None:
    """int8 input and output, no float32 tensor anywhere, and the manifest records the file's quantization."""
    path = artifact(finished_run, manifest_json, "tflite-int8")
    interpreter = Interpreter(model_path=str(path))
    record = manifest_json["artifacts"]["tflite-int8"]
    for detail, spec in (
        (interpreter.get_input_details()[0], record["inputs"][0]),
        (interpreter.get_output_details()[0], record["outputs"][0]),
    ):
        assert detail["dtype"] == np.int8
        assert spec["dtype"] == "int8"
        scale, zero_point = detail["quantization"]
        assert scale > 0
        assert spec["scale"] == pytest.approx(scale, rel=1e-6)
        assert spec["zero_point"] == zero_point
        assert -128 <= spec["zero_point"] <= 127
    dtypes = tensor_dtypes(path)
    assert "float32" not in dtypes and "float16" not in dtypes
    assert "int8" in dtypes
    assert record["inputs"][0]["layout"] == "NHWC"
    assert list(interpreter.get_input_details()[0]["shape"][1:]) == [8, 8, 1]
