"""Teachers from other frameworks: an ONNX, TFLite or Keras (.keras / SavedModel) file run in its own runtime.

Logit distillation needs nothing of the teacher but its outputs. Such a teacher is described from its file
(layout and size from the input shape, class count from the output, int8 scale and zero point, and the
normalization when edgepipe wrote the file), the gaps filled from ``teacher.input``, and checked against the
data. ``FileTeacher`` then feeds it the run's batches: each float NCHW batch, normalized as the run's artifacts
expect, is brought back to pixels and normalized the teacher's way, laid out and quantized as its file wants;
its outputs come back as float logits (dequantized, and ``log`` of probabilities when it ends in a softmax).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from pipeline.config import TeacherInput
from pipeline.data.splits import Splits
from pipeline.errors import DataError, ModelError
from pipeline.formats import Format, format_for_suffix, format_labelled
from pipeline.io import atomic_path, hash_json, sha256_file
from pipeline.manifest import TensorSpec
from pipeline.measure.runtimes import Runner, fed, tensorflow_parameters, tensorflow_runner, tensorflow_signature

# Keras and SavedModel teachers are this module's own; ONNX and TFLite teachers (any ``pipeline.formats`` format)
# are spelled, read and run as the formats table says
KERAS = "Keras"
KERAS_SUFFIXES = (".keras", ".h5")
SAVED_MODEL = "SavedModel"
TENSORFLOW = "tensorflow"  # the runtime of Keras and SavedModel teachers
SAVED_MODEL_ARCHIVE = ".savedmodel.zip"
PROBABILITY_TOLERANCE = 1e-2  # |row sum - 1| of a softmax output (int8 outputs round each probability)
LOG_FLOOR = 1e-7  # probabilities of 0 (an int8 softmax rounds small ones to 0) become log(1e-7), not -inf


def file_format(path: Path) -> str | None:
    """A format's label (ONNX, TFLite), Keras or SavedModel for a teacher file of another framework; None for
    PyTorch files."""
    table = format_for_suffix(path.suffix)
    if table is not None:
        return table.label
    if path.suffix in KERAS_SUFFIXES:
        return KERAS
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SAVED_MODEL
    return None


class TeacherInterface(BaseModel):
    """How the teacher file is fed and read, and where each fact came from (recorded in the manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str
    runtime: str
    input: TensorSpec
    output: TensorSpec
    layout_from: Literal["file", "config"]
    pixel_scale: float
    mean: list[float]
    std: list[float]
    normalization_from: str
    outputs: Literal["logits", "probabilities"] = "logits"

    @property
    def chw(self) -> tuple:
        """(channels, height, width) of the file's input; a dynamic one is a string."""
        _, *dims = self.input.shape
        return tuple(dims) if self.layout == "NCHW" else (dims[2], dims[0], dims[1])

    @property
    def layout(self) -> str:
        return self.input.layout

    @property
    def num_classes(self) -> int | str:
        return self.output.shape[-1]


def _raw_specs(path: Path, fmt: str) -> tuple[TensorSpec, TensorSpec]:
    """The file's first input and output as read by its own tooling (layout not yet known)."""
    table = format_labelled(fmt)
    inputs, outputs = table.describe(path) if table is not None else tensorflow_signature(path)
    if len(inputs) != 1:
        raise ModelError(f"the teacher {path.name} has {len(inputs)} inputs; a teacher takes one image batch")
    return inputs[0], outputs[0]


def _layout(spec: TensorSpec, given: str | None, name: str) -> tuple[str, str]:
    """(layout, where from): the axis of 1 or 3 elements is C; ``teacher.input.layout`` decides when both or neither
    could be, and must agree with the file when the file is clear."""
    if len(spec.shape) != 4:
        raise ModelError(f"the teacher {name} takes a {len(spec.shape)}-d input {spec.shape}; a teacher takes images")
    first, last = spec.shape[1] in (1, 3), spec.shape[3] in (1, 3)
    from_file = None if first == last else ("NCHW" if first else "NHWC")
    if from_file and given and given != from_file:
        raise ModelError(
            f"the teacher {name} takes {from_file} input {spec.shape}, teacher.input.layout says {given}",
            "drop teacher.input.layout or fix it",
        )
    if from_file:
        return from_file, "file"
    if given:
        return given, "config"
    raise ModelError(
        f"can't tell NCHW from NHWC in the teacher {name}'s input shape {spec.shape}", "set teacher.input.layout"
    )


def _embedded_preprocessing(path: Path, fmt: Format) -> dict | None:
    """The preprocessing edgepipe embedded in a released file (``edgepipe release``), where its format keeps any."""
    from pipeline.model_metadata import EMBEDDED_KEY

    if fmt.read_metadata is None:
        return None
    try:
        entries = fmt.read_metadata(path)
    except Exception:
        return None
    text = entries.get(EMBEDDED_KEY)
    if text is None:
        return None
    return json.loads(text if isinstance(text, str) else text.decode()).get("preprocessing")


def _manifest_preprocessing(path: Path) -> tuple[dict, Path] | None:
    """The preprocessing from a run's or a release's manifest.json beside the file that lists its sha256."""
    digest = None
    for folder in (path.parent, path.parent.parent):
        manifest = folder / "manifest.json"
        try:
            raw = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        digest = digest or sha256_file(path)
        for record in (raw.get("artifacts") or {}).values():
            if isinstance(record, dict) and record.get("sha256") == digest:
                found = record.get("preprocessing") or (raw.get("data") or {}).get("preprocessing")
                if found:
                    return found, manifest
    return None


def recorded_preprocessing(path: Path) -> tuple[dict, str] | None:
    """The preprocessing record edgepipe keeps for a file of a ``pipeline.formats`` format (a manifest
    ``Preprocessing``: mean, std, channels, resize, resize_mode, channel_order, …) and where it was found: the entry
    ``edgepipe release`` embedded in the file, else a run's or release's manifest.json beside it that lists the
    file's sha256; None for other files (Keras, SavedModel, PyTorch)."""
    fmt = format_for_suffix(path.suffix)
    if fmt is None:
        return None
    found = _embedded_preprocessing(path, fmt)
    if found is not None:
        return found, "metadata embedded in the file"
    beside = _manifest_preprocessing(path)
    return (beside[0], f"{beside[1]} (lists the file's sha256)") if beside else None


def _normalization(path: Path, fmt: str, given: TeacherInput) -> tuple[float, list[float], list[float], str]:
    """(pixel_scale, mean, std, where from): the file's own word first, else ``teacher.input``."""
    found, source = recorded_preprocessing(path) or (None, None)
    if found is not None:
        said = (found.get("pixel_scale", 1 / 255), found["mean"], found["std"])
        stated = (given.pixel_scale, given.mean, given.std)
        if given.mean is not None and not all(np.allclose(a, b) for a, b in zip(said, stated)):
            raise ModelError(
                f"the teacher {path.name} normalizes with pixel_scale {said[0]:.6g}, mean {said[1]}, std {said[2]} "
                f"({source}); teacher.input says {given.pixel_scale:.6g}, {given.mean}, {given.std}",
                "drop teacher.input.mean/std, or fix them",
            )
        return (*said, source)
    if given.mean is None:
        raise ModelError(
            f"the teacher {path.name} does not say how its input is normalized",
            "set teacher.input.mean and std (x = (pixel * pixel_scale - mean) / std; pixel_scale 1/255 by default), "
            "e.g. mean [0] and std [1] for pixels in [0, 1]",
        )
    return given.pixel_scale, list(given.mean), list(given.std), "config (teacher.input)"


def describe_teacher_file(
    path: Path, given: TeacherInput, splits: Splits, data_name: str, mapped: bool = False
) -> TeacherInterface:
    """Read the teacher file's interface, fill the gaps from ``given`` and check it against the data (its class
    count too, unless ``mapped``: a class map then picks the data's classes among its outputs)."""
    fmt = file_format(path)
    try:
        raw_input, output = _raw_specs(path, fmt)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot read the teacher {path}: {str(e).strip().splitlines()[0]}") from e
    layout, layout_from = _layout(raw_input, given.layout, path.name)
    table = format_labelled(fmt)
    if not (table is not None and table.quantized_input) and raw_input.dtype != "float32":
        raise ModelError(f"the teacher {path.name} takes {raw_input.dtype} input; {fmt} teachers are fed float32")
    pixel_scale, mean, std, source = _normalization(path, fmt, given)
    interface = TeacherInterface(
        format=fmt,
        runtime=table.runtime if table is not None else TENSORFLOW,
        input=raw_input.model_copy(update={"layout": layout}),
        output=output,
        layout_from=layout_from,
        pixel_scale=pixel_scale,
        mean=mean,
        std=std,
        normalization_from=source,
    )
    check_against_data(interface, splits, path.name, data_name, mapped)
    return interface


def check_against_data(
    interface: TeacherInterface, splits: Splits, name: str, data_name: str, mapped: bool = False
) -> None:
    """Channels, image size and (unless ``mapped`` by a class map) class count of the teacher must be the data's:
    a one-line error naming both."""
    channels, height, width = interface.chw
    c, h, w = splits.input_shape
    side = f"the data ({data_name}) gives {c}×{h}×{w} (C×H×W)"
    if isinstance(channels, int) and channels != c:
        raise DataError(
            f"the teacher {name} takes {channels}-channel images ({interface.layout} {interface.input.shape}); {side}",
            f"set data.channels: {channels}",
        )
    if any(isinstance(m, int) and m != d for m, d in ((height, h), (width, w))):
        raise DataError(
            f"the teacher {name} takes {height}×{width} images ({interface.layout} {interface.input.shape}); {side}",
            f"set data.image_size: [{height}, {width}]",
        )
    classes = interface.num_classes
    if not mapped and isinstance(classes, int) and classes != len(splits.classes):
        raise DataError(
            f"the teacher {name} outputs {classes} classes; the data ({data_name}) has {len(splits.classes)}",
            "set teacher.class_map to the model's labels file or to {class: output index}, or distill on data "
            "with the teacher's classes, labels 0..N-1 in its output order",
        )
    if len(interface.mean) not in (1, c):
        raise ModelError(f"teacher.input.mean has {len(interface.mean)} values for {c}-channel images")


def store_teacher_file(source: Path, folder: Path) -> Path:
    """Copy the teacher into the run (atomically); a SavedModel directory becomes a deterministic zip."""
    if file_format(source) != SAVED_MODEL:
        dest = folder / f"teacher{source.suffix}"
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
        return dest
    dest = folder / f"teacher{SAVED_MODEL_ARCHIVE}"
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(file.relative_to(source)), date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, file.read_bytes())
    return dest


def loadable_path(path: Path) -> Path:
    """The path a runtime loads: a stored SavedModel zip is unpacked once beside itself."""
    if not path.name.endswith(SAVED_MODEL_ARCHIVE):
        return path
    unpacked = path.with_name(path.name.removesuffix(".zip"))
    stamp = unpacked / ".sha256"
    digest = sha256_file(path)
    if not (stamp.is_file() and stamp.read_text() == digest):
        partial = unpacked.with_name(f".{unpacked.name}.{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(path) as archive:
            archive.extractall(partial)
        (partial / ".sha256").write_text(digest)
        shutil.rmtree(unpacked, ignore_errors=True)
        partial.rename(unpacked)
    return unpacked


def file_runner(path: Path, interface: TeacherInterface, threads: int | None) -> Runner:
    """The file on its own runtime, fed float NCHW in the teacher's normalization; returns float outputs."""
    table = format_labelled(interface.format)
    if table is not None:
        return table.cpu_runner(path, [interface.input], [interface.output], threads)
    return tensorflow_runner(loadable_path(path), interface.layout, threads)


def looks_like_probabilities(outputs: np.ndarray) -> bool:
    """Every row non-negative and summing to 1: the model ends in a softmax."""
    return bool((outputs >= 0).all() and np.allclose(outputs.sum(1), 1, atol=PROBABILITY_TOLERANCE))


class FileTeacher(nn.Module):
    """A teacher file on its own runtime as a parameterless module: run-normalized NCHW batch in, logits out.

    ``output_indices`` (set by :func:`pipeline.training.class_map.restrict_outputs`) keeps those of the file's
    ``source_outputs`` outputs, in that order, in the runner's logits and the forward's."""

    output_indices: list[int] | None = None
    source_outputs: int | None = None

    def __init__(self, path: Path, interface: TeacherInterface, run_mean: list[float], run_std: list[float]) -> None:
        super().__init__()
        self.path, self.interface = path, interface
        shape = (1, -1, 1, 1)
        run_mean, run_std = np.asarray(run_mean, np.float32), np.asarray(run_std, np.float32)
        mean, std = np.asarray(interface.mean, np.float32), np.asarray(interface.std, np.float32)
        # run input x = (p/255 - m_r)/s_r  →  pixel p = 255 (x s_r + m_r)  →  teacher input (p·scale - m_t)/s_t
        gain = 255 * interface.pixel_scale
        self._scale = (gain * run_std / std).reshape(shape)
        self._shift = ((gain * run_mean - mean) / std).reshape(shape)
        self._runners: dict[int | None, Runner] = {}

    def teacher_input(self, x: np.ndarray) -> np.ndarray:
        """The run's normalized NCHW batch in the teacher's normalization (still NCHW: the runner lays it out)."""
        return (x * self._scale + self._shift).astype(np.float32)

    def to_logits(self, outputs: np.ndarray) -> np.ndarray:
        """The file's outputs (N, source_outputs) as float logits of the kept outputs: log of probabilities (a
        softmax over all of the file's outputs), then the class map's columns."""
        outputs = outputs.reshape(len(outputs), -1).astype(np.float32)
        if self.interface.outputs == "probabilities":
            outputs = np.log(np.maximum(outputs, LOG_FLOOR))
        return outputs if self.output_indices is None else np.ascontiguousarray(outputs[:, self.output_indices])

    def runner(self, threads: int | None) -> Runner:
        """A runner fed the run's normalized NCHW batches (as every artifact of the run is), giving logits."""
        if threads not in self._runners:
            inner = file_runner(self.path, self.interface, threads)
            self._runners[threads] = fed(inner, self.teacher_input, self.to_logits)
        return self._runners[threads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.runner(None).predict(x.detach().float().cpu().numpy())
        return torch.from_numpy(logits).to(x.device)


def adopt_teacher_file(
    source: Path, given: TeacherInput, splits: Splits, data_name: str, folder: Path, mapped: bool = False
) -> FileTeacher:
    """Describe and check the teacher file (``mapped``: its outputs are picked by a class map), copy it into the
    run's ``folder`` and load it; what its outputs are (logits or probabilities) is settled on the first validation
    batch when ``given.outputs`` is auto."""
    interface = describe_teacher_file(source, given, splits, data_name, mapped)
    table = format_labelled(interface.format)
    if table is not None and interface.layout not in table.layouts:
        feeds = f"{table.runtime_label} is fed {table.layout} here"
        raise ModelError(f"the teacher {source.name} takes {interface.layout} input; {feeds}")
    stored = store_teacher_file(source, folder)
    teacher = FileTeacher(stored, interface, splits.mean, splits.std)
    outputs = given.outputs
    if outputs == "auto":
        first = teacher.runner(None).predict(splits.normalize(splits.val.x[:64]))
        outputs = "probabilities" if looks_like_probabilities(first) else "logits"
    teacher.interface = interface.model_copy(update={"outputs": outputs})
    return teacher


def load_file_teacher(path: Path, interface: dict, run_mean: list[float], run_std: list[float]) -> FileTeacher:
    """The teacher file a run stored, with the interface its manifest recorded."""
    return FileTeacher(path, TeacherInterface.model_validate(interface), run_mean, run_std)


def source_digest(path: Path) -> str:
    """sha256 of a teacher file; of a SavedModel directory, over its files' relative paths and digests."""
    if path.is_file():
        return sha256_file(path)
    listing = [[str(p.relative_to(path)), sha256_file(p)] for p in sorted(path.rglob("*")) if p.is_file()]
    return hash_json(listing)


def file_parameters(path: Path, interface: TeacherInterface) -> int:
    """Parameters of the teacher file: its format's count (onnx-tool's for ONNX, its constant tensors' elements for
    TFLite), or TensorFlow's count (Keras, SavedModel).

    Raises:
        ModelError: a file of a format that counts no parameters."""
    table = format_labelled(interface.format)
    if table is None:
        return tensorflow_parameters(loadable_path(path))
    if table.profile is None:
        raise ModelError(f"the teacher {path.name}: {table.label} files have no parameter count")
    return table.profile(path).params
