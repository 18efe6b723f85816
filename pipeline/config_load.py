"""Reading a run config: YAML (or a mapping) into a :class:`~pipeline.config.RunConfig`, overrides applied,
checked against the registries it names (targets, losses, teacher file formats), and its files made absolute.

The config models (``pipeline.config``) check structure only and import no registry; the checks that need one
live here, so no import cycle runs through the config.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.config import RunConfig, TeacherInput
from pipeline.data.splits import SOURCES
from pipeline.errors import ConfigError
from pipeline.manifest import QAT_SUFFIX


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {where!r}"
    return f"config key {where!r}: {first['msg'].removeprefix('Value error, ')}"


def parse_config(raw: dict) -> RunConfig:
    """Validate a mapping into a RunConfig, then check it against the registries (:func:`check_config`); the error
    names the first offending key. The structure comes first and imports nothing heavy, so a misspelt key is
    reported within a second.

    Raises:
        ConfigError: an unknown key, a wrong type or value, or a name no registry holds.
    """
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e), "see examples/config.yaml for every key") from None
    check_config(config)
    return config


def check_config(config: RunConfig) -> None:
    """The checks that need the registries the config names into: every target exists (export, prune's measure,
    the gate's per-target limits), every loss takes exactly its parameters, and a teacher file (ONNX, TFLite,
    Keras) is distilled with logit losses only. They import torch (the losses), so they run after the structure.

    Raises:
        ConfigError: the first name or parameter that does not fit, naming it.
    """
    from pipeline.training.losses import check_loss_params
    from targets import TARGETS

    for name in config.export.targets:
        TARGETS.get(name)
    if config.prune is not None:
        TARGETS.get(config.prune.measure.target)
    for name in config.gate.targets:
        TARGETS.get(name.removesuffix(QAT_SUFFIX))
    for spec in config.distill.losses if config.distill else []:
        check_loss_params(spec.name, spec.params)
    _check_file_teacher(config)


def _check_file_teacher(config: RunConfig) -> None:
    """``teacher.input`` only with a teacher file, and no loss tapping the inner layers of one."""
    teacher = config.teacher
    if teacher is None:
        return
    from pipeline.training.losses import reads_teacher_features
    from pipeline.training.teacher_files import file_format

    fmt = file_format(Path(teacher.checkpoint)) if teacher.checkpoint not in (None, "", "auto") else None
    feature_losses = [spec.name for spec in config.kd.losses if reads_teacher_features(spec.name)]
    if not fmt and teacher.input != TeacherInput():
        raise ConfigError(
            "config: teacher.input describes an ONNX, TFLite or Keras teacher file; "
            f"teacher.checkpoint {teacher.checkpoint!r} is not one (drop teacher.input)"
        )
    if fmt and feature_losses:
        raise ConfigError(
            f"config: loss {feature_losses[0]!r} reads the teacher's inner layers, but the teacher is a {fmt} file run "
            "in its own runtime, whose layers PyTorch cannot tap; use logit losses (hinton, mse) with it"
        )


def load_config(path: Path | None, overrides: dict | None = None, absolute: bool = False) -> RunConfig:
    """Read YAML at ``path`` (the embedded default when None) and apply dotted-key overrides; ``absolute`` (a
    config starting a run): the files it names, relative to the current directory, made absolute (see
    :func:`absolute_paths`), so the run's saved config.yaml works from any directory."""
    raw: dict = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", "pass the path of a YAML config")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of config sections")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    config = parse_config(raw)
    return absolute_paths(config) if absolute else config


def _absolute(path: str | None) -> str | None:
    return str(Path(path).absolute()) if path else path


def _absolute_arch(arch: str | None) -> str | None:
    """``file.py:factory`` with the file's path absolute; other architectures as they are."""
    module, colon, factory = (arch or "").rpartition(":")
    return f"{_absolute(module)}{colon}{factory}" if colon and module.endswith(".py") else arch


def _absolute_class_map(spec: str | dict | None) -> str | dict | None:
    return _absolute(spec) if isinstance(spec, str) else spec


def absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with every file it names absolute, taken from the current directory: data.source / data.test
    when paths (not built-in names), teacher/student checkpoints (not auto), ``file.py:factory`` architectures
    and class-map label files. A config naming no relative file comes back equal (same dump, same artifact ids)."""
    data = config.data
    update: dict = {
        "data": data.model_copy(
            update={
                "source": data.source if data.source in SOURCES else _absolute(data.source),
                "test": _absolute(data.test),
            }
        ),
        "student": config.student.model_copy(
            update={
                "arch": _absolute_arch(config.student.arch),
                "checkpoint": _absolute(config.student.checkpoint),
                "class_map": _absolute_class_map(config.student.class_map),
            }
        ),
    }
    if config.teacher is not None:
        teacher = config.teacher
        checkpoint = teacher.checkpoint if teacher.checkpoint == "auto" else _absolute(teacher.checkpoint)
        update["teacher"] = teacher.model_copy(
            update={
                "arch": _absolute_arch(teacher.arch),
                "checkpoint": checkpoint,
                "class_map": _absolute_class_map(teacher.class_map),
            }
        )
    if config.distill is not None:
        update["distill"] = config.distill.model_copy(update={"arch": _absolute_arch(config.distill.arch)})
    return config.model_copy(update=update)
