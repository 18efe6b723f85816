"""TFLite files converted with tf2onnx: onnxruntime gives what the LiteRT interpreter gives (the TFLite targets'
files of the tiny inline module, ``inline_exports``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ExportError
from pipeline.measure.runtimes import dequantize_output, quantize_input, tflite_runner
from pipeline.measure.tflite_onnx import parity, tf2onnx_runner, tflite_to_onnx


@pytest.mark.parametrize("name", ["tflite-fp32", "tflite-fp16", "tflite-int8"])
def test_converted_tflite_matches_interpreter(inline_exports, digits_splits, tmp_path: Path, name: str) -> None:
    """Same logits on the digits test split, at the full split, batch 1 and batch 8."""
    record = inline_exports.get(name).result
    onnx_path = tmp_path / "model.onnx"
    tflite_to_onnx(inline_exports.get(name).path, onnx_path)
    interpreter = tflite_runner(inline_exports.get(name).path, record.inputs, record.outputs, 1)
    runner = tf2onnx_runner(onnx_path, record.inputs, record.outputs, 1)
    assert (runner.runtime, runner.provider) == ("onnxruntime", "CPU")
    x = digits_splits.normalize(digits_splits.test.x)
    result = parity(interpreter.predict(x), runner.predict(x))
    scale = record.outputs[0].scale
    # Float (fp16 weights are widened to fp32 by both runtimes): only summation order differs, measured 1.2e-6.
    # int8: onnxruntime fuses the QDQ graph into QLinearConv/QGemm, whose requantization rounds differently from
    # XNNPACK's; one-step differences in activations add up to a few output steps (at most 3 on the default student:
    # 10 % of logits differ, top-1 agreement 100 %). Five steps leave room for that; a wrong scale, zero point or
    # layout costs far more.
    atol = 5 * scale if scale is not None else 1e-5
    assert result.top1_agreement >= 99.0
    assert result.max_abs_diff <= atol
    for batch in (1, 8):
        np.testing.assert_allclose(runner.predict(x[:batch]), interpreter.predict(x[:batch]), rtol=0, atol=atol)
    assert callable(runner.timed_call(x[:8]))


def test_int8_conversion_is_exact_before_fusion(inline_exports, digits_splits, tmp_path: Path) -> None:
    """Unfused, the converted int8 graph computes what XNNPACK computes: the int8 differences above come from
    onnxruntime's fused kernels, not from the conversion (measured: identical on every logit)."""
    import onnxruntime as ort

    exported = inline_exports.get("tflite-int8")
    record = exported.result
    onnx_path = tmp_path / "model.onnx"
    tflite_to_onnx(exported.path, onnx_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = digits_splits.normalize(digits_splits.test.x)
    q = quantize_input(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), record.inputs[0])
    unfused = dequantize_output(session.run(None, {session.get_inputs()[0].name: q})[0], record.outputs[0])
    reference = tflite_runner(exported.path, record.inputs, record.outputs, 1).predict(x)
    assert parity(reference, unfused).max_abs_diff <= record.outputs[0].scale * 1.001


def test_corrupt_tflite_raises_export_error(inline_exports, tmp_path: Path) -> None:
    """A truncated .tflite is one readable ExportError, and nothing is written."""
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(inline_exports.get("tflite-fp32").path.read_bytes()[:300])
    with pytest.raises(ExportError, match="tf2onnx could not convert") as error:
        tflite_to_onnx(corrupt, tmp_path / "model.onnx")
    assert "\n" not in error.value.one_line()
    assert not (tmp_path / "model.onnx").exists()
