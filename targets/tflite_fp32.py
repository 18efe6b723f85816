"""tflite-fp32: onnx2tf SavedModel converted by TensorFlow's TFLite converter (fp32)."""

from __future__ import annotations

from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.tflite_io import export_tflite


@register_target
class TfliteFp32(Target):
    name = "tflite-fp32"
    description = "TFLite float32, NHWC input"
    format = "tflite"
    precision = "fp32"
    suffix = ".tflite"
    parent = "onnx-fp32"
    max_abs_diff = 1e-3
    rtol = 1e-5

    def export(self, inputs: ExportInputs) -> ExportResult:
        return export_tflite(inputs, "fp32", self.name)
