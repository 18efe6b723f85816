"""tflite-int8: full-integer TFLite (int8 weights, activations, input and output), same calibration set."""

from __future__ import annotations

from pipeline.errors import ExportError
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.tflite_io import export_tflite


@register_target
class TfliteInt8(Target):
    name = "tflite-int8"
    description = "TFLite full-integer int8 (int8 input/output with scale and zero point), NHWC input"
    format = "tflite"
    precision = "int8"
    suffix = ".tflite"
    parent = "onnx-fp32"
    needs_calibration = True

    def export(self, inputs: ExportInputs) -> ExportResult:
        result = export_tflite(inputs, "int8")
        dtypes = [spec.dtype for spec in result.inputs + result.outputs]
        if any(dtype != "int8" for dtype in dtypes) or result.info["tensor_dtypes"].get("float32", 0):
            raise ExportError(
                f"{inputs.output_path.name} is not full-integer: input/output {dtypes}, "
                f"tensor dtypes {result.info['tensor_dtypes']}"
            )
        return result
