"""tflite-fp16: onnx2tf SavedModel converted by TensorFlow's TFLite converter (fp16)."""

from __future__ import annotations

from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.tflite_io import export_tflite


@register_target
class TfliteFp16(Target):
    name = "tflite-fp16"
    description = "TFLite float16 weights, float32 input/output, NHWC input"
    format = "tflite"
    precision = "fp16"
    suffix = ".tflite"
    parent = "onnx-fp32"
    max_abs_diff = 0.05
    rtol = 1e-2  # fp16 keeps ~3 significant digits; errors grow with the logits (0.07 at |logit| ~10 seen)

    def export(self, inputs: ExportInputs) -> ExportResult:
        return export_tflite(inputs, "fp16", self.name)
