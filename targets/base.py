"""The Target base class and registry: adding an export target is one file with one subclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
from pydantic import BaseModel

from pipeline.config import ExportConfig, RunConfig
from pipeline.formats import FORMATS
from pipeline.manifest import Preprocessing, TensorSpec
from pipeline.registry import Registry


@dataclass(frozen=True)
class ExportInputs:
    """What an exporter gets: its parent artifact, the calibration set, the validation split (int8 targets
    score their choices on it), a scratch dir and the run's config."""

    parent_path: Path
    parent_sha256: str
    output_path: Path
    work_dir: Path
    config: RunConfig
    preprocessing: Preprocessing
    calibration: "CalibrationSet | None" = None  # noqa: F821 (calibration.sampling)
    validation: tuple[np.ndarray, np.ndarray] | None = None  # normalized NCHW x and labels y
    reference_path: Path | None = None  # fp32 file int8 accuracy is measured against, when not the parent
    model: "object | None" = None  # the torch student, for targets whose parent is the checkpoint
    log_path: Path | None = None  # converters' whole output goes here (RUN/logs/<target>.log); None: discarded


@dataclass(frozen=True)
class ExportResult:
    """How to feed the written file, plus target-specific facts for the manifest."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict


class Target:
    """One export target; subclasses set the class attributes and implement ``export``."""

    name: ClassVar[str]
    description: ClassVar[str]
    format: ClassVar[str]  # "onnx" or "tflite"
    precision: ClassVar[str]  # "fp32", "fp16" or "int8"
    suffix: ClassVar[str]
    parent: ClassVar[str]  # the artifact it is converted from: "student" or another target's name
    needs_calibration: ClassVar[bool] = False
    reference: ClassVar[bool] = False  # a comparison point measured in the report, never shipped
    max_abs_diff: ClassVar[float | None] = None  # absolute logit tolerance vs the float student; None: int8, measured
    rtol: ClassVar[float] = 0.0  # plus this share of the largest |logit| (fp16 rounds relative to magnitude)
    options: ClassVar[type[BaseModel] | None] = None  # its own settings, the config's export.<options_key()>
    default: ClassVar[bool] = True  # built when export.targets is not given; False: only when named there

    @classmethod
    def options_key(cls) -> str:
        """The export section's key of this target's options: its name with ``-`` → ``_`` (``onnx_int8``)."""
        return cls.name.replace("-", "_")

    @classmethod
    def options_of(cls, config: RunConfig) -> BaseModel:
        """This target's options in ``config`` (``export.<options_key()>``), as validated by
        ``config_load.check_config``; the defaults when the key is absent."""
        if cls.options is None:
            raise TypeError(f"target {cls.name!r} declares no options")
        value = (config.export.model_extra or {}).get(cls.options_key())
        if isinstance(value, cls.options):
            return value
        return cls.options.model_validate({} if value is None else value)  # a config check_config has not seen

    def tolerance(self, reference_logits: np.ndarray) -> float | None:
        """Largest absolute logit difference a correct conversion may show against ``reference_logits``
        (N×classes, the float student's): ``max_abs_diff + rtol * max|reference|``; None: not checked (int8)."""
        if self.max_abs_diff is None:
            return None
        return self.max_abs_diff + self.rtol * float(np.abs(reference_logits).max(initial=0.0))

    def export(self, inputs: ExportInputs) -> ExportResult:
        """Write the artifact to ``inputs.output_path`` and describe its tensors."""
        raise NotImplementedError

    def config_key(self, config: RunConfig) -> dict:
        """The part of the run config this target depends on (part of its cache key)."""
        return {"opset": config.export.opset}


PRECISION_ORDER = ("fp32", "fp16", "int8")


def _rank(order: tuple[str, ...], value: str) -> int:
    return order.index(value) if value in order else len(order)


def listing_order(target: type[Target]) -> tuple:
    """Where a target lists, is reported and is built: by format (in ``FORMATS`` order: onnx, tflite), then
    precision (fp32, fp16, int8), a reference after the shipped targets of its kind, then by name; precisions not
    named above after the known ones. (Today's parent of every other target, onnx-fp32, so comes first.)"""
    return (
        _rank(tuple(FORMATS.names()), target.format),
        _rank(PRECISION_ORDER, target.precision),
        target.reference,
        target.name,
    )


class TargetRegistry(Registry[type[Target]]):
    """The target registry: entries kept in :func:`listing_order` whatever order their modules are imported in,
    the default target list, and each target's options key."""

    def register(self, name: str) -> Callable[[type[Target]], type[Target]]:
        add = super().register(name)

        def add_in_order(cls: type[Target]) -> type[Target]:
            add(cls)  # a duplicate name raises here
            problem = self._problem(cls)
            if problem:
                del self._entries[name]
                raise TypeError(f"target {name!r}: {problem}")
            ordered = sorted(self._entries.items(), key=lambda item: listing_order(item[1]))
            self._entries.clear()  # in place: a test's monkeypatch of the dict restores into this one
            self._entries.update(ordered)
            return cls

        return add_in_order

    def _problem(self, cls: type[Target]) -> str | None:
        """What keeps ``cls`` (just added) from being a target, or None: a class attribute every target sets is
        missing, its format is not in ``FORMATS``, or its options model is not a pydantic model with a default for
        every field that refuses unknown keys, or has the config key of an export setting or of another target's
        options."""
        missing = [attr for attr in REQUIRED_ATTRIBUTES if not hasattr(cls, attr)]
        if missing:
            return f"sets no {', '.join(missing)} (every Target subclass sets {', '.join(REQUIRED_ATTRIBUTES)})"
        if cls.format not in FORMATS:
            return f"format {cls.format!r} is none of the registered formats ({', '.join(FORMATS.names())})"
        if cls.options is None:
            return None
        if not (isinstance(cls.options, type) and issubclass(cls.options, BaseModel)):
            return f"options must be a pydantic BaseModel subclass, not {cls.options!r}"
        if cls.options.model_config.get("extra") != "forbid":
            return "its options model must refuse unknown keys (model_config = ConfigDict(extra='forbid'))"
        required = [field for field, info in cls.options.model_fields.items() if info.is_required()]
        if required:
            return f"its options need a default for {', '.join(required)} (a run that does not use it still loads them)"
        key = cls.options_key()
        if key in ExportConfig.model_fields:
            return f"its options key {key!r} is an export setting"
        clash = [
            other.name
            for other in self._entries.values()
            if other is not cls and other.options and other.options_key() == key
        ]
        return f"its options key {key!r} is also that of target {clash[0]!r}" if clash else None

    def defaults(self) -> list[str]:
        """The targets built when ``export.targets`` is not given: every registered one whose ``default`` is set."""
        return [name for name, cls in self._entries.items() if cls.default]

    def options_models(self) -> dict[str, type[BaseModel]]:
        """Per export key (``onnx_int8``), in listing order: the options model of each target that declares one."""
        return {cls.options_key(): cls.options for cls in self._entries.values() if cls.options}


REQUIRED_ATTRIBUTES = ("name", "description", "format", "precision", "suffix", "parent")
TARGETS = TargetRegistry("target")


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: register a Target subclass under its ``name``."""
    return TARGETS.register(cls.name)(cls)
