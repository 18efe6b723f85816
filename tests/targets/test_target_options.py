"""Options live with their plug-in: a target or calibration method declares its own options model, the config check
validates them through the registry; the default target list and the listing order come from the registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from calibration.methods import CALIBRATION_METHODS, Method, register_method
from pipeline.config import dump_config
from pipeline.config_load import load_config, parse_config
from pipeline.errors import ConfigError
from targets import TARGETS, Target, register_target
from targets.base import listing_order

DOCUMENTED_ORDER = ["onnx-fp32", "onnx-int8", "onnx-int8-ort-defaults", "tflite-fp32", "tflite-fp16", "tflite-int8"]


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: int = Field(3, ge=1, le=9, description="test: a bounded number")
    mode: Literal["fast", "small"] = Field("fast", description="test: a choice")


class ToyFp16(Target):
    """An ONNX fp16 target with its own options, registered for one test (never built)."""

    name = "toy-fp16"
    description = "test: a target with options"
    format = "onnx"
    precision = "fp16"
    suffix = ".onnx"
    parent = "onnx-fp32"
    options = ToyOptions
    default = False


@pytest.fixture
def toy() -> Iterator[type[Target]]:
    """ToyFp16 registered through ``register_target`` (as a target module does), removed after the test."""
    register_target(ToyFp16)
    try:
        yield ToyFp16
    finally:
        del TARGETS._entries[ToyFp16.name]


class BinsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bins: int = Field(128, ge=2, description="test: histogram bins")


class ToyMethod(Method):
    name = "toy-bins"
    ort_method = "Entropy"
    options = BinsOptions


@pytest.fixture
def toy_method() -> Iterator[type[Method]]:
    """ToyMethod registered for one test, removed after it."""
    register_method(ToyMethod)
    try:
        yield ToyMethod
    finally:
        del CALIBRATION_METHODS._entries[ToyMethod.name]


def test_target_options_are_validated_and_read_through_the_registry(toy) -> None:
    """A registered target's options are validated into its model and read with one accessor; absent: defaults;
    the saved config holds them and parses back to the same config."""
    config = parse_config({"export": {"toy_fp16": {"level": 7}}})
    options = TARGETS.get("toy-fp16").options_of(config)
    assert isinstance(options, ToyOptions)
    assert (options.level, options.mode) == (7, "fast")
    assert TARGETS.get("toy-fp16").options_of(parse_config({})) == ToyOptions()
    saved = yaml.safe_load(dump_config(config))
    assert saved["export"]["toy_fp16"] == {"level": 7, "mode": "fast"}
    assert parse_config(saved) == config


def test_target_option_overrides(toy) -> None:
    """Dotted overrides reach a target's options like any other key."""
    config = load_config(None, {"export.toy_fp16.mode": "small"})
    assert TARGETS.get("toy-fp16").options_of(config) == ToyOptions(mode="small")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"level": 0}, "config key 'export.toy_fp16.level' should be greater than or equal to 1; got 0"),
        ({"mode": "tiny"}, "config key 'export.toy_fp16.mode'"),
        ({"levle": 4}, "unknown config key 'export.toy_fp16.levle'"),
        ("high", "config key 'export.toy_fp16'"),
    ],
)
def test_bad_target_option_names_its_dotted_path(toy, options: object, expected: str) -> None:
    """A wrong value, type or key of a target's options: one ConfigError line naming the dotted key."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"export": {"toy_fp16": options}})
    assert expected in str(caught.value)
    assert caught.value.exit_code == 2
    assert "\n" not in caught.value.one_line()


def test_unknown_export_key_lists_the_valid_ones(toy) -> None:
    """An export key that is neither a setting nor a registered target's options lists both (options in listing
    order), with a hint."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"export": {"toy_fp61": {"level": 2}}})
    message = str(caught.value)
    assert message.startswith("unknown config key 'export.toy_fp61'; valid: ")
    assert message.split("valid: ")[1].split(", ") == ["targets", "opset", "exporter", "toy_fp16", "onnx_int8"]
    assert caught.value.hint == "did you mean 'toy_fp16'?"


def test_options_are_no_export_key_without_their_target() -> None:
    """The same options are an unknown key when no target declares them (the toy is not registered here)."""
    assert "toy-fp16" not in TARGETS
    with pytest.raises(ConfigError, match="unknown config key 'export.toy_fp16'"):
        parse_config({"export": {"toy_fp16": {"level": 2}}})


def test_onnx_int8_cache_key_is_unchanged() -> None:
    """onnx-int8's options keep the cache key of earlier runs: the same dict under the same key."""
    key = TARGETS.get("onnx-int8")().config_key(parse_config({"export": {"onnx_int8": {"reduce_range": True}}}))
    assert key["onnx_int8"] == {"per_channel": "auto", "reduce_range": True, "activation_type": "auto"}


def test_registration_order_is_the_documented_order() -> None:
    """Targets list (and are reported and built) onnx → tflite, fp32 → fp16 → int8, a reference after its sibling:
    the registry's own order, not the order the modules were found in."""
    assert TARGETS.names() == DOCUMENTED_ORDER
    assert sorted(DOCUMENTED_ORDER, key=lambda name: listing_order(TARGETS.get(name))) == DOCUMENTED_ORDER
    assert sorted(DOCUMENTED_ORDER) != DOCUMENTED_ORDER  # an alphabetical discovery would not give it


def test_a_new_target_sorts_into_place(toy) -> None:
    """A target registered last lists by its format and precision, not at the end."""
    assert TARGETS.names() == ["onnx-fp32", "toy-fp16", *DOCUMENTED_ORDER[1:]]


def test_every_target_module_is_discovered() -> None:
    """Each module of the targets package that defines a registered target was imported without a hand-kept list."""
    package = Path(__file__).resolve().parents[2] / "targets"
    defining = {f"targets.{path.stem}" for path in package.glob("*.py") if "@register_target" in path.read_text()}
    assert defining and {TARGETS.get(name).__module__ for name in TARGETS.names()} == defining


def test_default_targets_come_from_the_registry(toy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without export.targets a config builds the registry's default targets, in listing order; the saved config
    holds the list. A target that opts out is left out; one that opts in joins in its place."""
    config = parse_config({})
    assert config.export.targets == TARGETS.defaults() == DOCUMENTED_ORDER
    assert yaml.safe_load(dump_config(config))["export"]["targets"] == DOCUMENTED_ORDER
    monkeypatch.setattr(ToyFp16, "default", True)
    assert parse_config({}).export.targets == ["onnx-fp32", "toy-fp16", *DOCUMENTED_ORDER[1:]]
    assert parse_config({"export": {"targets": []}}).export.targets == []  # a run that only distils and benches


def test_calibration_method_option_is_validated() -> None:
    """percentile's own option stays where configs have it (calibration.percentile), validated against it."""
    percentile = CALIBRATION_METHODS.get("percentile")
    assert percentile.options_of(parse_config({}).calibration).percentile == 99.999
    config = parse_config({"calibration": {"method": "percentile", "percentile": 99.9}})
    assert percentile.options_of(config.calibration).percentile == 99.9
    with pytest.raises(ConfigError, match="config key 'calibration.percentile' should be less than or equal"):
        parse_config({"calibration": {"percentile": 101}})


def test_a_registered_method_brings_its_options(toy_method) -> None:
    """A method registered with an options model: its key is validated in the calibration section, read with the
    accessor, saved beside `method`, and `auto` tries it after the others."""
    config = parse_config({"calibration": {"method": "toy-bins", "bins": 64}})
    assert ToyMethod.options_of(config.calibration) == BinsOptions(bins=64)
    assert list(config.calibration.model_dump())[:5] == ["size", "selection", "method", "percentile", "bins"]
    assert CALIBRATION_METHODS.names()[-1] == "toy-bins"
    with pytest.raises(ConfigError, match="'calibration.bins'"):
        parse_config({"calibration": {"bins": 1}})


def test_a_method_option_cannot_take_a_calibration_key() -> None:
    """Options share the calibration section: a key already there is refused at registration."""

    class Size(BaseModel):
        size: int = 3

    class Clash(Method):
        name = "clash"
        ort_method = "MinMax"
        options = Size

    with pytest.raises(ValueError, match="'size' is already a calibration key"):
        register_method(Clash)
    assert "clash" not in CALIBRATION_METHODS


def test_unknown_calibration_method_lists_the_registered_ones() -> None:
    """calibration.method is auto or a registered method; anything else lists them, with a hint for a near miss."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"calibration": {"method": "nope"}})
    message = str(caught.value)
    assert "'nope'" in message and "calibration.method" in message
    assert message.endswith("valid: auto, minmax, percentile, entropy")
    assert caught.value.exit_code == 2
    with pytest.raises(ConfigError) as near:
        parse_config({"calibration": {"method": "entropi"}})
    assert near.value.hint == "did you mean 'entropy'?"


def test_auto_tries_the_methods_in_registry_order() -> None:
    """`auto` tries minmax, percentile, entropy: the registry's order (the first wins a tie)."""
    assert CALIBRATION_METHODS.names() == ["minmax", "percentile", "entropy"]
