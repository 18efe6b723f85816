"""Reading a run config: YAML (or a mapping) into a :class:`~pipeline.config.RunConfig`, overrides applied,
checked against the registries it names (targets and their options, calibration methods and theirs, losses, teacher
file formats), and its files made absolute.

The config models (``pipeline.config``) check structure only and import no registry; the checks that need one
live here, so no import cycle runs through the config.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config import CalibrationConfig, ExportConfig, RunConfig, TeacherInput
from pipeline.data.splits import SOURCES
from pipeline.errors import ConfigError
from pipeline.manifest import QAT_SUFFIX

UNION_MEMBER = re.compile(r"^(bool|int|float|str|constrained-\w+|(literal|function-\w+|list|dict|nullable)\[.*\])$")


def _config_error(
    error: ValidationError, where: tuple[str, ...] = (), model: type[BaseModel] = RunConfig
) -> ConfigError:
    """The first error of ``error`` as one ConfigError naming its dotted key (under ``where``, the section validated
    into ``model``). A value that fits no member of a union (``2 | 'auto'``) gets every member's expectation; an
    unknown key gets its section's keys, and a close one as the hint."""
    errors = error.errors()
    loc = _field_path(errors[0]["loc"])
    key = ".".join(str(part) for part in (*where, *loc)) or "(top level)"
    if errors[0]["type"] == "extra_forbidden":
        valid = _keys_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        listed = f"; valid: {', '.join(valid)}" if valid else ""
        return ConfigError(
            f"unknown config key {key!r}{listed}", f"did you mean {close[0]!r}?" if close else CONFIG_HINT
        )
    messages = [e["msg"] for e in errors if _field_path(e["loc"]) == loc]
    if not all(message.startswith("Input should be ") for message in messages):  # a validator's own sentence
        return ConfigError(f"config key {key!r}: {messages[0].removeprefix('Value error, ')}", CONFIG_HINT)
    expected = " or ".join(dict.fromkeys(_expectation(message) for message in messages))
    given = errors[0].get("input")
    got = (
        f"; got {str(given).lower() if isinstance(given, bool) else repr(given)}"
        if not isinstance(given, (dict, list))
        else ""
    )
    return ConfigError(f"config key {key!r} should be {expected}{got}", CONFIG_HINT)


def _field_path(loc: tuple) -> tuple:
    """``loc`` without pydantic's union-member labels (``constrained-int``, ``literal['auto']``)."""
    return tuple(part for part in loc if not (isinstance(part, str) and UNION_MEMBER.match(part)))


def _expectation(message: str) -> str:
    """A pydantic "Input should be …" message as what the value should be, in the config's words: "a valid integer"
    (no parser detail after a comma, no internal model class names)."""
    message = message.removeprefix("Input should be ")
    message = re.sub(r"a valid dictionary or instance of \w+", "a mapping of keys", message)
    return message.split(", unable to")[0]


def _keys_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys of the config section at ``path`` (its model's fields), or [] where the path leaves the models."""
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        inner = (
            [a for a in _flatten(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)] if field else []
        )
        if not inner:
            return []
        model = inner[0]
    return list(model.model_fields)


def _flatten(annotation) -> list:
    """``annotation`` and every type argument inside it (``X | None`` → X, None)."""
    return [annotation, *(inner for arg in typing.get_args(annotation) for inner in _flatten(arg))]


CONFIG_HINT = "see examples/config.yaml for every key"


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
        raise _config_error(e) from None
    return check_config(config)


def check_config(config: RunConfig) -> RunConfig:
    """The checks that need the registries the config names into: every target exists (export, prune's measure,
    the gate's per-target limits), each target's and calibration method's options fit the model it declares,
    every loss takes exactly its parameters, and a teacher file (ONNX, TFLite, Keras) is distilled with logit losses
    only. They import torch (the losses), so they run after the structure.

    Returns:
        ``config`` completed from the registries: ``export.targets`` the default list when not given, every
        target's options (``export.onnx_int8``) and every method's (``calibration.percentile``) validated, defaults
        filled in — what a run saves as its config.yaml.

    Raises:
        ConfigError: the first name, key or value that does not fit, naming it.
    """
    from pipeline.training.losses import check_loss_params

    config = config.model_copy(
        update={"export": _checked_export(config.export), "calibration": _checked_calibration(config.calibration)}
    )
    if config.prune is not None:
        _target(config.prune.measure.target, "prune.measure.target")
    for name in config.gate.targets:
        _target(name.removesuffix(QAT_SUFFIX), f"gate.targets.{name}")
    for index, spec in enumerate(config.distill.losses if config.distill else []):
        try:
            check_loss_params(spec.name, spec.params)
        except ConfigError as e:
            raise ConfigError(f"distill.losses.{index}: {e}", e.hint or CONFIG_HINT) from None
    _check_file_teacher(config)
    return config


def _target(name: str, key: str) -> None:
    """Raise a ConfigError naming config key ``key`` unless target ``name`` is registered."""
    from targets import TARGETS

    try:
        TARGETS.get(name)
    except ConfigError as e:
        raise ConfigError(f"config key {key!r}: {e}", e.hint) from None


def _mapping(value: object) -> object:
    """A plug-in's options as written: none (a key whose sub-keys are all commented out) means its defaults."""
    return {} if value is None else value


def _unknown_key(where: str, key: str, valid: list[str]) -> ConfigError:
    """``where.key`` is no key of its section: the error lists the section's keys, the hint a close one."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else CONFIG_HINT
    return ConfigError(f"unknown config key '{where}.{key}'; valid: {', '.join(valid)}", hint)


def _options(model: type[BaseModel], value: object, where: tuple[str, ...]) -> BaseModel:
    """``value`` validated into ``model``; a failure is one ConfigError naming the dotted key under ``where``."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise _config_error(e, where, model) from None


def _checked_export(export: ExportConfig) -> ExportConfig:
    """Every target named exists; every other key of the section is a target's options (``onnx_int8``), validated
    into its model, with the defaults of each target that declares options and is not configured."""
    from targets import TARGETS

    targets = TARGETS.defaults() if export.targets is None else export.targets
    twice = next((name for index, name in enumerate(targets) if name in targets[:index]), None)
    if twice:
        raise ConfigError(f"config key 'export.targets' names {twice!r} twice", "list each target once")
    for name in targets:
        _target(name, "export.targets")
    models = TARGETS.options_models()
    given = export.model_extra or {}
    for key in given:
        if key not in models:
            raise _unknown_key("export", key, [*ExportConfig.model_fields, *models])
    options = {key: _options(model, _mapping(given.get(key)), ("export", key)) for key, model in models.items()}
    declared = {field: getattr(export, field) for field in ExportConfig.model_fields}
    return ExportConfig.model_construct(export.model_fields_set, **declared | {"targets": list(targets)}, **options)


def _checked_calibration(calibration: CalibrationConfig) -> CalibrationConfig:
    """``method`` is auto or a registered method; every other key of the section is a method's option
    (``percentile``), validated against it, the defaults of every method's options filled in."""
    from calibration.methods import CALIBRATION_METHODS, option_keys

    methods = ["auto", *CALIBRATION_METHODS.names()]
    if calibration.method not in methods:
        close = difflib.get_close_matches(calibration.method, methods, n=1)
        raise ConfigError(
            f"unknown calibration method {calibration.method!r} (calibration.method); valid: {', '.join(methods)}",
            f"did you mean {close[0]!r}?" if close else None,
        )
    known = [key for name in CALIBRATION_METHODS for key in option_keys(CALIBRATION_METHODS.get(name))]
    given = calibration.model_extra or {}
    for key in given:
        if key not in known:
            raise _unknown_key("calibration", key, [*CalibrationConfig.model_fields, *known])
    options: dict = {}
    for name in CALIBRATION_METHODS:
        model = CALIBRATION_METHODS.get(name).options
        if model is not None:
            mine = {key: given[key] for key in model.model_fields if key in given}
            options |= _options(model, mine, ("calibration",)).model_dump()
    declared = {field: getattr(calibration, field) for field in CalibrationConfig.model_fields}
    return CalibrationConfig.model_construct(calibration.model_fields_set, **declared, **options)


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
