"""Calibration methods: how the ONNX quantizer turns the calibration set's activations into int8 ranges."""

from __future__ import annotations

from pipeline.config import CalibrationConfig

METHODS = ("minmax", "percentile", "entropy")  # `auto` tries them in this order; the first wins a tie


def ort_calibration(method: str, config: CalibrationConfig) -> dict:
    """``quantize_static`` keyword arguments (calibrate_method, extra_options) for ``method``."""
    from onnxruntime.quantization import CalibrationMethod

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    extra_options = {"ActivationSymmetric": config.symmetric_activations}
    if method == "percentile":
        extra_options["CalibPercentile"] = config.percentile
    if method != "minmax":
        extra_options["CalibTensorRangeSymmetric"] = config.symmetric_activations
    return {"calibrate_method": calibrate_method, "extra_options": extra_options}
