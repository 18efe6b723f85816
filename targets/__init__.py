"""Export targets, one module each; importing this package registers them all."""

from targets.base import TARGETS, ExportInputs, ExportResult, Target, register_target
from targets import onnx_fp32, onnx_int8, tflite_fp32, tflite_fp16, tflite_int8  # noqa: F401, I001  (registration order = listing order)

__all__ = ["TARGETS", "ExportInputs", "ExportResult", "Target", "register_target"]
