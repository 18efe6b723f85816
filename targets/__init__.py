"""Export targets, one module each: importing this package imports every module in it, which registers the
targets they define (adding a target is adding a file). The registry keeps them in ``base.listing_order``
(onnx → tflite, fp32 → fp16 → int8, references last), not in import order. A module that does not load (an import
error, a target the registry refuses) is one SetupError naming the file."""

import importlib
import pkgutil

from pipeline.errors import SetupError, first_line
from targets.base import TARGETS, ExportInputs, ExportResult, Target, register_target


def _load(name: str) -> None:
    try:
        importlib.import_module(f"{__name__}.{name}")
    except Exception as e:  # noqa: BLE001 (a broken plug-in file is named, never a traceback)
        raise SetupError(
            f"targets/{name}.py does not load: {type(e).__name__}: {first_line(e)}",
            "fix or remove that file (see targets/base.py for what a Target subclass sets)",
        ) from e


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _load(_module.name)

__all__ = ["TARGETS", "ExportInputs", "ExportResult", "Target", "register_target"]
