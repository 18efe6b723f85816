"""Export targets, one module each; importing this package registers them all."""

import importlib

from targets.base import TARGETS, ExportInputs, ExportResult, Target, register_target

TARGET_MODULES = ("onnx_fp32", "onnx_int8", "onnx_int8_ort_defaults", "tflite_fp32", "tflite_fp16", "tflite_int8")
for _module in TARGET_MODULES:  # registration order = listing order
    importlib.import_module(f"targets.{_module}")

__all__ = ["TARGETS", "ExportInputs", "ExportResult", "Target", "register_target"]
