"""The typed run manifest: every artifact, how to feed it, every measurement, and the environment."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import RunStateError
from pipeline.io import sha256_file, write_text_atomic

SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Record):
    """One model input or output, with what a consumer needs to feed or read it."""

    name: str
    shape: list[int | str] = Field(description="Dimensions; 'batch' marks the dynamic batch dimension.")
    dtype: str
    layout: str | None = Field(None, description="NCHW or NHWC for image inputs.")
    scale: float | None = Field(None, description="int8 tensors: real = scale * (q - zero_point).")
    zero_point: int | None = None


class Preprocessing(_Record):
    """How raw pixels become the float model input: decode, convert, resize, then x = (pixel / 255 - mean[c]) / std[c].

    Fields added after schema 1's first release have defaults, so older manifests still load.
    """

    pixel_scale: float = 1 / 255
    mean: list[float]
    std: list[float]
    channels: int
    height: int
    width: int
    channel_order: Literal["gray", "RGB"] | None = Field(
        None, description="Channel content and order of the input: gray (1 channel) or RGB (3); None for other counts."
    )
    resize: list[int] | None = Field(
        None, description="[H, W] every image was resized to before normalizing (resize_method); None: native size."
    )
    resize_method: str | None = Field(None, description="'pillow-bilinear' (PIL.Image.resize, BILINEAR) when resized.")
    stats_from: Literal["train", "config"] = Field(
        "train", description="mean/std computed on the training split, or given in the config (data.mean/std)."
    )
    decode: str = (
        "image files: 16-bit pixels scaled by 1/257, alpha dropped, converted to channel_order with Pillow "
        "(gray = 'L': (299 R + 587 G + 114 B) / 1000, rounded), "
        "then resized to `resize` with PIL.Image.resize(BILINEAR)"
    )
    formula: str = (
        "x = (pixel * pixel_scale - mean[c]) / std[c]; int8 inputs: q = clip(round(x / scale) + zero_point, -128, 127)"
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_channel_order(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "channel_order" not in raw:
            raw = {**raw, "channel_order": {1: "gray", 3: "RGB"}.get(raw.get("channels"))}
        return raw


class DataRecord(_Record):
    source: str
    source_layout: str | None = Field(
        None, description="How the source was read: built-in, idx, npz, image-folder, image-folder train/ + test/ …"
    )
    classes: list[str]
    train: int
    val: int
    test: int
    seed: int
    preprocessing: Preprocessing


class ArtifactRecord(_Record):
    """A file a stage produced; ``id`` hashes stage, config and parent, so a changed input means a new id."""

    name: str
    id: str
    stage: str
    parent: str | None = None
    path: str
    bytes: int
    sha256: str
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    info: dict[str, Any] = {}


class LatencyStats(_Record):
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float


class Measurement(_Record):
    """Accuracy and speed of one artifact on one runtime, on the test split."""

    artifact: str
    runtime: str
    provider: str
    threads: int
    accuracy: float
    agreement: float = Field(description="Top-1 agreement with the teacher, percent.")
    latency: LatencyStats
    throughput: LatencyStats
    throughput_ips: float


class Skipped(_Record):
    artifact: str
    runtime: str
    reason: str


class Manifest(_Record):
    schema_version: int = SCHEMA_VERSION
    edgepipe_version: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    config: dict[str, Any]
    environment: dict[str, Any] = {}
    data: DataRecord | None = None
    artifacts: dict[str, ArtifactRecord] = {}
    measurements: list[Measurement] = []
    skipped: list[Skipped] = []

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        """Read a manifest; a corrupt or foreign file is a RunStateError naming it."""
        try:
            return cls.model_validate_json(path.read_text())
        except (OSError, ValueError) as e:
            raise RunStateError(
                f"{path} is not a readable edgepipe manifest: {str(e).splitlines()[0]}",
                "remove it (artifacts will be rebuilt) or point at another run",
            ) from e

    def save(self, path: Path) -> None:
        write_text_atomic(path, self.model_dump_json(indent=2) + "\n")

    def reusable(self, name: str, artifact_id: str, root: Path) -> ArtifactRecord | None:
        """The recorded artifact when its id matches and its file is intact, else None."""
        record = self.artifacts.get(name)
        if record is None or record.id != artifact_id:
            return None
        path = root / record.path
        if not path.is_file() or sha256_file(path) != record.sha256:
            return None
        return record
