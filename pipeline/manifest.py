"""The typed run manifest: every artifact, how to feed it, every measurement, and the environment."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import RunStateError
from pipeline.io import sha256_file, write_text_atomic
from pipeline.measure.machine_load import LoadSnapshot

SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"
WITHIN_BUDGET = "within_budget"  # the gate check of an artifact's export-stage budget (export info `over_budget`)


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
    channel_order: Literal["gray", "RGB", "BGR"] | None = Field(
        None,
        description="Channel content and order of the input: gray (1 channel), RGB or BGR (3); None for other counts.",
    )
    resize: list[int] | None = Field(
        None, description="[H, W] every image was brought to before normalizing (resize_mode); None: native size."
    )
    resize_method: str | None = Field(None, description="'pillow-bilinear' (PIL.Image.resize, BILINEAR) when resized.")
    resize_mode: Literal["stretch", "center-crop"] = Field(
        "stretch",
        description="stretch: resized to `resize`; center-crop: resized (aspect kept) to just cover "
        "[floor(H / crop_ratio), floor(W / crop_ratio)], the other side rounded down, then cropped to `resize` at "
        "top/left = round((resized - resize) / 2) (Python round, halves to even).",
    )
    crop_ratio: float | None = Field(None, description="resize_mode center-crop: share of each side the crop keeps.")
    exif_transpose: bool = Field(
        False, description="EXIF orientation applied first (PIL.ImageOps.exif_transpose); false in runs made before."
    )
    training_only: str | None = Field(
        None, description="Random augmentation of training images (never of these inputs); None: none."
    )
    stats_from: Literal["train", "train-sample", "config"] = Field(
        "train",
        description="mean/std computed on the training split, on a seeded sample of it (image folders: "
        "stats_samples images), or given in the config (data.mean/std).",
    )
    stats_samples: int | None = Field(None, description="Training images mean/std came from; None: from the config.")
    decode: str = (
        "image files: EXIF orientation applied when exif_transpose; 16-bit gray (I;16*, I) scaled by 1/257 and "
        "rounded; palette images expanded to RGB (RGBA with transparency); alpha dropped (colour values kept, not "
        "composited); CMYK and other colour modes converted to RGB by Pillow; converted to channel_order with Pillow "
        "(gray = 'L': (299 R + 587 G + 114 B) / 1000, rounded); brought to `resize` by resize_mode with "
        "PIL.Image.resize(BILINEAR); BGR: RGB channels reversed last. Arrays (.npz, IDX) are taken as gray or RGB"
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
    counts: dict[str, dict[str, int]] | None = Field(
        None, description="Images per class in each split: {train|val|test: {class: count}}."
    )
    skipped_files: int = Field(
        0, description="Files in the image folder that are not images (skipped; listed in logs/data.log)."
    )
    notes: list[str] = Field([], description="Data warnings, e.g. classes kept by data.small_classes: warn.")


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
    """Milliseconds per call over ``runs`` timed calls of one pre-built batch, in ``rounds`` rounds taken in turn
    with the other thread counts of the same batch (load on the machine hits them alike).

    Fields added after schema 2's first release have defaults, so older manifests (one round) still load."""

    batch: int
    runs: int = Field(description="Timed calls, all rounds together.")
    p50_ms: float = Field(description="Median of the round p50s (one round: the p50 of its calls).")
    p90_ms: float = Field(description="Over every timed call of every round, as p99, mean and stdev.")
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    rounds: int = Field(1, description="Rounds of timed calls; each round times every thread count of the batch.")
    round_p50_ms: list[float] = Field([], description="The p50 of each round, in the order measured.")
    spread: float | None = Field(
        None, description="(max - min) / median of round_p50_ms: how far the rounds disagree; 0 with one round."
    )
    remeasured: bool = Field(
        False, description="The first rounds' spread exceeded bench.max_spread: these are the figures of fresh rounds."
    )
    noisy: bool = Field(
        False, description="Still beyond bench.max_spread after the re-measure: the p50 is an unsteady figure."
    )


class Timing(_Record):
    """One batch size at one intra-op thread count, with what the p50 implies."""

    threads: int
    latency: LatencyStats
    throughput_ips: float = Field(description="Images per second at the p50: batch / p50.")
    gmac_per_s: float | None = Field(None, description="Achieved GMAC/s at the p50: macs × batch / p50.")


class ThreadCap(_Record):
    """Configured thread counts a row was timed below: its runtime's threads spin-wait for a busy peer."""

    requested: list[int] = Field(description="The configured thread counts above the cap (not timed).")
    cap: int = Field(description="The most threads timed: the idle cores at bench start.")
    reason: str = Field(description="Why, one line.")


class Parity(_Record):
    """A converted artifact against the runtime it was made for, on the same test images."""

    reference: str = Field(description="The artifact and runtime the logits are compared with.")
    top1_agreement: float = Field(description="Percent of test images with the same top-1 class.")
    max_abs_diff: float = Field(description="Largest absolute difference of a dequantized logit.")


class Measurement(_Record):
    """Accuracy, speed and footprint of one artifact on one runtime; accuracy on the test split."""

    artifact: str
    runtime: str
    provider: str
    accuracy: float
    agreement: float | None = Field(None, description="Top-1 agreement with the teacher, percent.")
    file_bytes: int | None = Field(None, description="Size of the file the runtime loads (PyTorch: state dict).")
    params: int | None = Field(None, description="Parameters stored in the model (ONNX files: onnx-tool's count).")
    macs: int | None = Field(
        None, description="Multiply-accumulates per image of Conv, Gemm and MatMul ops (any precision)."
    )
    peak_rss_mib: float | None = Field(
        None, description="Peak resident memory of a fresh process that loads the model and runs one batch."
    )
    runtime_rss_mib: float | None = Field(
        None, description="Resident memory of that process after importing the runtime, before loading the model."
    )
    parity: Parity | None = Field(None, description="Runs of a converted artifact: agreement with its own runtime.")
    timings: list[Timing] = Field(description="Every configured batch size × thread count.")
    load_ms: float | None = Field(
        None,
        description="Milliseconds to make the model runnable at 1 thread and batch 1, before any call: PyTorch "
        "loads the checkpoint and builds the module in eval mode, onnxruntime creates its session, the TFLite "
        "interpreter loads the file and allocates its tensors.",
    )
    first_call_ms: float | None = Field(
        None, description="The first call after loading (batch 1, 1 thread, before any warm-up), milliseconds."
    )
    thread_cap: ThreadCap | None = Field(
        None, description="Thread counts this row was not timed at, and why (PyTorch: the idle cores)."
    )
    sha256: str | None = Field(
        None, description="sha256 of the artifact measured (its record's): a figure belongs to exactly that file."
    )
    unmeasured: dict[str, str] = Field(
        {},
        description="Fields left empty, each with why (field name → reason), e.g. macs when the MAC count failed; "
        "the row's other figures stand.",
    )

    def timing(self, batch: int, threads: int | None = None) -> Timing | None:
        """The timing at ``batch`` and ``threads`` (the fewest threads measured when None)."""
        rows = [t for t in self.timings if t.latency.batch == batch and threads in (None, t.threads)]
        return min(rows, key=lambda t: t.threads, default=None)

    @property
    def headline(self) -> Timing:
        """Batch 1 at 1 thread (always timed; the fewest threads of a manifest that lacks it): the latency the
        tables, plots, gate and compare read. One thread holds its figure on a busy machine."""
        return self.timing(1) or self.timings[0]

    @property
    def latency(self) -> LatencyStats:
        return self.headline.latency

    @property
    def threads(self) -> int:
        return self.headline.threads


class Skipped(_Record):
    artifact: str
    runtime: str
    reason: str


class GateCheck(_Record):
    """One limit of the accuracy gate applied to one artifact × runtime."""

    artifact: str
    runtime: str
    limit: str = Field(
        description="The `gate:` key: max_drop_vs_teacher, max_int8_drop, min_agreement, max_p50_ms, max_bytes; "
        "or within_budget: the export stage's accuracy budget (value 1 = over budget, threshold 0)."
    )
    value: float
    threshold: float
    passed: bool
    reason: str | None = Field(None, description="within_budget checks: why the file is over its budget.")

    @property
    def excess(self) -> float:
        """How far past the threshold the value lies (positive when broken)."""
        return self.threshold - self.value if self.limit.startswith("min_") else self.value - self.threshold

    def __str__(self) -> str:
        if self.limit == WITHIN_BUDGET:
            return f"{self.artifact}: within budget" if self.passed else f"{self.artifact}: over budget ({self.reason})"
        verdict = "ok" if self.passed else f"broken by {self.excess:g}"
        return f"{self.artifact} on {self.runtime}: {self.limit} {self.value:g} vs {self.threshold:g} ({verdict})"


class TargetFailure(_Record):
    """An artifact the export stage could not build, or did not try because one it is converted from failed."""

    target: str = Field(description="The artifact's name: a target, or <target>-qat for a QAT-KD build.")
    stage: Literal["export", "qat", "skipped"] = Field(
        description="export: the conversion or its verification failed; qat: training the QAT-KD student failed; "
        "skipped: not tried because an artifact it is converted from failed (depends_on)."
    )
    reason: str = Field(description="What failed, one line.")
    hint: str | None = Field(None, description="How to fix it.")
    log: str | None = Field(None, description="The converter's full output, relative to the run directory.")
    depends_on: str | None = Field(None, description="skipped: the failed artifact it is converted from.")


class BenchLoad(_Record):
    """The machine's load around one bench: latency figures depend on it."""

    before: LoadSnapshot = Field(description="Read just before the first row was measured.")
    after: LoadSnapshot = Field(description="Read just after the last row.")
    warnings: list[str] = Field([], description="Thread counts above the usable cores (measured all the same).")


class GateResult(_Record):
    passed: bool = Field(description="Every check passed and no sanity warning fails the gate (`warnings`).")
    checks: list[GateCheck] = []


SanityKind = Literal["chance-level", "teacher-not-better", "kd-below-baseline"]


class SanityWarning(_Record):
    """A figure that looks wrong though nothing failed (pipeline/report/sanity.py); the report and stderr say it."""

    kind: SanityKind = Field(
        description="chance-level: a student or exported artifact not above chance on the test split; "
        "teacher-not-better: the teacher scores no higher than the student distilled from it; kd-below-baseline: "
        "the distilled student scores below the same student trained from labels alone (distill.baseline)."
    )
    artifact: str = Field(description="The artifact the warning is about.")
    message: str = Field(description="What was seen, with the figures, one line.")
    fails_gate: bool = Field(
        False,
        description="The gate is configured and gate.allow_warnings does not accept this kind: the run fails (exit 8).",
    )

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


PRUNED_STUDENT = "student-pruned"  # the artifact the prune stage records
QAT_STUDENT = "student-qat"  # the artifact the qat stage records: the QAT-KD student
QAT_SUFFIX = QAT_STUDENT.removeprefix("student")  # <target>-qat: a target built from the QAT-KD student
BASELINE = "baseline"  # the first labels-only baseline student; distill.baseline_seeds adds baseline-2, baseline-3, …


def baseline_name(index: int) -> str:
    """The artifact name of baseline student ``index`` (0-based): ``baseline``, then ``baseline-2``, …"""
    return BASELINE if index == 0 else f"{BASELINE}-{index + 1}"


def is_baseline(name: str) -> bool:
    """Whether artifact ``name`` is one of the labels-only baseline students."""
    return name == BASELINE or name.startswith(f"{BASELINE}-")


class Manifest(_Record):
    schema_version: int = SCHEMA_VERSION
    edgepipe_version: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    config: dict[str, Any]
    environment: dict[str, Any] = {}
    data: DataRecord | None = None
    artifacts: dict[str, ArtifactRecord] = {}
    shipped_student: str | None = Field(
        None,
        description="The student every export is built from, set by the stage that decides it: distill ('student' "
        "when the run does not prune), prune ('student-pruned' when it ships the pruned one, else 'student'). None: "
        "not decided yet (a run that prunes, before its prune stage).",
    )
    measurements: list[Measurement] = []
    skipped: list[Skipped] = []
    failures: list[TargetFailure] = Field(
        [], description="Artifacts the export stage could not build (the others were built), and those skipped."
    )
    gate: GateResult | None = Field(None, description="The accuracy gate, evaluated by the report stage.")
    bench_load: BenchLoad | None = Field(None, description="The machine's load before and after the bench stage.")
    warnings: list[SanityWarning] = Field(
        [], description="Sanity warnings the report stage found in the measurements (chance level, teacher, baseline)."
    )

    def exported_student(self) -> str:
        """The student the exported files were built from, as the stage that decided it recorded; a manifest from
        before ``shipped_student`` was recorded: the prune stage's record says (``student`` until decided)."""
        if self.shipped_student is not None:
            return self.shipped_student
        record = self.artifacts.get(PRUNED_STUDENT)
        pruning = self.config.get("prune") is not None and record is not None and record.info.get("shipped")
        return PRUNED_STUDENT if pruning else "student"

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

    def lineage_info(self, name: str, key: str) -> Any:
        """Info ``key`` of artifact ``name``, else of the model it was made from (an exported, pruned or QAT
        student's source), up to the distill-stage model it started from (a student's teacher is not its lineage);
        None when none of them has it."""
        record = self.artifacts.get(name)
        while record is not None:
            if key in record.info:
                return record.info[key]
            if record.stage == "distill" or record.parent is None:
                return None
            record = self.artifacts.get(record.parent)
        return None

    def reusable(self, name: str, artifact_id: str, root: Path) -> ArtifactRecord | None:
        """The recorded artifact when its id matches and its file is intact, else None."""
        record = self.artifacts.get(name)
        if record is None or record.id != artifact_id:
            return None
        path = root / record.path
        if not path.is_file() or sha256_file(path) != record.sha256:
            return None
        return record


def manifest_json_schema() -> dict:
    """The JSON schema of manifest.json, as published in ``pipeline/schemas/manifest.schema.json``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edgepipe.dev/schemas/manifest-v{SCHEMA_VERSION}.json",
        **Manifest.model_json_schema(),
    }
