"""Export targets, one module each; importing this package registers them all."""

from targets import onnx_fp32, onnx_int8, onnx_int8_ort_defaults, tflite_fp16, tflite_fp32, tflite_int8  # noqa: F401, I001  (registration order = listing order)
from targets.base import TARGETS, ExportInputs, ExportResult, Target, register_target

__all__ = ["TARGETS", "ExportInputs", "ExportResult", "Target", "register_target"]
