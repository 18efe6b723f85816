"""Every registered target, unit-tested on a tiny inline module (``tests/inline_targets.py``) through its real
converter: the written file runs on its own runtime at any batch size, gives torch's output shape, stays within the
target's own tolerance of torch's logits (``Target.tolerance``), holds the precision its name says (int8 files
really int8: QDQ nodes and int8 weights in ONNX, int8 input/output and no float tensor in TFLite), and the
``ExportResult`` describes the file it wrote."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter
from inline_targets import Exported, real_targets, run_file

TARGET_NAMES = real_targets()
INT8_AGREEMENT = 0.9  # top-1 agreement with torch on 128 test images: a broken int8 file agrees on ~10 %


def built(inline_exports, name: str) -> Exported:
    exported = inline_exports.get(name)
    if exported.error is not None:
        raise AssertionError(f"{name} failed to convert the tiny module: {exported.error}") from exported.error
    assert exported.path.is_file() and exported.path.stat().st_size > 0
    return exported


def onnx_counts(exported: Exported) -> Counter:
    return Counter(node.op_type for node in onnx.load(exported.path).graph.node)


def tflite_dtypes(exported: Exported) -> set[str]:
    return {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(exported.path)).get_tensor_details()}


def test_every_real_target_is_covered() -> None:
    """The table below is the registry: a new target file is tested here without editing this file."""
    assert {"onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8"} <= set(TARGET_NAMES)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_file_runs_and_matches_torch(inline_exports, name: str) -> None:
    """The file runs on its runtime at batch 1 and 128 with torch's output shape; fp32/fp16 logits within the
    target's own tolerance, int8 agreeing with torch's top-1 on nearly every test image."""
    exported = built(inline_exports, name)
    x = inline_exports.check_x
    expected = inline_exports.torch_logits(x)
    logits = run_file(exported, x)
    assert logits.shape == expected.shape == (len(x), 10)
    assert run_file(exported, x[:1]).shape == (1, 10)
    tolerance = exported.target.tolerance(expected)
    if exported.target.precision == "int8":
        assert tolerance is None
        agreement = float((logits.argmax(1) == expected.argmax(1)).mean())
        assert agreement >= INT8_AGREEMENT, f"{name}: top-1 agreement with torch {agreement:.2f}"
    else:
        assert tolerance is not None
        max_abs_diff = float(np.abs(logits - expected).max())
        assert max_abs_diff <= tolerance, f"{name}: logits differ by {max_abs_diff:.3g}, tolerance {tolerance:.3g}"


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_result_describes_the_file(inline_exports, name: str) -> None:
    """The ExportResult's tensor specs are the file's: one input of the module's shape in the format's layout
    (dynamic batch), one output of 10 classes, dtypes as the file stores them."""
    exported = built(inline_exports, name)
    (source,), (sink,) = exported.result.inputs, exported.result.outputs
    if exported.target.format == "onnx":
        graph = onnx.load(exported.path).graph
        assert [source.name, sink.name] == [graph.input[0].name, graph.output[0].name]
        assert source.layout == "NCHW" and source.shape == ["batch", 1, 8, 8] and sink.shape == ["batch", 10]
        assert exported.result.info["op_counts"] == dict(onnx_counts(exported))
        return
    interpreter = Interpreter(model_path=str(exported.path))
    for spec, detail in ((source, interpreter.get_input_details()[0]), (sink, interpreter.get_output_details()[0])):
        assert spec.dtype == np.dtype(detail["dtype"]).name
        if detail["dtype"] == np.int8:
            scale, zero_point = detail["quantization"]
            assert scale > 0 and spec.scale == pytest.approx(scale, rel=1e-6) and spec.zero_point == zero_point
    assert source.layout == "NHWC" and list(source.shape[1:]) == [8, 8, 1] and list(sink.shape[1:]) == [10]


@pytest.mark.parametrize("name", [n for n in TARGET_NAMES if n.startswith("onnx")])
def test_onnx_file_passes_the_checker(inline_exports, name: str) -> None:
    onnx.checker.check_model(onnx.load(built(inline_exports, name).path), full_check=True)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_precision_is_what_the_name_says(inline_exports, name: str) -> None:
    """int8: ONNX QuantizeLinear/DequantizeLinear with every Conv/Gemm weight an int8 initializer, or TFLite int8
    input, output and no float tensor; fp16: float16 weights, float32 I/O; fp32: no int8 or float16 tensor."""
    exported = built(inline_exports, name)
    precision, fmt = exported.target.precision, exported.target.format
    if fmt == "onnx":
        counts = onnx_counts(exported)
        quantized = counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
        assert quantized == (precision == "int8"), dict(counts)
        if precision == "int8":
            assert_onnx_weights_int8(exported)
        return
    dtypes = tflite_dtypes(exported)
    interpreter = Interpreter(model_path=str(exported.path))
    io_dtypes = {interpreter.get_input_details()[0]["dtype"], interpreter.get_output_details()[0]["dtype"]}
    if precision == "int8":
        assert io_dtypes == {np.int8} and "int8" in dtypes and not {"float32", "float16"} & dtypes, dtypes
    elif precision == "fp16":
        assert io_dtypes == {np.float32} and "float16" in dtypes, dtypes
    else:
        assert io_dtypes == {np.float32} and "float16" not in dtypes and "int8" not in dtypes, dtypes


def assert_onnx_weights_int8(exported: Exported) -> None:
    """Every Conv/Gemm/MatMul reads its weight through a DequantizeLinear of an int8 initializer (no float weight
    left), and its activation through a DequantizeLinear too."""
    model = onnx.load(exported.path)
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    weighted = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(weighted) == 3  # the tiny module's two convolutions and its Linear
    for node in weighted:
        assert node.input[1] not in initializers, f"{node.name} reads a float weight initializer directly"
        dequantize = producers[node.input[1]]
        assert dequantize.op_type == "DequantizeLinear"
        assert initializers[dequantize.input[0]].data_type == onnx.TensorProto.INT8
        assert producers[node.input[0]].op_type == "DequantizeLinear", f"{node.name} reads a float activation"


def test_onnx_int8_chooses_on_validation(inline_exports) -> None:
    """onnx-int8 records the settings it chose, all-int8 when nothing needs float (share 1.0 of MACs)."""
    info = built(inline_exports, "onnx-int8").result.info
    assert set(info["settings"]) == {"method", "per_channel", "reduce_range", "activation_type"}
    assert info["quantization"]["format"] == "QDQ" and info["quantization"]["weight_type"] == "int8"
    assert info["float_layers"] == [] and info["int8_share"]["macs"] == 1.0
    assert info["io_quantization"]["input"]["scale"] > 0
