"""The Target base class and registry: adding an export target is one file with one subclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.config import RunConfig
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


TARGETS: Registry[type[Target]] = Registry("target")


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: register a Target subclass under its ``name``."""
    return TARGETS.register(cls.name)(cls)
