"""Run configuration: one YAML file validated into pydantic models (unknown keys are errors)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from pipeline.manifest import SanityKind

MAX_SEED = 2**32 - 1  # numpy's and torch's seeding range


CONTAINERS = (list, tuple, set, dict)


def _admitted(annotation: Any) -> list:
    """The plain types and literal values an annotation admits at its top level, a container as its own type:
    ``Annotated[int, …] | Literal['auto']`` → [int, 'auto']; ``tuple[int, int] | None`` → [tuple, NoneType]."""
    if isinstance(annotation, type):
        return [annotation]
    origin = get_origin(annotation)
    if origin is Literal:
        return list(get_args(annotation))
    if origin in CONTAINERS:
        return [origin]
    return [admitted for arg in get_args(annotation) for admitted in _admitted(arg)]


def _item_admitted(annotation: Any) -> list:
    """What the items of a container annotation admit (a dict's values): ``list[int | Literal['all']]`` → [int,
    'all']; [] for a scalar annotation."""
    origin = get_origin(annotation)
    if origin in CONTAINERS:
        items = get_args(annotation)[1:] if origin is dict else get_args(annotation)
        return [admitted for arg in items if arg is not Ellipsis for admitted in _admitted(arg)]
    if origin is Literal or isinstance(annotation, type):
        return []
    return [admitted for arg in get_args(annotation) for admitted in _item_admitted(arg)]


def _yes_no_where_a_number(value: Any, admitted: list) -> str | None:
    """What was expected, when ``value`` is a bool and ``admitted`` takes numbers but not bools; else None."""
    kinds = {item if isinstance(item, type) else type(item) for item in admitted}
    if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
        names = ["a name"] if str in admitted else []  # ``int | str``: an index or a key
        return " or ".join(["a number", *(repr(item) for item in admitted if isinstance(item, str)), *names])
    return None


def reject_yes_no_for_numbers(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A field validator (mode "before"): YAML's true/false where a number is expected — the field itself, or an
    item of its list or a value of its mapping — is an error, where pydantic would read it as 1 or 0."""
    annotation = cls.model_fields[info.field_name].annotation
    expected = _yes_no_where_a_number(value, _admitted(annotation))
    if expected:
        raise ValueError(f"expected {expected}, got {str(value).lower()}")
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        expected = _yes_no_where_a_number(item, _item_admitted(annotation))
        if expected:
            raise ValueError(f"expected {expected} for each item, got {str(item).lower()} in {_yaml_flow(value)}")
    return value


def _yaml_flow(value: Any) -> str:
    """``value`` as YAML writes it on one line: [true, 8]."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    _no_yes_no_for_a_number = field_validator("*", mode="before")(reject_yes_no_for_numbers)


class RandomResizedCropConfig(_Section):
    """torchvision's RandomResizedCrop on each decoded training image (before any resize), then a resize of the
    crop to ``data.image_size`` (Pillow bilinear)."""

    scale: tuple[float, float] = Field(
        (0.08, 1.0), description="[min, max] share of the image's area the crop covers (uniform draw)."
    )
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="[min, max] width / height of the crop (drawn log-uniform)."
    )

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        key = f"data.augment.random_resized_crop.{info.field_name}"
        if not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"{key} must be [min, max] with 0 < min <= max; got {list(bounds)}")
        if info.field_name == "scale" and bounds[1] > 1:
            raise ValueError(f"{key} values are shares of the image's area, at most 1; got {list(bounds)}")
        return bounds


class AugmentConfig(_Section):
    """Random training-time augmentation (training batches only; never val, test or calibration)."""

    random_resized_crop: RandomResizedCropConfig | None = Field(
        None,
        description="Crop a random area and aspect ratio of each decoded training image and resize it to "
        "data.image_size (torchvision RandomResizedCrop; image folders: on the decoded file, arrays: on the "
        "array); null turns it off. `{}` gives scale [0.08, 1], ratio [3/4, 4/3].",
    )
    hflip: bool = Field(False, description="Mirror each training image left-right with probability 0.5.")
    crop_padding: int = Field(
        0,
        ge=0,
        description="Zero-pad each side by this many pixels, then crop back to the image size at a random "
        "offset (CIFAR-style random crop); 0 turns it off.",
    )
    brightness: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Scale each training image's pixels by a random factor in [1-b, 1+b]; 0 turns it off.",
    )

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return self.random_resized_crop is not None or self.hflip or self.crop_padding > 0 or self.brightness > 0


Size = Annotated[int, Field(ge=1, le=8192)]
DEFAULT_CROP_RATIO = 0.875  # timm's crop_pct: 224 / 0.875 = 256


class DataConfig(_Section):
    source: str = Field(
        "fashion-mnist",
        description="Built-in data set name (fashion-mnist, digits) or a path: an IDX directory, an .npz file (x, y), "
        "or an image folder (one sub-folder per class, or train/ and test/ each holding the class sub-folders).",
    )
    test: str | None = Field(
        None, description="Path to a separate test set (.npz, IDX directory or image folder) when `source` is a path."
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the training split carved out for validation.")
    test_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="Share held out as test when the source has no test split of its own."
    )
    image_size: tuple[Size, Size] | None = Field(
        None,
        description="[height, width] every image is brought to (see data.resize; Pillow bilinear), for every source; "
        "native size when empty (image folders then need images of one size).",
    )
    channels: Literal[1, 3] | None = Field(
        None,
        description="1 converts every image to grayscale (Pillow 'L'), 3 to RGB; the source's own when empty.",
    )
    resize: Literal["stretch", "center-crop"] = Field(
        "stretch",
        description="How images reach data.image_size: stretch (Pillow bilinear to [H, W]), or center-crop (the "
        "torchvision/timm eval convention: Pillow bilinear so the image just covers [floor(H / crop_ratio), "
        "floor(W / crop_ratio)] keeping its aspect ratio, then the centered [H, W] window).",
    )
    crop_ratio: float = Field(
        DEFAULT_CROP_RATIO,
        gt=0,
        le=1,
        description="resize: center-crop only: share of the resized image the crop keeps per side (0.875: 256 → 224).",
    )
    channel_order: Literal["RGB", "BGR"] = Field(
        "RGB",
        description="Channel order of 3-channel model inputs (pixels reordered after decoding; array sources are "
        "taken as RGB); data.mean/std are given in this order.",
    )
    mean: list[float] | None = Field(
        None,
        description="Per-channel mean of pixel / 255 (values in [0, 1]); computed on the training split when empty.",
    )
    std: list[float] | None = Field(
        None,
        description="Per-channel std of pixel / 255 (values in (0, 1]); computed on the training split when empty.",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig,
        description="Random augmentation of training batches (all off by default).",
    )
    small_classes: Literal["error", "warn"] = Field(
        "error",
        description="A class too small to put an image in train, validation and test: error (naming the class and "
        "its counts), or warn (the class keeps its images for training; the warning goes to the run's log).",
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="Image folders: DataLoader processes decoding training batches (0: in the training process); "
        "empty: min(4, CPU count). In-memory sources always use 0.",
    )

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if values is None:
            return None
        key = f"data.{info.field_name}"
        if not values:
            raise ValueError(f"{key} needs one value per channel; got an empty list")
        low_ok = (lambda v: v >= 0) if info.field_name == "mean" else (lambda v: v > 0)
        if not all(low_ok(v) and v <= 1 for v in values):
            bounds = "[0, 1]" if info.field_name == "mean" else "(0, 1]"
            raise ValueError(f"{key} values must lie in {bounds} (they apply to pixel / 255); got {values}")
        channels = info.data.get("channels")
        if channels is not None and len(values) != channels:
            raise ValueError(f"{key} has {len(values)} values but data.channels is {channels}; give one per channel")
        mean = info.data.get("mean")
        if info.field_name == "std" and mean is not None and len(mean) != len(values):
            raise ValueError(f"data.std has {len(values)} values but data.mean has {len(mean)}; give one per channel")
        return values

    @field_validator("augment")
    @classmethod
    def _crop_fits(cls, augment: AugmentConfig, info: ValidationInfo) -> AugmentConfig:
        size = info.data.get("image_size")
        if size is not None and augment.crop_padding >= min(size):
            raise ValueError(
                f"data.augment.crop_padding ({augment.crop_padding}) must be smaller than data.image_size {list(size)}"
            )
        return augment

    @model_validator(mode="after")
    def _mean_with_std(self) -> "DataConfig":
        if (self.mean is None) != (self.std is None):
            given, missing = ("mean", "std") if self.std is None else ("std", "mean")
            raise ValueError(f"data.{given} is set but data.{missing} is not; give both or neither")
        if self.resize == "center-crop" and self.image_size is None:
            raise ValueError("data.resize: center-crop needs data.image_size (the [H, W] of the crop)")
        if self.crop_ratio != DEFAULT_CROP_RATIO and self.resize != "center-crop":  # a dumped config holds the default
            raise ValueError("data.crop_ratio applies to data.resize: center-crop only; remove it or set that mode")
        if self.channel_order == "BGR" and self.channels == 1:
            raise ValueError("data.channel_order: BGR needs 3-channel images; set data.channels: 3 or remove it")
        return self


class TrainConfig(_Section):
    epochs: int = Field(2, ge=1, description="Passes over the training split (the budget; early stop may end sooner).")
    batch_size: int = Field(128, ge=1, description="Global mini-batch size (split across torchrun processes).")
    lr: float = Field(0.01, gt=0, description="Peak learning rate of AdamW (one-cycle peak by default).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    schedule: Literal["onecycle", "cosine", "step"] = Field(
        "onecycle", description="LR schedule per step: one-cycle warm-up + anneal, cosine decay, or step decay."
    )
    step_epochs: int = Field(1, ge=1, description="step schedule: epochs between LR drops.")
    gamma: float = Field(0.3, gt=0, le=1, description="step schedule: LR factor at each drop.")
    patience: int | None = Field(
        None, ge=1, description="Early stop after this many epochs without a better val accuracy; off when empty."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Training device; auto picks CUDA when present.")
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        exclude_if=lambda value: value == "auto",  # the default stays out of dumps, so cache ids made before it hold
        description="Intra-op threads of training (torch.set_num_threads); auto: the cores this process may use "
        "(CPU affinity, cgroup quota; at most torch's own count, shared among torchrun processes), whatever the "
        "machine's load, so a busy machine trains the same student as a quiet one. The bytes of a checkpoint depend "
        "on it: pin it for byte-identical reruns on machines with other core counts. Recorded as `threads`.",
    )
    mixup: float = Field(
        0.0,
        ge=0,
        exclude_if=lambda value: value == 0,  # off stays out of dumps, so cache ids made before it hold
        description="Mixup (Zhang et al., 2018): each training batch is blended with a shuffled copy of itself by a "
        "weight drawn from Beta(mixup, mixup); the teacher sees the same blended images (consistent teaching, Beyer "
        "et al., CVPR 2022) and label losses take both labels by that weight. 0: off; 0.2–1 are usual.",
    )
    cutmix: float = Field(
        0.0,
        ge=0,
        exclude_if=lambda value: value == 0,
        description="CutMix (Yun et al., 2019): a box of a shuffled copy of the batch is pasted in, its area share "
        "drawn from Beta(cutmix, cutmix); teacher and labels as for mixup. With both set, each batch takes one of the "
        "two at random. 0: off; 1.0 is usual.",
    )

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (mixup or cutmix): the teacher must then see each batch live."""
        return self.mixup > 0 or self.cutmix > 0


class LossSpec(BaseModel):
    """One weighted term of the distillation objective; other keys are the loss's own parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(description="Registered loss: ce, hinton, dkd, lskd, mse, hint.")
    weight: float = Field(1.0, ge=0, description="Weight of this term in the sum.")

    _no_yes_no_for_a_number = field_validator("*", mode="before")(reject_yes_no_for_numbers)

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


class TeacherInput(_Section):
    """How a teacher file (ONNX, TFLite, Keras) is fed, where the file itself does not say.

    The file's own input shape gives layout and size, its outputs the class count; a file edgepipe released (or
    exported in a run whose manifest.json is beside it) also gives its normalization. These keys fill the gaps.
    """

    layout: Literal["NCHW", "NHWC"] | None = Field(
        None, description="Input layout; empty: read from the file's input shape (the axis of 1 or 3 is C)."
    )
    pixel_scale: float = Field(1 / 255, gt=0, description="x = (pixel * pixel_scale - mean[c]) / std[c].")
    mean: list[float] | None = Field(None, description="Per-channel mean of that formula; give with std.")
    std: list[float] | None = Field(None, description="Per-channel std of that formula; give with mean.")
    outputs: Literal["auto", "logits", "probabilities"] = Field(
        "auto",
        description="What the teacher outputs: probabilities (a softmax inside the model) are turned into logits "
        "by log; auto: probabilities when every row of a first batch is ≥ 0 and sums to 1.",
    )

    @model_validator(mode="after")
    def _mean_with_std(self) -> "TeacherInput":
        if (self.mean is None) != (self.std is None):
            raise ValueError("teacher.input.mean and teacher.input.std go together; give both or neither")
        if self.std is not None and (len(self.std) != len(self.mean) or min(self.std) <= 0):
            raise ValueError("teacher.input.std must be positive and as long as teacher.input.mean")
        return self


ModelOutput = Annotated[int, Field(ge=0)] | str
OUTPUT_DESCRIPTION = (
    "Which output of a model whose forward returns several (a tuple/list: its index; a dict: its key) are the "
    "logits: trained, evaluated, exported (the only output of the exported files) and benched; 0 = the first."
)


def _class_map_value(value: object) -> object:
    """A class map is a labels file path or {data class: output index ≥ 0}; empty ("" or {}) means none."""
    if value in ("", {}):
        return None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        bad = next((k for k, v in value.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0), None)
        if bad is None:
            return {str(k): v for k, v in value.items()}
        raise ValueError(f"maps {bad!r} to {value[bad]!r}; each data class needs an output index (an integer ≥ 0)")
    raise ValueError(
        f"must be the model's labels file (a path) or a mapping {{data class: output index}}; got {value!r}"
    )


ClassMap = Annotated[str | dict[str, int] | None, BeforeValidator(_class_map_value)]
CLASS_MAP_DESCRIPTION = (
    "Which of the model's outputs are the data's classes (e.g. 10 of an ImageNet model's 1000): a text file naming "
    "the model's outputs in order, one per line (names compared after strip, then case-insensitively when unique), "
    "or a mapping {data class name: output index}. The model then answers with those outputs, in the data's class "
    "order, in training, evaluation and every exported file. Empty: one output per data class, in order."
)


class TeacherConfig(TrainConfig):
    arch: str = Field(
        "teacher-cnn", description="Registered architecture, or an import spec `module:factory` / `file.py:factory`."
    )
    arch_kwargs: dict = Field({}, description="Keyword arguments for the architecture factory.")
    checkpoint: str | None = Field(
        "auto",
        description="A trained teacher: state_dict checkpoint (into `arch`), TorchScript file or torch.export .pt2; "
        "or a model of another framework run in its own runtime: .onnx (onnxruntime), .tflite (TFLite "
        "interpreter), .keras / .h5 or a SavedModel directory (TensorFlow). auto: the teacher bundled with edgepipe "
        "when the data is fashion-mnist and arch is teacher-cnn, else train one; empty: always train one.",
    )
    input: TeacherInput = Field(
        default_factory=TeacherInput, description="ONNX/TFLite/Keras teachers: what their file does not say."
    )
    output: ModelOutput = Field(0, description="PyTorch teachers: " + OUTPUT_DESCRIPTION)
    class_map: ClassMap = Field(None, description=CLASS_MAP_DESCRIPTION)


class DistillConfig(TrainConfig):
    arch: str = Field(
        "student-cnn", description="Registered architecture, or an import spec `module:factory` / `file.py:factory`."
    )
    arch_kwargs: dict = Field({}, description="Keyword arguments for the architecture factory.")
    epochs: int = Field(10, ge=1, description="Passes over the training split (the budget; early stop may end sooner).")
    losses: list[LossSpec] = Field(
        # a known-good default, built unchecked: checking it imports torch (pipeline.training.losses)
        default_factory=lambda: [LossSpec.model_construct(name="hinton", temperature=2.0, alpha=0.5)],
        min_length=1,
        description="Weighted sum of registered losses, e.g. hinton (temperature, alpha), dkd, lskd, mse, hint.",
    )
    baseline: bool = Field(False, description="Also train the same student from labels alone, same budget (KD gain).")
    baseline_seeds: int = Field(
        1,
        ge=1,
        description="How many baseline students to train (with baseline or `edgepipe distill --baseline`): the same "
        "split and budget, training seeds seed, seed + 1, …; with 2 or more the report gives the KD gain over their "
        "mean and says whether it is larger than their seed-to-seed spread.",
    )
    output: ModelOutput = Field(0, description=OUTPUT_DESCRIPTION)


class StudentConfig(_Section):
    """The model that ships: built from ``arch`` (empty: ``distill.arch``), its weights from ``checkpoint`` when
    given; with ``distill: null`` it ships exactly as trained, else the distillation starts from those weights."""

    arch: str | None = Field(
        None,
        description="Registered architecture, `file.py:factory` / `module:factory`, or a library model by name: "
        "`torchvision:<name>`, `timm:<name>` (built without downloaded weights); empty: distill.arch.",
    )
    arch_kwargs: dict = Field({}, description="Keyword arguments for the architecture (empty: distill.arch_kwargs).")
    checkpoint: str | None = Field(
        None,
        description="A trained student: state_dict checkpoint (loaded weights_only into `arch`), TorchScript file or "
        "torch.export .pt2. With distill: null it ships as-is; with distill, the distillation starts from it.",
    )
    output: ModelOutput | None = Field(None, description=OUTPUT_DESCRIPTION + " Empty: distill.output.")
    class_map: ClassMap = Field(None, description=CLASS_MAP_DESCRIPTION)


class CalibrationConfig(_Section):
    """The calibration set and how the ONNX quantizer turns it into activation ranges. A calibration method's own
    options (``percentile``) sit in this section beside ``method``: each is declared by its method
    (``calibration.methods``) and validated against it by ``config_load.check_config``; read them with
    ``CALIBRATION_METHODS.get(name).options_of(config.calibration)``."""

    model_config = ConfigDict(extra="allow")

    size: int = Field(512, ge=1, description="Calibration samples drawn from the training split.")
    selection: Literal["stratified", "balanced"] = Field(
        "stratified",
        description="stratified: each class in proportion to its share of the training split; "
        "balanced: the same number of samples from every class.",
    )
    method: str = Field(
        "auto",
        description="Activation range estimator of the ONNX quantizer: a registered calibration method (minmax, "
        "percentile, entropy), or auto (tries each and keeps the best validation accuracy). TFLite's converter "
        "always uses min/max.",
    )
    symmetric_activations: bool = Field(
        False, description="Symmetric activation ranges (zero point 0) instead of asymmetric min/max ranges."
    )

    @model_serializer(mode="wrap")
    def _method_options_after_method(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The methods' options dump right after ``method``, where config.yaml has always had ``percentile``."""
        data = handler(self)
        extras = set(self.model_extra or {})
        head = list(type(self).model_fields)[: list(type(self).model_fields).index("method") + 1]
        ordered = {key: value for key, value in data.items() if key in head}
        ordered.update((key, value) for key, value in data.items() if key in extras)
        ordered.update((key, value) for key, value in data.items() if key not in ordered)
        return ordered


class QatConfig(_Section):
    """Quantization-aware distillation: fake-quant fine-tuning of the student while the teacher keeps teaching."""

    when: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: only for int8 targets that still break max_int8_drop after the fallback."
    )
    epochs: int = Field(2, ge=1, description="Fine-tuning epochs with fake quantization.")
    frozen_epochs: int = Field(
        1, ge=0, description="Last epochs with activation ranges and BatchNorm statistics frozen (< epochs)."
    )
    lr: float = Field(0.0001, gt=0, description="Learning rate: constant while ranges are observed, then cosine.")
    batch_size: int = Field(128, ge=1, description="Global batch size.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto (CUDA when present), cpu or cuda.")

    @model_validator(mode="after")
    def _frozen_fits(self) -> "QatConfig":
        if self.frozen_epochs >= self.epochs:
            raise ValueError(
                f"frozen_epochs ({self.frozen_epochs}) must be smaller than epochs ({self.epochs}): "
                "activation ranges are observed for at least one epoch before they are frozen"
            )
        return self


class QuantizeConfig(_Section):
    max_int8_drop: float = Field(
        0.3,
        ge=0,
        description="Accuracy budget: points an int8 artifact may lose against the fp32 student on val; a drop is "
        "over budget only when significantly larger (one-sided paired test on per-image correctness, 95 %).",
    )
    max_float_layers: int = Field(
        4, ge=0, description="Fallback cap: at most this many of the most sensitive layers are kept in float."
    )
    min_int8_share: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Least share of the MACs an int8 artifact runs in int8; the fallback never floats below it, and "
        "a file under it is over budget.",
    )
    qat: QatConfig = Field(default_factory=QatConfig)


class ExportConfig(_Section):
    """Which targets to build and how the ONNX graph is exported. A target's own options sit in this section under
    its name with ``-`` → ``_`` (``onnx_int8``): each is declared by its target (``Target.options``) and validated
    against it by ``config_load.check_config``; read them with ``Target.options_of(config)``."""

    model_config = ConfigDict(extra="allow")

    targets: list[str] | None = Field(
        None,
        description="Export targets to build (see `edgepipe targets`); absent or null: every registered target "
        "built by default, in listing order (the checked config, and so a run's config.yaml, holds the list).",
    )
    opset: int = Field(18, ge=13, le=21, description="ONNX opset of the exported graph.")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx exporter: torch.export-based (dynamo) or the legacy TorchScript one."
    )


class BenchConfig(_Section):
    """How latency is timed: per batch size, every thread count takes turns in ``rounds`` rounds; a figure is the
    median of its round p50s, re-measured once when the rounds disagree by more than ``max_spread``."""

    warmup: int = Field(10, ge=0, description="Untimed runs before timing, at every batch size and thread count.")
    min_runs: int = Field(
        50, ge=1, description="Minimum timed runs at every batch size and thread count, split evenly across rounds."
    )
    min_seconds: float = Field(
        0.5, ge=0, description="Minimum timed seconds at every batch size and thread count, split across rounds."
    )
    rounds: int = Field(
        5, ge=1, description="Interleaved rounds per batch size; the p50 is the median of the rounds' p50s."
    )
    max_spread: float = Field(
        0.25,
        gt=0,
        description="Largest (max - min) / median of a figure's round p50s before it is re-measured (fresh rounds), "
        "then marked noisy when it still disagrees.",
    )
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        [1, 8, 64], min_length=1, description="Batch sizes timed; 1 is always timed (the headline latency)."
    )
    threads: list[Annotated[int, Field(ge=1)] | Literal["all"]] = Field(
        [1, "all"],
        min_length=1,
        description="Intra-op thread counts timed on every runtime; 1 is always timed (the headline latency); 'all': "
        "the cores this process may use (CPU affinity, cgroup quota). PyTorch rows are never timed at more threads "
        "than the cores idle at bench start.",
    )
    eval_batch: int = Field(256, ge=1, description="Batch size of the accuracy pass over the test split.")
    memory: bool = Field(True, description="Measure peak resident memory of a fresh process per artifact × runtime.")

    def thread_counts(self) -> list[int]:
        """The configured thread counts as numbers ('all': machine_load.usable_cores()), 1 included, ascending,
        without repeats."""
        from pipeline.measure.machine_load import usable_cores

        return sorted({1, *(usable_cores() if t == "all" else t for t in self.threads)})

    def batches(self) -> list[int]:
        """The configured batch sizes, ascending, batch 1 included."""
        return sorted({1, *self.batch_sizes})


class GateLimits(_Section):
    """Release limits for an exported artifact on its own runtime; an empty limit is not checked."""

    max_drop_vs_teacher: float | None = Field(None, ge=0, description="Points of test top-1 below the teacher.")
    max_int8_drop: float | None = Field(
        None, ge=0, description="int8 artifacts: points of test top-1 below the fp32 student."
    )
    min_agreement: float | None = Field(None, ge=0, le=100, description="Percent top-1 agreement with the teacher.")
    max_p50_ms: float | None = Field(None, gt=0, description="p50 latency at batch 1 and 1 thread (ms).")
    max_bytes: int | None = Field(None, gt=0, description="File size in bytes.")


class GateConfig(GateLimits):
    """The accuracy gate of a release build: limits for every exported artifact, overridden per target.

    `run`, `report` and `release` exit 8 when an artifact breaks a limit, or when a sanity warning is not in
    ``allow_warnings`` (the report still written, marked FAILED; no bundle written)."""

    targets: dict[str, GateLimits] = Field(
        {},
        description="Per artifact (a target name, or <target>-qat for a QAT-KD one): limits that replace the ones "
        "above where set.",
    )
    allow_warnings: list[SanityKind] = Field(
        [],
        description="Sanity warnings that do not fail a configured gate: chance-level, teacher-not-better, "
        "kd-below-baseline (each is still reported).",
    )

    def limits_for(self, artifact: str) -> GateLimits:
        """The limits of ``artifact``: its own where set, else the general ones."""
        own = self.targets.get(artifact)
        general = GateLimits(**self.model_dump(exclude={"targets", "allow_warnings"}))
        if own is None:
            return general
        return general.model_copy(update=own.model_dump(exclude_none=True))


class PruneFinetuneConfig(_Section):
    """The KD fine-tune that recovers accuracy after pruning (teacher, losses and batch size of `distill`)."""

    epochs: int = Field(3, ge=0, description="Epochs of KD fine-tuning of the pruned student; 0: none.")
    lr: float = Field(0.001, gt=0, description="Peak learning rate of AdamW (one-cycle schedule).")


class PruneMeasureConfig(_Section):
    """Where every student variant's p50 is measured, and the latency budget applies."""

    target: str = Field("onnx-int8", description="Export target the student is built into to be timed.")
    batch: int = Field(1, ge=1, description="Batch size of the timed calls.")
    threads: int = Field(1, ge=1, description="Intra-op threads of the runtime (onnxruntime CPU or TFLite).")
    warmup: int = Field(10, ge=0, description="Untimed calls before timing.")
    min_runs: int = Field(100, ge=1, description="Minimum timed calls per round.")
    min_seconds: float = Field(0.5, ge=0, description="Minimum timed seconds per round.")
    rounds: int = Field(5, ge=1, description="Rounds (variants alternate); the p50 is the median of the rounds' p50s.")


class PruneConfig(_Section):
    """Pruning of the distilled student between distill and quantize (the `prune:` section; absent: off)."""

    method: Literal["magnitude", "structured"] = Field(
        description="magnitude: zero the smallest weights (unstructured; smaller gzip, NOT faster on dense runtimes); "
        "structured: remove whole channels/filters with torch-pruning (fewer MACs, faster)."
    )
    sparsity: float | None = Field(None, description="magnitude: share of weights set to zero, in [0, 1).")
    scope: Literal["global", "layer"] = Field(
        "global", description="magnitude: one threshold over all layers (global) or each layer to `sparsity` (layer)."
    )
    channel_ratio: float | None = Field(
        None, description="structured: share of each layer's channels removed, in [0, 1)."
    )
    macs_ratio: float | None = Field(
        None, description="structured: keep about this share of the student's MACs per image, in (0, 1)."
    )
    latency_budget_ms: float | None = Field(
        None,
        gt=0,
        description="structured: prune step by step (KD fine-tune, export, time) until the p50 on `measure` meets "
        "this budget; the most accurate student that meets it is kept.",
    )
    layers: dict[str, float] = Field(
        {},
        description="Per-layer amount (magnitude: sparsity; structured: channel ratio) by `named_modules()` name; "
        "overrides the global one for that layer.",
    )
    ignore: list[str] = Field([], description="Layers never pruned (the classifier layer is never pruned).")
    round_to: int | None = Field(None, ge=1, description="structured: keep channel counts a multiple of this.")
    step: float = Field(0.1, gt=0, lt=1, description="latency budget: channel ratio removed per search step.")
    max_ratio: float = Field(0.9, gt=0, lt=1, description="latency budget: the search stops at this channel ratio.")
    search_epochs: int = Field(1, ge=0, description="latency budget: KD fine-tune epochs after each search step.")
    finetune: PruneFinetuneConfig = Field(default_factory=PruneFinetuneConfig)
    measure: PruneMeasureConfig = Field(default_factory=PruneMeasureConfig)

    @field_validator("sparsity", "channel_ratio")
    @classmethod
    def _share(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"prune.{info.field_name} must lie in [0, 1); got {value}")
        return value

    @field_validator("layers")
    @classmethod
    def _layer_shares(cls, layers: dict[str, float]) -> dict[str, float]:
        for name, value in layers.items():
            if not 0 <= value < 1:
                raise ValueError(f"prune.layers[{name!r}] must lie in [0, 1); got {value}")
        return layers

    @model_validator(mode="after")
    def _one_amount(self) -> "PruneConfig":
        if self.macs_ratio is not None and not 0 < self.macs_ratio < 1:
            raise ValueError(f"prune.macs_ratio must lie in (0, 1); got {self.macs_ratio}")
        structured = {
            "channel_ratio": self.channel_ratio,
            "macs_ratio": self.macs_ratio,
            "latency_budget_ms": self.latency_budget_ms,
        }
        given = [key for key, value in structured.items() if value is not None]
        if self.method == "magnitude":
            if given:
                raise ValueError(f"prune.{given[0]} is for method: structured; magnitude pruning takes sparsity")
            if self.sparsity is None:
                raise ValueError("prune.method magnitude needs prune.sparsity (share of weights zeroed, in [0, 1))")
            return self
        if self.sparsity is not None:
            raise ValueError(
                "prune.sparsity is for method: magnitude; structured pruning takes channel_ratio, macs_ratio or "
                "latency_budget_ms"
            )
        if len(given) != 1:
            raise ValueError(
                "prune.method structured needs exactly one of channel_ratio, macs_ratio, latency_budget_ms; "
                f"got {', '.join(given) or 'none'}"
            )
        if self.layers and given[0] != "channel_ratio":
            raise ValueError(f"prune.layers only combines with channel_ratio, not {given[0]}")
        return self


class RunConfig(_Section):
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of every random choice (splits, init, shuffling, calibration draw)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig | None = Field(
        default_factory=TeacherConfig,
        description="The teacher (distillation) or reference (distill: null) model; null, or absent with distill: "
        "null: the shipped student is its own reference.",
    )
    student: StudentConfig = Field(default_factory=StudentConfig, description="The model that ships.")
    distill: DistillConfig | None = Field(
        default_factory=DistillConfig,
        description="Distillation of the student from the teacher; null: ship student.checkpoint as trained.",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    prune: PruneConfig | None = Field(None, description="Pruning between distill and quantize; absent or null: off.")

    @model_validator(mode="before")
    @classmethod
    def _no_teacher_without_distill(cls, raw: object) -> object:
        """``distill: null`` without a ``teacher`` section: no teacher (the shipped model is its own reference)."""
        if isinstance(raw, dict) and "distill" in raw and raw["distill"] is None and "teacher" not in raw:
            return {**raw, "teacher": None}
        return raw

    @model_validator(mode="after")
    def _student_given_once(self) -> "RunConfig":
        if self.distill is None:
            if not self.student.checkpoint:
                raise ValueError(
                    "distill: null ships a trained student, but student.checkpoint is empty; give the trained "
                    "model's file (state_dict, TorchScript or .pt2), or configure distill"
                )
            return self
        if self.teacher is None:
            raise ValueError("distill needs a teacher; give a teacher section, or distill: null to ship the student")
        last = self.seed + self.distill.baseline_seeds - 1
        if last > MAX_SEED:
            raise ValueError(
                f"the baselines' training seeds run from seed {self.seed} to {last}, past the largest seed "
                f"{MAX_SEED}; lower seed or distill.baseline_seeds"
            )
        defaults = DistillConfig()
        for key in ("arch", "arch_kwargs", "output"):
            own, legacy = getattr(self.student, key), getattr(self.distill, key)
            if own not in (None, {}) and legacy != getattr(defaults, key):
                raise ValueError(
                    f"the student's {key} is given twice (student.{key} and distill.{key}); keep student.{key} only"
                )
        return self

    def student_model(self) -> StudentConfig:
        """The student as configured: ``student`` keys, else those of ``distill`` (older configs), else defaults."""
        fallback = self.distill or DistillConfig()
        return self.student.model_copy(
            update={
                "arch": self.student.arch or fallback.arch,
                "arch_kwargs": self.student.arch_kwargs or fallback.arch_kwargs,
                "output": fallback.output if self.student.output is None else self.student.output,
            }
        )

    @property
    def kd(self) -> DistillConfig:
        """The distillation settings the prune and QAT-KD fine-tunes use: ``distill``, or its defaults when null."""
        return self.distill or DistillConfig()


def dump_config(config: RunConfig) -> str:
    """The effective config as YAML (saved beside every run's manifest)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
