"""`edgepipe bench FILE.onnx|FILE.tflite --data …`: any artifact, not only edgepipe's, through the same harness.

The file says how it is fed: its input shape (NCHW or NHWC, read from the shape), dtype, and for int8 TFLite
inputs the scale and zero point. The data set is brought to the model's channels and size, normalized with
the given mean/std (else its training split's), and its test split measured.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import BenchConfig, DataConfig
from pipeline.data import Splits, load_splits
from pipeline.errors import DataError, ModelError
from pipeline.harness import Plan, measure_plan
from pipeline.manifest import Measurement, TensorSpec
from pipeline.memory_probe import ProbeSpec
from pipeline.model_profile import onnx_profile, tflite_profile
from pipeline.runtimes import Runner, fed, onnxruntime_runner, tflite_runner, to_nhwc
from pipeline.teacher_files import recorded_preprocessing

FORMATS = {".onnx": "onnx", ".tflite": "tflite"}


def _model_format(path: Path) -> str:
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file", "pass an .onnx or .tflite file")
    if path.suffix not in FORMATS:
        raise ModelError(f"{path}: unknown model format {path.suffix!r}", "pass an .onnx or .tflite file")
    return FORMATS[path.suffix]


def _layout(shape: list) -> str:
    """NCHW or NHWC from a 4-d image input shape: the channel axis is the one of 1 or 3 elements."""
    if len(shape) != 4:
        raise ModelError(f"the model's input has shape {shape}; `edgepipe bench` measures 4-d image inputs")
    channels_first, channels_last = shape[1] in (1, 3), shape[3] in (1, 3)
    if channels_first == channels_last:
        raise ModelError(f"can't tell NCHW from NHWC in input shape {shape}", "export the model with a static C axis")
    return "NCHW" if channels_first else "NHWC"


def describe_file(path: Path) -> tuple[str, list[TensorSpec], list[TensorSpec]]:
    """(format, input specs with layout, output specs) read from the model file."""
    fmt = _model_format(path)
    try:
        if fmt == "onnx":
            from targets.onnx_io import describe_onnx

            described = describe_onnx(path, "NCHW", {})
        else:
            from targets.tflite_io import describe_tflite

            described = describe_tflite(path, {})
    except Exception as e:
        raise ModelError(f"{path} is not a readable {fmt} model: {str(e).strip().splitlines()[0]}") from e
    if len(described.inputs) != 1:
        raise ModelError(f"{path} has {len(described.inputs)} inputs; `edgepipe bench` measures one-input models")
    spec = described.inputs[0]
    spec = spec.model_copy(update={"layout": _layout(spec.shape)})
    if fmt == "onnx" and spec.dtype != "float32":
        raise ModelError(f"{path}: input dtype {spec.dtype}; ONNX models are measured with float32 input")
    if fmt == "tflite" and spec.layout != "NHWC":
        raise ModelError(f"{path}: TFLite input layout {spec.layout}; the interpreter is fed NHWC")
    return fmt, [spec], described.outputs


def _onnx_runner(path: Path, layout: str, threads: int) -> Runner:
    runner = onnxruntime_runner(path, "CPUExecutionProvider", threads)
    return runner if layout == "NCHW" else fed(runner, to_nhwc)


def _fit_data(data: DataConfig, spec: TensorSpec) -> DataConfig:
    """The data config brought to the model's channels and image size, unless the user set them."""
    c, h, w = spec.shape[1:] if spec.layout == "NCHW" else [spec.shape[3], *spec.shape[1:3]]
    updates = {}
    if data.channels is None and c in (1, 3):
        updates["channels"] = c
    if data.image_size is None and isinstance(h, int) and isinstance(w, int):
        updates["image_size"] = (h, w)
    return _validated(data, updates)


def _check_shapes(splits: Splits, spec: TensorSpec, outputs: list[TensorSpec], path: Path) -> None:
    c, h, w = splits.input_shape
    want = [c, h, w] if spec.layout == "NCHW" else [h, w, c]
    model = spec.shape[1:]
    if any(isinstance(m, int) and m != d for m, d in zip(model, want)):
        raise DataError(
            f"{path} takes {spec.layout} {model} but the data gives {want}",
            "set --image-size/--channels to the model's input",
        )
    classes = outputs[0].shape[-1]
    if isinstance(classes, int) and classes < len(splits.classes):
        raise DataError(
            f"{path} outputs {classes} classes but the data has {len(splits.classes)}",
            "measure on data with the model's classes, labels 0..N-1 in the model's order",
        )


def _as_recorded(data: DataConfig, recorded: dict) -> DataConfig:
    """The data config fed as edgepipe recorded for the file: its channels, size, resize mode, crop ratio, channel
    order and mean/std (the user's --mean/--std win)."""
    updates = {
        "channels": recorded.get("channels") if recorded.get("channels") in (1, 3) else data.channels,
        "image_size": tuple(recorded["resize"]) if recorded.get("resize") else data.image_size,
        "resize": recorded.get("resize_mode") or "stretch",
        "channel_order": recorded.get("channel_order") if recorded.get("channel_order") == "BGR" else "RGB",
        "mean": data.mean or recorded["mean"],
        "std": data.std or recorded["std"],
    }
    if updates["resize"] == "center-crop":
        updates["crop_ratio"] = recorded.get("crop_ratio", data.crop_ratio)
    return _validated(data, updates)


def _validated(data: DataConfig, updates: dict) -> DataConfig:
    """``data`` with ``updates``, validated; one --mean/--std value stands for every channel of a 3-channel input."""
    merged = data.model_dump() | updates
    if merged["channels"] == 3 and merged["mean"] is not None and len(merged["mean"]) == 1:
        merged["mean"], merged["std"] = merged["mean"] * 3, merged["std"] * 3
    return DataConfig.model_validate(merged)


def bench_file(path: Path, data: DataConfig, bench: BenchConfig, seed: int = 0) -> tuple[Measurement, Splits, str]:
    """Measure one ONNX or TFLite file on its runtime over the data's test split, fed as edgepipe recorded for
    the file when it did (released file, or a run's artifact with its manifest.json); returns the measurement, the
    splits and where the preprocessing came from."""
    fmt, inputs, outputs = describe_file(path)
    recorded = recorded_preprocessing(path)
    if recorded is not None:
        data, source = _as_recorded(data, recorded[0]), f"preprocessing from {recorded[1]}"
    else:
        data, source = _fit_data(data, inputs[0]), "preprocessing from the options and the data"
    splits = load_splits(data, seed)
    _check_shapes(splits, inputs[0], outputs, path)
    shape = list(splits.input_shape)
    if fmt == "onnx":
        layout = inputs[0].layout
        plan = Plan(
            artifact=path.name,
            runtime="onnxruntime CPUExecutionProvider",
            make_runner=lambda threads: _onnx_runner(path, layout, threads),
            profile=lambda: onnx_profile(path),
            probe=ProbeSpec(kind="onnx", path=str(path.resolve()), input_shape=shape) if layout == "NCHW" else None,
        )
    else:
        plan = Plan(
            artifact=path.name,
            runtime="tflite",
            make_runner=lambda threads: tflite_runner(path, inputs, outputs, threads),
            profile=lambda: tflite_profile(path),
            probe=ProbeSpec(kind="tflite", path=str(path.resolve()), input_shape=shape, inputs=inputs, outputs=outputs),
        )
    plan.file_bytes = lambda: path.stat().st_size
    measurement, _ = measure_plan(plan, splits.normalize(splits.test.x), splits.test.y, None, bench)
    return measurement, splits, source


def render_measurement(m: Measurement, splits: Splits, source: str) -> str:
    """What `edgepipe bench FILE` prints: accuracy, the data's preprocessing, latency and footprint tables."""
    from pipeline.report import md_table
    from pipeline.report_sections import (
        FOOTPRINT_HEADER,
        TIMING_HEADER,
        footprint_rows,
        timing_rows,
        unmeasured_bullets,
    )

    c, h, w = splits.input_shape
    lines = [
        f"{m.artifact} on {m.runtime} ({m.provider}): test top-1 {m.accuracy:.2f} % on {len(splits.test)} images "
        f"({c}×{h}×{w}, x = (pixel / 255 − {splits.mean}) / {splits.std}, stats from {splits.stats_from}; "
        f"{source})",
        "",
        *md_table(TIMING_HEADER, timing_rows([m])),
        "",
        *md_table(FOOTPRINT_HEADER, footprint_rows([m])),
    ]
    unmeasured = unmeasured_bullets([m])
    if unmeasured:
        lines += ["", "Fields left empty (—):", *(f"- {b}" for b in unmeasured)]
    return "\n".join(lines)
