"""The generic registry: duplicates raise, unknown names list the valid ones with a "did you mean" hint."""

from __future__ import annotations

import pytest

from pipeline.data.splits import SOURCES
from pipeline.errors import ConfigError
from pipeline.registry import Registry
from pipeline.training.losses import LOSSES, hinton_loss
from pipeline.training.models import ARCHITECTURES
from targets import TARGETS


def test_register_and_get() -> None:
    """A registered object comes back by name, in registration order."""
    registry: Registry[int] = Registry("widget")
    registry.register("b")(2)
    registry.register("a")(1)
    assert registry.get("a") == 1
    assert registry.names() == ["b", "a"]
    assert "a" in registry and "c" not in registry
    assert list(registry) == ["b", "a"]


def test_duplicate_registration_raises() -> None:
    """Registering a name twice raises instead of silently keeping one."""
    registry: Registry[int] = Registry("widget")
    registry.register("x")(1)
    with pytest.raises(ValueError, match="'x' is registered twice"):
        registry.register("x")(2)
    assert registry.get("x") == 1


def test_duplicate_target_registration_raises() -> None:
    """The target registry rejects a second class under an existing name."""
    with pytest.raises(ValueError, match="registered twice"):
        TARGETS.register("onnx-fp32")(object)
    assert TARGETS.get("onnx-fp32").name == "onnx-fp32"


def test_unknown_name_lists_valid_and_suggests() -> None:
    """A near miss raises (never substitutes) with every valid name and a did-you-mean hint."""
    with pytest.raises(ConfigError) as caught:
        TARGETS.get("onnx-int9")
    error = caught.value
    assert "unknown target 'onnx-int9'" in str(error)
    for name in TARGETS.names():
        assert name in str(error)
    assert error.hint == "did you mean 'onnx-int8'?"
    assert "did you mean 'onnx-int8'?" in error.one_line()


def test_unknown_name_without_close_match_has_no_hint() -> None:
    """A name unlike any entry gets the list but no suggestion."""
    registry: Registry[int] = Registry("widget")
    registry.register("alpha")(1)
    with pytest.raises(ConfigError) as caught:
        registry.get("zzzzzz")
    assert caught.value.hint is None
    assert "valid: alpha" in str(caught.value)


def test_shared_registries_hold_the_builtins() -> None:
    """Targets, architectures, losses and data sources all use the one registry type."""
    for registry in (TARGETS, ARCHITECTURES, LOSSES, SOURCES):
        assert isinstance(registry, Registry)
    assert TARGETS.names() == [
        "onnx-fp32",
        "onnx-int8",
        "onnx-int8-ort-defaults",
        "tflite-fp32",
        "tflite-fp16",
        "tflite-int8",
    ]
    assert {"teacher-cnn", "student-cnn"} <= set(ARCHITECTURES)
    assert LOSSES.get("hinton").__name__ == "hinton"
    assert callable(hinton_loss)
    assert {"fashion-mnist", "digits"} <= set(SOURCES)
