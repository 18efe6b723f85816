"""onnx-int8-ort-defaults: what a user gets from onnxruntime's ``quantize_static`` with every option left at its
default, on the same fp32 model and calibration set — the baseline that shows what onnx-int8's choices gain."""

from __future__ import annotations

import contextlib
import io

from calibration.readers import ort_reader
from pipeline.config import RunConfig
from pipeline.errors import ExportError
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.onnx_io import describe_onnx, qdq_io_quantization


@register_target
class OnnxInt8OrtDefaults(Target):
    name = "onnx-int8-ort-defaults"
    description = "reference, not for shipping: onnxruntime quantize_static with its defaults, same calibration set"
    format = "onnx"
    precision = "int8"
    suffix = ".onnx"
    parent = "onnx-fp32"
    needs_calibration = True
    reference = True

    def config_key(self, config: RunConfig) -> dict:
        return {}

    def export(self, inputs: ExportInputs) -> ExportResult:
        import onnx
        from onnxruntime.quantization import quantize_static

        input_name = onnx.load(inputs.parent_path).graph.input[0].name
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(inputs.parent_path), str(inputs.output_path), ort_reader(inputs.calibration, input_name)
                )
        except Exception as e:
            raise ExportError(f"onnxruntime quantize_static failed: {str(e).strip().splitlines()[0]}") from e
        info = {
            "quantization": "onnxruntime quantize_static defaults",
            "io_quantization": qdq_io_quantization(inputs.output_path),
        }
        return describe_onnx(inputs.output_path, layout="NCHW", info=info)
