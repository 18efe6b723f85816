"""Calibration data for int8 quantization: drawn from the training split, saved once, fed to every quantizer."""

from calibration.sampling import CalibrationSet, draw_calibration_set

__all__ = ["CalibrationSet", "draw_calibration_set"]
