"""Class maps: which of a model's outputs are the data's classes, e.g. 10 of an ImageNet model's 1000.

A class map is given as ``teacher.class_map`` / ``student.class_map``: a labels file naming the model's outputs in
order (one name per line), or a mapping {data class name: output index}. It resolves to one output index per data
class, in the data's class order; :func:`restrict_outputs` makes the model answer with those outputs alone, so
training, evaluation and every exported file see one logit per data class.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline.config import ClassMap
from pipeline.errors import ModelError
from pipeline.io import sha256_file
from pipeline.training.models import ExportedTeacher, LogitsOutput, state_dict_of

SHOWN = 3  # missing classes named in an error


def _key(where: str) -> str:
    return f"{where}.class_map"


def _role(where: str) -> str:
    """The model a config section describes: ``distill`` trains the student."""
    return "student" if where == "distill" else where


def read_labels_file(path: Path, where: str) -> list[str]:
    """The output names of a labels file, one per line, stripped.

    Raises:
        ModelError: the file is missing or unreadable, or has a blank line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(
            f"cannot read the labels file {path} ({_key(where)}): {getattr(e, 'strerror', None) or e}",
            f"set {_key(where)} to a UTF-8 text file naming the model's outputs in order, one per line",
        ) from e
    names = [line.strip() for line in lines]
    blank = next((number for number, name in enumerate(names, 1) if not name), None)
    if blank is not None:
        raise ModelError(
            f"the labels file {path} ({_key(where)}) has a blank line {blank}",
            "name every output of the model, one per line, with no blank lines",
        )
    if not names:
        raise ModelError(f"the labels file {path} ({_key(where)}) is empty", "name the model's outputs, one per line")
    return names


def _find(name: str, labels: list[str], path: Path, where: str) -> int | None:
    """The output index named ``name``: exact match first, then a unique case-insensitive one; None when absent."""
    exact = [i for i, label in enumerate(labels) if label == name]
    folded = [i for i, label in enumerate(labels) if label.casefold() == name.casefold()]
    for candidates in (exact, folded):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise ModelError(
                f"data class {name!r} names outputs {candidates[:SHOWN]} in the labels file {path} ({_key(where)})",
                f"set {_key(where)} to a mapping {{class: output index}} to pick one",
            )
    return None


def _missing(missing: list[str], known: list[str], source: str, where: str) -> ModelError:
    """The error for data classes the class map does not name, with close matches."""
    shown = []
    for name in missing[:SHOWN]:
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
        shown.append(f"{name!r}" + (f" (close: {', '.join(repr(c) for c in close)})" if close else ""))
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    return ModelError(
        f"{len(missing)} data class(es) not in {source}: {', '.join(shown)}{more}",
        f"name every data class in {_key(where)} (names compare after strip, case-insensitively when unique)",
    )


def _from_labels(path: Path, data_classes: list[str], num_outputs: int, where: str) -> list[int]:
    labels = read_labels_file(path, where)
    if len(labels) != num_outputs:
        raise ModelError(
            f"the labels file {path} ({_key(where)}) names {len(labels)} outputs, the {_role(where)} gives "
            f"{num_outputs}",
            "use the labels file of this model (one line per output, in output order)",
        )
    found = {name: _find(name.strip(), labels, path, where) for name in data_classes}
    missing = [name for name, index in found.items() if index is None]
    if missing:
        raise _missing(missing, labels, f"the labels file {path}", where)
    return [found[name] for name in data_classes]


def _from_mapping(mapping: dict[str, int], data_classes: list[str], num_outputs: int, where: str) -> list[int]:
    unknown = [name for name in mapping if name not in data_classes]
    if unknown:
        close = difflib.get_close_matches(unknown[0], data_classes, n=1, cutoff=0.6)
        raise ModelError(
            f"{_key(where)} names {unknown[0]!r}, which is not a data class",
            f"did you mean {close[0]!r}?" if close else f"the data's classes: {', '.join(data_classes[:10])}",
        )
    missing = [name for name in data_classes if name not in mapping]
    if missing:
        raise _missing(missing, list(mapping), _key(where), where)
    indices = [mapping[name] for name in data_classes]
    wrong = next((i for i in indices if not 0 <= i < num_outputs), None)
    if wrong is not None:
        name = data_classes[indices.index(wrong)]
        raise ModelError(
            f"{_key(where)} maps {name!r} to output {wrong!r}; the {_role(where)} gives outputs 0..{num_outputs - 1}",
            "give each data class the index of its output",
        )
    return indices


def resolve_class_map(spec: ClassMap, data_classes: list[str], num_outputs: int, where: str) -> list[int] | None:
    """The model's output index of each data class, in the data's class order.

    Args:
        spec: a labels file path (the model's output names in order), a mapping {data class: output index}, or
            empty (None, "", {}): the model must then give one output per data class, in the data's order.
        data_classes: the data's class names in label order.
        num_outputs: how many logits the model gives per image.
        where: the config section (teacher, student, distill) named in errors.

    Returns:
        One output index per data class, or None when the model's outputs already are the data's classes in order.

    Raises:
        ModelError: a class is not found, an index is out of range, two classes share an output, or (no map) the
            model's output count is not the class count.
    """
    if not spec:
        if num_outputs != len(data_classes):
            raise ModelError(
                f"the {_role(where)} gives {num_outputs} outputs, the data has {len(data_classes)} classes",
                f"set {_key(where)} to the model's labels file or to {{class: output index}}, "
                "or check the model's class count and the data source",
            )
        return None
    if isinstance(spec, str):
        indices = _from_labels(Path(spec), data_classes, num_outputs, where)
    else:
        indices = _from_mapping(spec, data_classes, num_outputs, where)
    seen: dict[int, str] = {}
    for name, index in zip(data_classes, indices):
        if index in seen:
            raise ModelError(
                f"{_key(where)} maps data classes {seen[index]!r} and {name!r} to the same output {index}",
                "give each data class its own output",
            )
        seen[index] = name
    return None if indices == list(range(num_outputs)) else indices


class OutputSubset(LogitsOutput):
    """Placed in front of a model's own class by :func:`restrict_outputs`: ``forward`` returns the logits of the
    outputs ``output_indices`` only (after the selection of :class:`LogitsOutput`, for multi-output models)."""

    output_indices: list[int]
    output_index: torch.Tensor  # the same as a constant tensor (no buffer: state_dict keys stay the model's own)
    source_outputs: int | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits.index_select(1, self.output_index.to(logits.device))  # one Gather in the exported graph


_RESTRICTING: dict[type, type] = {}


def restrict_outputs(model: nn.Module, indices: list[int], source_outputs: int | None = None) -> nn.Module:
    """``model`` (in place) answering ``logits[:, indices]``: its own forward, or its selected logits output.

    As with :func:`pipeline.training.models.select_logits`, the model's class becomes a subclass of its own class, so
    module
    names, state_dict keys and exporters see the model itself; the restriction is part of its forward, so an
    exported file gives one logit per data class. A teacher file (ONNX, TFLite, Keras) restricts its runner's
    outputs. Restricting a restricted model composes the two.

    Args:
        model: a module whose forward returns (or whose selected output is) logits of shape (N, source_outputs).
        indices: the outputs kept, in the order they are returned.
        source_outputs: the model's own output count, recorded with the map (see :func:`class_map_info`).
    """
    from pipeline.training.teacher_files import FileTeacher

    indices = [int(i) for i in indices]
    if isinstance(model, FileTeacher):
        previous = model.output_indices
        model.output_indices = indices if previous is None else [previous[i] for i in indices]
        model.source_outputs = model.source_outputs or source_outputs
        return model
    if isinstance(model, torch.jit.ScriptModule):
        model = ExportedTeacher(model)
    if isinstance(model, OutputSubset):
        indices = [model.output_indices[i] for i in indices]
        source_outputs = model.source_outputs or source_outputs
    cls = type(model)
    if isinstance(model, LogitsOutput):  # select_logits' class or ours: extend the model's own class instead
        cls = cls.__bases__[-1]
    else:
        model.logits_output = 0
    if cls not in _RESTRICTING:
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        _RESTRICTING[cls] = type(cls.__name__, (OutputSubset, cls), namespace)
    model.__class__ = _RESTRICTING[cls]
    model.output_indices, model.source_outputs = indices, source_outputs
    model.output_index = torch.tensor(indices, dtype=torch.int64)
    return model


def output_indices(model: nn.Module) -> list[int] | None:
    """The outputs a restricted model keeps (see :func:`restrict_outputs`); None when not restricted."""
    from pipeline.training.teacher_files import FileTeacher

    return model.output_indices if isinstance(model, (OutputSubset, FileTeacher)) else None


def class_map_info(model: nn.Module, data_classes: list[str]) -> dict:
    """The manifest's record of a restricted model: ``class_map`` {data class: source output index} and
    ``source_outputs`` (the model's own output count); empty for a model whose outputs are the data's classes."""
    indices = output_indices(model)
    if indices is None:
        return {}
    return {"class_map": dict(zip(data_classes, indices)), "source_outputs": model.source_outputs}


def restrict_as_recorded(model: nn.Module, info: dict, data_classes: list[str]) -> nn.Module:
    """``model`` restricted by a record's ``class_map`` (see :func:`class_map_info`); unchanged without one."""
    mapping = info.get("class_map")
    if not mapping:
        return model
    return restrict_outputs(model, [mapping[name] for name in data_classes], info.get("source_outputs"))


def class_map_key(spec: ClassMap) -> dict | None:
    """What identifies a class map for caching: the mapping, or the labels file's path and sha256; None: no map."""
    if not spec:
        return None
    if isinstance(spec, dict):
        return {"mapping": dict(spec)}
    path = Path(spec)
    return {"labels_file": spec, "sha256": sha256_file(path) if path.is_file() else None}


def outputs_to_build(
    spec: ClassMap, classes: int, checkpoint: Path | None, build: Callable[[int], nn.Module], where: str
) -> int:
    """How many outputs an architecture is built with: ``classes`` (one per data class) without a class map; with
    one, the model's own count: the labels file's lines, else what the state_dict ``checkpoint``'s classifier holds
    (compared with ``build(classes)``), else ``classes`` (a factory that fixes its own count)."""
    if not spec:
        return classes
    if isinstance(spec, str):
        path = Path(spec)
        return len(read_labels_file(path, where)) if path.is_file() else classes  # a missing file: resolve says so
    if checkpoint is None or not checkpoint.is_file():
        return classes
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types; loading the checkpoint itself reports it
        return classes
    state = state_dict_of(payload)
    return (checkpoint_outputs(state, build(classes)) if isinstance(state, dict) else None) or classes


def checkpoint_outputs(state: dict, model: nn.Module) -> int | None:
    """The output count a state_dict was trained with, from the tensors whose shapes differ from ``model``'s
    (built for another class count) only in their first dimension — a classifier's weight and bias; None when
    the shapes do not say (no difference, or differences elsewhere)."""
    expected = model.state_dict()
    counts = set()
    for key, tensor in expected.items():
        found = state.get(key)
        if not isinstance(found, torch.Tensor) or tuple(found.shape) == tuple(tensor.shape):
            continue
        if found.ndim != tensor.ndim or tuple(found.shape[1:]) != tuple(tensor.shape[1:]):
            return None
        counts.add(int(found.shape[0]))
    return counts.pop() if len(counts) == 1 else None
