"""Calibration methods: how the ONNX quantizer turns the calibration set's activations into int8 ranges.

One registered class per method, each with its onnxruntime calibrator and, where it has any, its own options model.
A method's options are written in the config's ``calibration`` section beside ``method`` (``percentile: 99.999``);
``config_load.check_config`` validates them against their method and :meth:`Method.options_of` reads them.
Registration order is the order ``calibration.method: auto`` tries the methods in; the first wins a tie.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import CalibrationConfig
from pipeline.registry import Registry


class Method:
    """One calibration method; subclasses set the class attributes and, when the calibrator takes settings, add
    their ``extra_options``."""

    name: ClassVar[str]
    ort_method: ClassVar[str]  # the member of onnxruntime.quantization.CalibrationMethod
    options: ClassVar[type[BaseModel] | None] = None  # its own settings, keys of the calibration section

    @classmethod
    def options_of(cls, config: CalibrationConfig) -> BaseModel:
        """This method's options in ``config`` (the calibration section), as validated by
        ``config_load.check_config``; the defaults for keys that are absent."""
        if cls.options is None:
            raise TypeError(f"calibration method {cls.name!r} declares no options")
        given = config.model_extra or {}
        return cls.options.model_validate({key: given[key] for key in cls.options.model_fields if key in given})

    @classmethod
    def extra_options(cls, config: CalibrationConfig) -> dict:
        """This method's onnxruntime ``quantize_static`` ``extra_options`` (``ort_calibration`` adds
        ``ActivationSymmetric``, common to all)."""
        return {"CalibTensorRangeSymmetric": config.symmetric_activations}


CALIBRATION_METHODS: Registry[type[Method]] = Registry("calibration method")  # order: the order `auto` tries


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a calibration method under its ``name``; its option keys must be new to the
    calibration section (they share it with its own keys and every other method's options)."""
    taken = set(CalibrationConfig.model_fields) | {
        key for name in CALIBRATION_METHODS for key in option_keys(CALIBRATION_METHODS.get(name))
    }
    clash = sorted(taken & set(option_keys(cls)))
    if clash:
        raise ValueError(f"calibration method {cls.name!r}: option {clash[0]!r} is already a calibration key")
    return CALIBRATION_METHODS.register(cls.name)(cls)


def option_keys(method: type[Method]) -> list[str]:
    """The calibration-section keys ``method`` declares."""
    return list(method.options.model_fields) if method.options else []


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@register_method
class MinMax(Method):
    name = "minmax"
    ort_method = "MinMax"

    @classmethod
    def extra_options(cls, config: CalibrationConfig) -> dict:
        return {}


class PercentileOptions(_Options):
    percentile: float = Field(
        99.999,
        gt=90,
        le=100,
        description="percentile method: the share (%) of each activation's calibration values kept inside the "
        "range; the rest, split between both tails, is clipped.",
    )


@register_method
class Percentile(Method):
    name = "percentile"
    ort_method = "Percentile"
    options = PercentileOptions

    @classmethod
    def extra_options(cls, config: CalibrationConfig) -> dict:
        return {"CalibPercentile": cls.options_of(config).percentile, **super().extra_options(config)}


@register_method
class Entropy(Method):
    name = "entropy"
    ort_method = "Entropy"


def ort_calibration(method: str, config: CalibrationConfig) -> dict:
    """``quantize_static`` keyword arguments (calibrate_method, extra_options) for ``method``."""
    from onnxruntime.quantization import CalibrationMethod as OrtCalibrationMethod

    entry = CALIBRATION_METHODS.get(method)
    extra_options = {"ActivationSymmetric": config.symmetric_activations, **entry.extra_options(config)}
    return {"calibrate_method": getattr(OrtCalibrationMethod, entry.ort_method), "extra_options": extra_options}
