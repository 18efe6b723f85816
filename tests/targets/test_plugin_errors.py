"""A target plug-in that cannot be one: the registry refuses it with what is wrong, and a module that does not load
is one SetupError naming its file (exit 9), never a traceback of every command."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

import targets
from pipeline.errors import SetupError
from targets import TARGETS, Target


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = 1


class Loose(BaseModel):
    level: int = 1


class Required(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int


def _target(name: str, **attributes) -> type[Target]:
    base = {"description": "toy", "format": "onnx", "precision": "fp32", "suffix": ".onnx", "parent": "student"}
    return type("Toy", (Target,), {"name": name, **base, **attributes})


@pytest.mark.parametrize(
    ("name", "attributes", "says"),
    [
        ("toy-a", {"suffix": None}, None),  # a None suffix is set: only a missing attribute is refused
        ("toy-b", {"format": "coreml"}, "format 'coreml' is none of the registered formats (onnx, tflite"),
        ("toy-c", {"options": {"a": 1}}, "options must be a pydantic BaseModel subclass"),
        ("toy-d", {"options": Loose}, "must refuse unknown keys"),
        ("toy-e", {"options": Required}, "need a default for level"),
        ("onnx_int8", {"options": Strict}, "options key 'onnx_int8' is also that of target 'onnx-int8'"),
        ("opset", {"options": Strict}, "options key 'opset' is an export setting"),
    ],
)
def test_the_registry_refuses_what_cannot_be_a_target(name: str, attributes: dict, says: str | None) -> None:
    before = TARGETS.names()
    cls = _target(name, **attributes)
    if says is None:
        TARGETS.register(name)(cls)
        TARGETS.unregister(name)
        return
    with pytest.raises(TypeError, match=re.escape(says)):
        TARGETS.register(name)(cls)
    assert TARGETS.names() == before


def test_a_missing_class_attribute_is_named() -> None:
    cls = type("NoSuffix", (Target,), {"name": "toy-f", "description": "", "format": "onnx", "precision": "fp32"})
    with pytest.raises(TypeError, match="sets no suffix, parent"):
        TARGETS.register("toy-f")(cls)
    assert "toy-f" not in TARGETS


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("import no_such_module_anywhere\n", "ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
        (
            "from targets import register_target\nfrom targets.onnx_fp32 import OnnxFp32\n\n"
            "@register_target\nclass Again(OnnxFp32):\n    pass\n",
            "ValueError: target 'onnx-fp32' is registered twice",
        ),
    ],
)
def test_a_module_that_does_not_load_is_one_setup_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, says: str
) -> None:
    (tmp_path / "zz_plugin.py").write_text(source)
    monkeypatch.setattr(targets, "__path__", [*targets.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "targets.zz_plugin", raising=False)
    with pytest.raises(SetupError) as caught:
        targets._load("zz_plugin")
    assert caught.value.one_line().startswith(f"targets/zz_plugin.py does not load: {says}")
    assert caught.value.exit_code == 9 and "fix or remove that file" in caught.value.hint
