"""Built-in architectures: a teacher CNN and a ≥5× smaller, quantization-friendly student (ReLU, small pools)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import site
import sys
import sysconfig
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline import progress as view
from pipeline.errors import ModelError, first_line
from pipeline.io import atomic_path, sha256_file
from pipeline.registry import Registry

ARCHITECTURES: Registry = Registry("architecture")


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@ARCHITECTURES.register("teacher-cnn")
def teacher_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """VGG-style CNN, ~240k parameters."""
    return nn.Sequential(
        *_conv(in_channels, 32),
        nn.MaxPool2d(2),
        *_conv(32, 64),
        nn.MaxPool2d(2),
        *_conv(64, 128),
        *_conv(128, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


@ARCHITECTURES.register("student-cnn")
def student_cnn(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """Three-conv CNN, ~39k parameters at width 1 (6× fewer than the teacher): ReLU and 2×2 pools only, so int8
    keeps its accuracy. ``width`` scales every layer's channels (24/48/64 at 1)."""
    if width <= 0:
        raise ModelError(f"student-cnn width must be > 0, got {width}")
    c1, c2, c3 = (max(1, round(channels * width)) for channels in (24, 48, 64))
    return nn.Sequential(
        *_conv(in_channels, c1),
        nn.MaxPool2d(2),
        *_conv(c1, c2),
        nn.MaxPool2d(2),
        *_conv(c2, c3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c3, num_classes),
    )


def _neighbours_imported_elsewhere(path: Path) -> list[tuple[str, str]]:
    """(name, file) of each module that the model file at ``path`` imports at the top of a name (``import helpers``,
    ``from helpers import x``), that sits beside it (``helpers.py`` or ``helpers/``), and that Python has already
    imported from another file — another model file's helper of the same name, or edgepipe's own ``pipeline``:
    the import gets that module, not the neighbour."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return []  # exec reports it
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    clashes = []
    for name in sorted(names):
        origin = getattr(sys.modules.get(name), "__file__", None)
        files = (path.parent / f"{name}.py", path.parent / name / "__init__.py")
        neighbour = next((file for file in files if file.is_file()), None)
        if origin and neighbour and Path(origin).resolve() != neighbour.resolve():
            clashes.append((name, origin))
    return clashes


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    """``package.module:factory`` or ``path/to/file.py:factory`` → the factory callable."""
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ModelError(
                    f"model file {path.absolute()} does not exist (from arch {spec!r})",
                    f"a relative path is taken from the directory edgepipe starts in ({Path.cwd()}); give the "
                    "file's path from there, or an absolute one",
                )
            folder = str(path.resolve().parent)
            if folder not in sys.path:  # its sibling modules import, as when Python runs the file as a script
                sys.path.insert(0, folder)
            for name, origin in _neighbours_imported_elsewhere(path):
                view.warn(
                    f"edgepipe: warning: {path} imports {name}, which sits beside it, but a module {name} is already "
                    f"imported from {origin}: the file gets that one; give its own module a name of its own"
                )
            loader_spec = importlib.util.spec_from_file_location(f"edgepipe_user_{path.stem}", path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[loader_spec.name] = module  # importable by name, as torch.cond and pickling need
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[loader_spec.name]
                raise
        else:
            module = importlib.import_module(module_name)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"cannot import {module_name!r} for arch {spec!r}: {first_line(e)}",
            "a module is imported from the Python path: install its package, or set PYTHONPATH to the folder that "
            "holds it"
            if isinstance(e, ModuleNotFoundError)
            else None,
        ) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        defined = sorted(
            name
            for name, value in vars(module).items()
            if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        )
        raise ModelError(
            f"{module_name!r} has no callable {attr!r} (arch {spec!r})",
            f"name after ':' a function or class that returns the nn.Module; {module_name} defines "
            + (", ".join(defined[:8]) if defined else "none"),
        )
    return factory


def _raised_at(error: BaseException) -> str:
    """`` (at FILE:LINE)``: the innermost frame of ``error``'s traceback in the user's own code — outside torch,
    edgepipe, the standard library and installed packages — or '' when there is none."""
    folders = [
        Path(torch.__file__).parent,
        Path(__file__).parents[1],
        *(sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")),
        *site.getsitepackages(),
    ]
    libraries = tuple(str(folder).rstrip(os.sep) + os.sep for folder in folders)
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if not frame.filename.startswith(libraries)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _said(error: BaseException) -> str:
    """``Type: first line`` of ``error`` (``Type`` alone when it says nothing, or when its ``__str__`` raises)."""
    try:
        return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
    except Exception:
        return type(error).__name__


def forward_failure(what: str, shape: tuple[int, ...], error: Exception) -> ModelError:
    """The one line for a model whose forward (or a training step through it) raised on a batch of ``shape``: the
    exception's type and first line, and the innermost frame of the user's own code when there is one.

    Args:
        what: the failure's subject, e.g. "the student's forward fails on the data's input".
        shape: the batch's shape (N, C, H, W).
        error: what the forward raised.
    """
    where = _raised_at(error)
    takes = f"{shape[1]}-channel images of {shape[2]}×{shape[3]}" if len(shape) == 4 else f"inputs of {shape}"
    return ModelError(
        f"{what} {shape}: {_said(error)}{where}",
        f"fix the model's code at that line (it gets {takes} here)" if where else f"check that the model takes {takes}",
    )


@dataclass(frozen=True)
class ModelLibrary:
    """A model library whose architectures are named ``<library>:<model name>`` in ``arch``.

    ``builder`` (an attribute of module ``module``) takes the model name and keyword arguments; ``local_weights``
    are the keyword arguments that keep it from downloading weights (the weights come from the checkpoint)."""

    module: str
    builder: str
    local_weights: dict
    channels_kwarg: str | None = None


MODEL_LIBRARIES: dict[str, ModelLibrary] = {
    "torchvision": ModelLibrary("torchvision.models", "get_model", {"weights": None}),
    "timm": ModelLibrary("timm", "create_model", {"pretrained": False}, channels_kwarg="in_chans"),
}


def _library_of(arch: str) -> str | None:
    library = arch.partition(":")[0]
    return library if library in MODEL_LIBRARIES else None


def _library_builder(library: str, arch: str) -> Callable[..., nn.Module]:
    """The library's model builder, imported now so that a library that cannot import fails before any training."""
    spec = MODEL_LIBRARIES[library]
    try:
        module = importlib.import_module(spec.module)
    except Exception as e:  # a torchvision built for another torch raises RuntimeError, not ImportError
        raise ModelError(
            f"arch {arch!r} needs {library}, which does not import here: {first_line(e)}", _library_hint(library)
        ) from e
    return getattr(module, spec.builder)


def _library_hint(library: str) -> str:
    """How to get ``library`` importing next to this torch (timm imports torchvision, so it fails with it)."""
    cpu = "+cpu" in torch.__version__
    torchvision = (
        f"the torchvision built for torch {torch.__version__} (PyPI's torchvision needs PyPI's CUDA torch; with a "
        "+cpu torch take it from PyTorch's CPU wheel index)"
    )
    if library == "timm":
        situation = "timm imports torchvision when it is imported" + (
            ", and torchvision does not import next to this CPU torch" if cpu else ""
        )
        return f"{situation}; install {torchvision} and timm, or give the architecture as file.py:factory"
    return f"install {torchvision} (pip install 'edgepipe[{library}]'), or give the architecture as file.py:factory"


def _build_library_model(arch: str, in_channels: int, num_classes: int, kwargs: dict) -> nn.Module:
    """``torchvision:<name>`` / ``timm:<name>``: the library's builder, with ``num_classes`` (and the input channels
    where the library takes them) unless ``kwargs`` set them, and never downloaded weights."""
    library, _, name = arch.partition(":")
    spec = MODEL_LIBRARIES[library]
    builder = _library_builder(library, arch)
    kwargs.setdefault("num_classes", num_classes)
    if spec.channels_kwarg:
        kwargs.setdefault(spec.channels_kwarg, in_channels)
    try:
        model = builder(name, **kwargs, **spec.local_weights)
    except Exception as e:
        raise ModelError(
            f"{library} cannot build {name!r} (arch {arch!r}) with {sorted(kwargs)}: {first_line(e)}",
            f"check the model name and arch_kwargs against {library}'s documentation",
        ) from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(arch: str, in_channels: int, num_classes: int, kwargs: dict | None = None) -> nn.Module:
    """A registered architecture, a library model ``torchvision:<name>`` / ``timm:<name>`` (see
    :data:`MODEL_LIBRARIES`), or a user factory named ``module:factory`` / ``file.py:factory``.

    A user factory gets ``kwargs`` plus ``in_channels``/``num_classes`` when its signature takes them.

    Raises:
        ModelError: the architecture is unknown, its library or file does not import, or it rejects the arguments.
    """
    kwargs = dict(kwargs or {})
    if ":" not in arch:
        return ARCHITECTURES.get(arch)(in_channels, num_classes, **kwargs)
    if _library_of(arch):
        return _build_library_model(arch, in_channels, num_classes, kwargs)
    factory = _import_factory(arch)
    accepted = inspect.signature(factory).parameters
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if name in accepted:
            kwargs.setdefault(name, value)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ModelError(f"arch {arch!r} rejected its arguments {sorted(kwargs)}: {e}") from e
    except Exception as e:  # the factory's own failure
        where = _raised_at(e)
        hint = "fix its code at that line" if where else None
        raise ModelError(f"arch {arch!r} failed to build the model: {_said(e)}{where}", hint) from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


class ExportedTeacher(nn.Module):
    """A ``torch.export`` program (or a TorchScript one, for :func:`select_logits`) as a module; a program's graph
    has no train/eval switch, so that is a no-op here."""

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def forward(self, x):
        return self.program(x)

    def train(self, mode: bool = True) -> "ExportedTeacher":
        self.training = mode
        return self


def describe_returns(result: object) -> str:
    """What a forward returned, in words: "one tensor", "tuple of 2", "dict with keys ['logits', 'features']"."""
    if isinstance(result, torch.Tensor):
        return "one tensor"
    if isinstance(result, (tuple, list)):
        return f"{type(result).__name__} of {len(result)}"
    if isinstance(result, dict):
        return f"dict with keys {list(result)}"
    return type(result).__name__


def _shapes(result: tuple | list | dict) -> str:
    values = result.values() if isinstance(result, dict) else result
    return ", ".join(str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__ for v in values)


def pick_output(result: object, output: int | str, key: str = "the logits output") -> torch.Tensor:
    """The logits among a forward's ``result``: the tensor itself, ``result[output]`` of a tuple/list, or of a dict
    its key ``output`` (a name) or its ``output``-th value (an index).

    Raises:
        ModelError: ``output`` is out of range or not a key, picks a non-tensor, or ``result`` is none of these.
    """
    returns = describe_returns(result)
    fix = f"set {key} to an index (tuple) or key (dict) of the logits"
    if isinstance(result, torch.Tensor):
        if output == 0:
            return result
        raise ModelError(f"{key} is {output!r} but the model returns one tensor", f"remove {key} (default 0)")
    if isinstance(result, (tuple, list, dict)):
        names = list(result) if isinstance(result, dict) else list(range(len(result)))
        if isinstance(output, int) and output < len(names):
            chosen = result[names[output]]
        elif isinstance(result, dict) and output in result:
            chosen = result[output]
        else:
            raise ModelError(f"{key} is {output!r} but the model returns a {returns} ({_shapes(result)})", fix)
        if isinstance(chosen, torch.Tensor):
            return chosen
        raise ModelError(
            f"{key} {output!r} picks a {type(chosen).__name__}, not a tensor; the model returns a {returns}", fix
        )
    raise ModelError(f"the model returns a {returns}, not a tensor, tuple or dict of tensors", "return the logits")


class LogitsOutput(nn.Module):
    """Placed in front of a model's own class by :func:`select_logits`: ``forward`` returns the selected output.

    ``forward`` takes the one input batch every edgepipe model takes (exporters bind inputs to its signature)."""

    logits_output: int | str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pick_output(super().forward(x), self.logits_output)


_SELECTING: dict[type, type] = {}


def select_logits(model: nn.Module, output: int | str) -> nn.Module:
    """``model`` (in place) with a ``forward`` that returns only its output ``output`` (see :func:`pick_output`).

    The model's class becomes a subclass of its own class and :class:`LogitsOutput`, so module names (feature
    taps, pruning), state_dict keys (checkpoints), copies and every exporter see the model itself, with one output.
    A TorchScript program, whose class cannot be extended, is wrapped in a module first."""
    if isinstance(model, torch.jit.ScriptModule):
        model = ExportedTeacher(model)
    cls = type(model)
    if not isinstance(model, LogitsOutput):
        if cls not in _SELECTING:
            namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
            _SELECTING[cls] = type(cls.__name__, (LogitsOutput, cls), namespace)
        model.__class__ = _SELECTING[cls]
    model.logits_output = output
    return model


def outputs_record(result: object, output: int | str) -> dict | None:
    """What the manifest says about a model's outputs: None for a model that returns one tensor."""
    if isinstance(result, torch.Tensor):
        return None
    return {"model_returns": describe_returns(result), "selected": output, "exported": "logits only"}


def load_program(path: Path) -> nn.Module:
    """A teacher saved as a whole program: TorchScript (``torch.jit.save``) or ``torch.export`` (.pt2)."""
    try:
        if path.suffix == ".pt2":
            return ExportedTeacher(torch.export.load(str(path)).module())
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:
        raise ModelError(f"cannot load program {path}: {str(e).strip().splitlines()[0]}") from e


def is_program(path: Path) -> bool:
    """True for TorchScript archives and torch.export files (not state_dict checkpoints)."""
    if path.suffix == ".pt2":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def arch_fingerprint(arch: str) -> dict:
    """What identifies an architecture for caching: its name, plus the source file's sha256 for user factories."""
    module_name = arch.rpartition(":")[0]
    if not module_name:
        return {"arch": arch}
    library = _library_of(arch)
    if library:
        try:
            return {"arch": arch, "library_version": importlib.metadata.version(library)}
        except importlib.metadata.PackageNotFoundError:
            return {"arch": arch, "library_version": None}
    if module_name.endswith(".py"):
        origin = module_name
    else:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec and spec.origin else None
    source = Path(origin) if origin else None
    return {"arch": arch, "source_sha256": sha256_file(source) if source and source.is_file() else None}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    """Write ``{state_dict, meta}`` atomically (temp file, then rename); the same weights give the same bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, not the path: torch.save names the zip's root folder after the file (here a random
        # temp name), so the same weights would give different bytes; a file object gets the fixed "archive".
        torch.save({"state_dict": model.state_dict(), "meta": meta}, f)


def load_checkpoint(path: Path, arch: str, in_channels: int, num_classes: int, kwargs: dict | None = None) -> nn.Module:
    """Load a state_dict checkpoint (``weights_only=True``) into ``arch``; mismatches name the first bad keys."""
    if not path.is_file():
        raise ModelError(f"checkpoint {path.absolute()} does not exist", "fix the checkpoint path in the config")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        if "Weights only load failed" in str(e):
            raise ModelError(
                f"checkpoint {path} is a pickled object (e.g. a whole model saved by torch.save(model)), which "
                "edgepipe does not unpickle: it loads checkpoints weights_only",
                "save torch.save(model.state_dict(), path) instead, or the model as a TorchScript program "
                "(torch.jit.save) or a torch.export .pt2",
            ) from e
        raise ModelError(
            f"checkpoint {path} is unreadable or corrupt: {first_line(e)}",
            "re-create it with torch.save(model.state_dict(), path)",
        ) from e
    state = state_dict_of(payload)
    if state is None:
        raise ModelError(
            f"checkpoint {path} holds no state_dict",
            "save torch.save(model.state_dict(), path), or a dict holding it under 'state_dict' or 'model'",
        )
    model = build_model(arch, in_channels, num_classes, kwargs)
    _check_state(model.state_dict(), state, path, arch)
    model.load_state_dict(state)
    return model.eval()


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts wrap a state_dict
STATE_DICT_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile


def state_dict_of(payload: object) -> dict | None:
    """The state_dict in a loaded checkpoint: the payload itself (tensors by name), or the dict under its first
    key of :data:`STATE_DICT_KEYS` (``{'state_dict': sd, 'meta': …}``, ``{'model': sd, 'optimizer': …}``), with a
    prefix of :data:`STATE_DICT_PREFIXES` removed when every key has it; None when the payload is not a dict."""
    if not isinstance(payload, dict):
        return None
    state = next((payload[key] for key in STATE_DICT_KEYS if isinstance(payload.get(key), dict)), payload)
    state = {key: value for key, value in state.items() if isinstance(key, str)}
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in STATE_DICT_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state, stripped = {key.removeprefix(prefix): value for key, value in state.items()}, True
    return state


def _check_state(expected: dict, found: dict, path: Path, arch: str) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {path} does not fit {arch}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}",
            "give the architecture (and arch_kwargs) the checkpoint was saved from",
        )
    for key, tensor in expected.items():
        if tuple(found[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"checkpoint {path} does not fit {arch}: {key} is {tuple(found[key].shape)} in the file, "
                f"{tuple(tensor.shape)} in the model",
                "check the class count and input channels",
            )
