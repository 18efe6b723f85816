"""Export targets, one module each: importing this package imports every module in it, which registers the
targets they define (adding a target is adding a file). The registry keeps them in ``base.listing_order``
(onnx → tflite, fp32 → fp16 → int8, references last), not in import order."""

import importlib
import pkgutil

from targets.base import TARGETS, ExportInputs, ExportResult, Target, register_target

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TARGETS", "ExportInputs", "ExportResult", "Target", "register_target"]
