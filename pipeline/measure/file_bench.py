"""`edgepipe bench FILE.onnx|FILE.tflite --data …`: any artifact, not only edgepipe's, through the same harness.

The file says how it is fed: its input shape (NCHW or NHWC, read from the shape; a static batch dimension fixes the
batch size), dtype, and for int8 TFLite inputs the scale and zero point. A file edgepipe wrote is fed as recorded
for it (resize, channel order, mean/std). Data whose own size or channels differ from the model's is refused
unless ``--resize`` brings it over (or the recorded preprocessing resizes). It is normalized with --mean/--std,
else the recorded mean/std, else its training split's, and its test split measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import BenchConfig, DataConfig
from pipeline.data.splits import SOURCES, Splits, load_splits
from pipeline.errors import ConfigError, DataError, ModelError
from pipeline.formats import Format, format_of
from pipeline.manifest import Measurement, TensorSpec
from pipeline.measure.format_plan import format_plan
from pipeline.measure.harness import Plan, measure_plan
from pipeline.measure.machine_load import threads_warning
from pipeline.measure.runtimes import Runner
from pipeline.training.teacher_files import recorded_preprocessing

OWN_SIZE = "the data's own size and channels"


@dataclass(frozen=True)
class FileBench:
    """What `edgepipe bench FILE` measured, and how the data was fed (each part said in the printed summary).

    ``preprocessing``: where the resize mode and channel order came from; ``normalization``: where mean/std came
    from; ``fitted``: how the images reached the model's size and channels (None: as they are); ``fixed_batch``:
    the batch size the file's input shape fixes (None: any); ``warnings``: one line each, for stderr.
    """

    measurement: Measurement
    splits: Splits
    preprocessing: str
    normalization: str
    fitted: str | None = None
    fixed_batch: int | None = None
    warnings: list[str] = field(default_factory=list)


def _layout(shape: list) -> str:
    """NCHW or NHWC from a 4-d image input shape: the channel axis is the one of 1 or 3 elements."""
    if len(shape) != 4:
        raise ModelError(f"the model's input has shape {shape}; `edgepipe bench` measures 4-d image inputs")
    channels_first, channels_last = shape[1] in (1, 3), shape[3] in (1, 3)
    if channels_first == channels_last:
        raise ModelError(f"can't tell NCHW from NHWC in input shape {shape}", "export the model with a static C axis")
    return "NCHW" if channels_first else "NHWC"


def describe_file(path: Path) -> tuple[Format, list[TensorSpec], list[TensorSpec]]:
    """(format, input specs with layout, output specs) read from the model file.

    Raises:
        ModelError: an unknown suffix or unreadable file, not one image input, or an input the format's runner
            cannot feed (its layout, or a non-float32 dtype on a runtime fed float only)."""
    fmt = format_of(path)
    try:
        inputs, outputs = fmt.describe(path)
    except Exception as e:
        raise ModelError(f"{path} is not a readable {fmt.name} model: {str(e).strip().splitlines()[0]}") from e
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; `edgepipe bench` measures one-input models")
    spec = inputs[0].model_copy(update={"layout": _layout(inputs[0].shape)})
    if not fmt.quantized_input and spec.dtype != "float32":
        raise ModelError(f"{path}: input dtype {spec.dtype}; {fmt.label} models are measured with float32 input")
    if spec.layout not in fmt.layouts:
        raise ModelError(f"{path}: {fmt.label} input layout {spec.layout}; {fmt.runtime_label} is fed {fmt.layout}")
    return fmt, [spec], outputs


def _model_chw(spec: TensorSpec) -> tuple[int | str, int | str, int | str]:
    """(C, H, W) the model takes, from its input shape (a dynamic dimension stays a name)."""
    shape = spec.shape
    return tuple(shape[1:]) if spec.layout == "NCHW" else (shape[3], shape[1], shape[2])


def _fixes(dims: tuple, updates: dict) -> dict:
    """Config updates that bring the data to channels and size ``dims`` (C, H, W), where those are numbers."""
    c, h, w = dims
    if isinstance(c, int) and c in (1, 3):
        updates["channels"] = c
    if isinstance(h, int) and isinstance(w, int):
        updates["image_size"] = (h, w)
    return updates


def _as_recorded(data: DataConfig, recorded: dict) -> dict:
    """Config updates that feed the data as edgepipe recorded for the file: resize mode, crop ratio, channel order,
    mean/std (the user's --mean/--std win), and the recorded resize when training resized. Image files also decode
    to the recorded channels (the decode converts them); arrays keep their own."""
    updates = {
        "resize": recorded.get("resize_mode") or "stretch",
        "channel_order": recorded.get("channel_order") if recorded.get("channel_order") == "BGR" else "RGB",
        "mean": data.mean or recorded["mean"],
        "std": data.std or recorded["std"],
    }
    if recorded.get("resize"):
        updates["image_size"] = tuple(recorded["resize"])
    if data.source not in SOURCES and Path(data.source).is_dir() and recorded.get("channels") in (1, 3):
        updates["channels"] = recorded["channels"]
    if updates["resize"] == "center-crop":
        updates["crop_ratio"] = recorded.get("crop_ratio", data.crop_ratio)
    return updates


def _validated(data: DataConfig, updates: dict) -> DataConfig:
    """``data`` with ``updates``, validated; one --mean/--std value stands for every channel of a 3-channel input."""
    merged = data.model_dump() | updates
    if merged["channels"] == 3 and merged["mean"] is not None and len(merged["mean"]) == 1:
        merged["mean"], merged["std"] = merged["mean"] * 3, merged["std"] * 3
    return DataConfig.model_validate(merged)


def _shape_text(dims) -> str:
    return "×".join(str(d) for d in dims)


def _check_fit(splits: Splits, wanted: tuple, source: str, path: Path, recorded: bool) -> None:
    """DataError when the data, as loaded (its own size and channels, unless converted), is not what the model
    takes (dynamic dimensions match anything)."""
    if all(not isinstance(m, int) or m == d for m, d in zip(wanted, splits.input_shape)):
        return
    takes = "was recorded taking" if recorded else "takes"
    loaded = " (loaded with the recorded channel count)" if recorded else ""
    raise DataError(
        f"{source} images{loaded} are {_shape_text(splits.input_shape)} (C×H×W) but {path.name} {takes} "
        f"{_shape_text(wanted)}",
        "pass --resize to bring them to the model's size and channels (Pillow bilinear; gray ↔ RGB), or measure on "
        "the data the model was made for",
    )


def _check_classes(splits: Splits, outputs: list[TensorSpec], path: Path) -> list[str]:
    """DataError when the model has fewer outputs than the data has classes; a warning when it has more (its
    answers past the data's labels count as wrong)."""
    classes, labels = outputs[0].shape[-1], len(splits.classes)
    if isinstance(classes, int) and classes < labels:
        raise DataError(
            f"{path} outputs {classes} classes but the data has {labels}",
            "measure on data with the model's classes, labels 0..N-1 in the model's order",
        )
    if isinstance(classes, int) and classes > labels:
        return [
            f"{path.name} outputs {classes} classes but the data has {labels}: its top-1 is scored against labels "
            f"0..{labels - 1}, an answer past them counts as wrong (is this the data the model was made for?)"
        ]
    return []


def _normalization(given: bool, recorded: tuple[dict, str] | None, splits: Splits, source: str) -> str:
    """Where mean/std came from, in words."""
    if given:
        return "mean/std from --mean/--std"
    if recorded is not None:
        return f"mean/std as recorded for the file: {recorded[1]}"
    sample = f", a sample of {splits.stats_samples} images" if splits.stats_from == "train-sample" else ""
    return f"mean/std from the training split of {source}{sample}"


def fixed_batch(runner: Runner, size: int) -> Runner:
    """``runner`` of a model whose batch dimension is fixed at ``size``: ``predict`` goes in chunks of ``size``, the
    last one padded (its padded outputs dropped); a timed call gets a batch padded to ``size`` (the harness times
    batch ``size`` only)."""

    def padded(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)]) if len(x) < size else x

    def predict(x: np.ndarray) -> np.ndarray:
        chunks = [np.asarray(x[i : i + size]) for i in range(0, len(x), size)]
        return np.concatenate([runner.predict(padded(chunk))[: len(chunk)] for chunk in chunks])

    return Runner(
        runner.runtime, runner.provider, runner.threads, predict, lambda x: runner.timed_call(padded(x)), runner.enter
    )


class _FixedBatchBench(BenchConfig):
    """The bench settings of a file fixed at one batch size: that size is the only one timed (not batch 1 too)."""

    def batches(self) -> list[int]:
        return list(self.batch_sizes)


def _batch_settings(bench: BenchConfig, spec: TensorSpec, path: Path) -> tuple[BenchConfig, int | None, list[str]]:
    """The bench settings for the file's batch dimension, its fixed size (None: dynamic), and a warning when
    --batch asked for sizes the file cannot take."""
    size = spec.shape[0]
    if not isinstance(size, int):
        return bench, None, []
    asked = sorted(set(bench.batch_sizes) - {size}) if "batch_sizes" in bench.model_fields_set else []
    warnings = []
    if asked:
        warnings.append(
            f"{path.name} takes batches of exactly {size} (its input shape fixes the batch dimension): timed at "
            f"batch {size} only; --batch {', '.join(map(str, asked))} left out"
        )
    settings = bench.model_dump() | {"batch_sizes": [size], "eval_batch": size}
    return _FixedBatchBench.model_validate(settings), size, warnings


def _plan(path: Path, fmt: Format, inputs: list[TensorSpec], outputs: list[TensorSpec], splits: Splits, batch) -> Plan:
    """The harness plan of the file on its format's runtime, CPU (``batch``: a fixed batch size, None: any)."""
    return format_plan(
        fmt,
        path.name,
        path.resolve(),
        inputs,
        outputs,
        list(splits.input_shape),
        fmt.cpu_provider,
        lambda: path.stat().st_size,
        batch=batch or 1,
        fit=(lambda runner: fixed_batch(runner, batch)) if batch else (lambda runner: runner),
    )


def _fed_splits(
    path: Path, data: DataConfig, spec: TensorSpec, recorded: tuple[dict, str] | None, resize: bool, seed: int
) -> tuple[DataConfig, Splits]:
    """The data config as fed (recorded preprocessing, --resize) and its splits, checked to fit the model."""
    wanted = _model_chw(spec)
    updates: dict = {}
    if recorded is not None:
        updates = _as_recorded(data, recorded[0])
        wanted = (recorded[0]["channels"], recorded[0]["height"], recorded[0]["width"])
    if resize:
        updates = _fixes(wanted, updates)
    fed_data = _validated(data, updates)
    fit_args = (wanted, data.source, path, recorded is not None)
    try:
        splits = load_splits(fed_data, seed)
    except ConfigError:
        if data.mean is not None or recorded is None:
            raise
        # the recorded mean/std have another channel count than the data: say what does not fit instead
        _check_fit(load_splits(fed_data.model_copy(update={"mean": None, "std": None}), seed), *fit_args)
        raise
    _check_fit(splits, *fit_args)
    return fed_data, splits


def bench_file(path: Path, data: DataConfig, bench: BenchConfig, seed: int = 0, resize: bool = False) -> FileBench:
    """Measure one ONNX or TFLite file on its runtime over the data's test split, fed as edgepipe recorded for
    the file when it did (released file, or a run's artifact with its manifest.json beside it).

    Args:
        path: the .onnx or .tflite file.
        data: the data section (source, --mean/--std); its size and channels are the data's own unless ``resize``.
        bench: thread counts and batch sizes; a file with a static batch dimension is timed at that size only.
        seed: the split seed.
        resize: bring the data to the model's size and channels when they differ (else that is a DataError).

    Raises:
        ModelError: the file cannot be read or is not a one-input image model.
        DataError: the data's size or channels differ from the model's (without ``resize``), or it has more
            classes than the model outputs.
    """
    fmt, inputs, outputs = describe_file(path)
    recorded = recorded_preprocessing(path)
    fed_data, splits = _fed_splits(path, data, inputs[0], recorded, resize, seed)
    class_warnings = _check_classes(splits, outputs, path)
    bench, batch, warnings = _batch_settings(bench, inputs[0], path)
    warnings = class_warnings + warnings
    warnings += [line for line in [threads_warning(bench.thread_counts())] if line]
    measurement, _ = measure_plan(
        _plan(path, fmt, inputs, outputs, splits, batch), splits.normalize(splits.test.x), splits.test.y, None, bench
    )
    fitted = None
    if fed_data.image_size is not None or fed_data.channels is not None:
        how = "by --resize" if resize else "as recorded"
        fitted = f"brought there {how} ({fed_data.resize})"
    return FileBench(
        measurement=measurement,
        splits=splits,
        preprocessing=f"preprocessing from {recorded[1]}" if recorded else "no preprocessing recorded for the file",
        normalization=_normalization(data.mean is not None, recorded, splits, data.source),
        fitted=fitted,
        fixed_batch=batch,
        warnings=warnings,
    )


def render_measurement(result: FileBench) -> str:
    """What `edgepipe bench FILE` prints: accuracy; how the data was fed (size, normalization and where each came
    from); the warm p50 beside load time and first call; latency and footprint tables."""
    from pipeline.report.markdown import md_table
    from pipeline.report.sections import (
        FOOTPRINT_HEADER,
        TIMING_HEADER,
        footprint_rows,
        timing_rows,
        unmeasured_bullets,
    )

    m, splits = result.measurement, result.splits
    headline = m.headline  # batch 1 at 1 thread; a fixed-batch file's own batch
    batch = f"; the file fixes the batch at {result.fixed_batch}" if result.fixed_batch else ""
    first_call = f", first call {m.first_call_ms:.2f} ms" if m.first_call_ms is not None else ""
    load = f"; load {m.load_ms:.1f} ms{first_call}" if m.load_ms is not None else ""
    lines = [
        f"{m.artifact} on {m.runtime} ({m.provider}): test top-1 {m.accuracy:.2f} % on {len(splits.test)} images",
        f"fed {_shape_text(splits.input_shape)} (C×H×W), {result.fitted or OWN_SIZE}; {result.preprocessing}",
        f"normalized x = (pixel / 255 − {splits.mean}) / {splits.std}, {result.normalization}",
        f"warm p50 {headline.latency.p50_ms:.3f} ms (batch {headline.latency.batch}, {headline.threads} thread"
        f"{'s' if headline.threads > 1 else ''}){load}{batch}",
        "",
        *md_table(TIMING_HEADER, timing_rows([m])),
        "",
        *md_table(FOOTPRINT_HEADER, footprint_rows([m])),
    ]
    unmeasured = unmeasured_bullets([m])
    if unmeasured:
        lines += ["", "Fields left empty (—):", *(f"- {b}" for b in unmeasured)]
    return "\n".join(lines)
