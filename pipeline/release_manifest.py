"""The manifest of a release bundle (``BUNDLE/manifest.json``): each file with how to feed it, what its output means
and what it measured; the copy embedded in each file leaves out its bytes and sha256."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline import __version__
from pipeline.formats import FORMATS
from pipeline.manifest import Measurement, Preprocessing, TensorSpec

RELEASE_SCHEMA_VERSION = 1
LABELS_FILE = "labels.txt"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputMeaning(_Record):
    """What the output tensor holds."""

    kind: Literal["logits", "probabilities"] = Field(
        "logits", description="probabilities: a model that ends in a softmax (softmax_applied), shipped as trained."
    )
    labels_file: str = Field(LABELS_FILE, description="Output index i is the class on line i + 1 of this file.")
    softmax_applied: bool = Field(False, description="The model applies the softmax itself (kind: probabilities).")
    formula: str
    class_map: dict[str, int] | None = Field(
        None,
        description="A model restricted by a class map: each label's output index in the source model, whose "
        "other outputs the file leaves out (its output i is label i); None: the source model's own outputs.",
    )
    source_outputs: int | None = Field(None, description="With class_map: how many outputs the source model has.")


class SourceRun(_Record):
    """The run the files and figures come from."""

    created: str
    data_source: str
    seed: int
    test_images: int = Field(description="Size of the test split every accuracy was measured on.")


class BundledArtifact(_Record):
    """One model file of the bundle; the copy embedded in the file itself leaves out ``bytes`` and ``sha256``
    (they describe the file holding it)."""

    name: str = Field(description="The artifact's name in the run (a target, or <target>-qat).")
    file: str = Field(description="Path inside the bundle.")
    format: str = Field(description="The file's format (pipeline.formats: onnx, tflite).")
    precision: str
    bytes: int
    sha256: str = Field(description="Of the bundled file, metadata embedded.")
    source_sha256: str = Field(description="Of the run's artifact; the bundled file computes the same outputs.")
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    output_meaning: OutputMeaning
    measurements: list[Measurement] = Field(
        description="Test-split accuracy, latency and footprint of the run's artifact on its own runtime."
    )
    versions: dict[str, str] = Field(description="edgepipe, Python and every converter and runtime of the run.")
    over_budget: str | None = Field(None, description="Why the file is over its accuracy budget; None: within it.")
    allowed_over_budget: bool = Field(False, description="Shipped over budget with `release --allow-over-budget`.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown model format {value!r}; valid: {', '.join(FORMATS.names())}")
        return value

    def embedded_json(self) -> str:
        return self.model_dump_json(exclude={"bytes", "sha256"})


class ReleaseManifest(_Record):
    schema_version: int = RELEASE_SCHEMA_VERSION
    edgepipe_version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    source_run: SourceRun
    labels: list[str] = Field(description="Class names in output order (also labels.txt, one per line).")
    labels_file: str = LABELS_FILE
    artifacts: dict[str, BundledArtifact]
