"""edgepipe's runners: int8 (de)quantization and agreement with feeding the runtimes directly."""

from __future__ import annotations

import numpy as np

from pipeline.manifest import TensorSpec
from pipeline.measure.runtimes import dequantize_output, onnxruntime_runner, quantize_input, torch_runner
from pipeline.stages.export import artifact_runner


def test_quantize_input_rounds_and_clips() -> None:
    """q = clip(round(x / scale) + zero_point) in the dtype's range."""
    spec = TensorSpec(name="x", shape=[1], dtype="int8", scale=0.5, zero_point=-10)
    q = quantize_input(np.array([0.0, 0.26, -0.74, 1000.0, -1000.0], np.float32), spec)
    assert q.dtype == np.int8
    assert q.tolist() == [-10, -9, -11, 127, -128]
    back = dequantize_output(q, spec)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back[:3], [0.0, 0.5, -0.5])


def test_runners_agree_with_direct_runtimes(inline_exports, tflite_invoke, onnx_invoke) -> None:
    """Each edgepipe runner gives what the runtime gives when fed directly (files of the tiny inline module)."""
    x = inline_exports.check_x[:64]
    torch_logits = torch_runner(inline_exports.model, 1).predict(x)
    onnx_path = inline_exports.get("onnx-fp32").path
    onnx_logits = onnxruntime_runner(onnx_path, "CPUExecutionProvider", 1).predict(x)
    np.testing.assert_allclose(onnx_logits, onnx_invoke(onnx_path, x), atol=1e-6)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)
    exported = inline_exports.get("tflite-int8")
    spec_in, spec_out = exported.result.inputs, exported.result.outputs
    runner = artifact_runner(exported.path, "tflite", spec_in, spec_out, 1)
    assert (runner.runtime, runner.provider) == ("tflite", "XNNPACK")
    q = quantize_input(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), spec_in[0])
    direct = dequantize_output(tflite_invoke(exported.path, q), spec_out[0])
    np.testing.assert_allclose(runner.predict(x), direct, atol=1e-6)
    assert callable(runner.timed_call(x[:1]))
