"""Config: defaults, unknown keys, wrong types, unknown targets, YAML files and dotted overrides."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import RunConfig, dump_config
from pipeline.config_load import load_config, parse_config
from pipeline.errors import ConfigError
from targets import TARGETS
from targets.onnx_int8 import OnnxQuantConfig


def test_defaults_validate() -> None:
    """An empty mapping and no file both give the documented defaults, completed from the registries: every
    default target, onnx-int8's options and the percentile method's at their defaults."""
    config = parse_config({})
    registry_filled = {"export", "calibration"}
    assert config.model_dump(exclude=registry_filled) == RunConfig().model_dump(exclude=registry_filled)
    assert load_config(None) == config
    assert config.export.targets == TARGETS.names()
    assert config.export.model_dump()["onnx_int8"] == OnnxQuantConfig().model_dump()
    assert config.calibration.model_dump() == {**RunConfig().calibration.model_dump(), "percentile": 99.999}
    assert 0 < config.data.val_fraction < 0.5


def test_tiny_config_validates(tiny_config_dict: dict) -> None:
    """The suite's tiny config is a valid config and keeps its values."""
    config = parse_config(tiny_config_dict)
    assert config.data.source == "digits"
    assert config.distill.epochs == 2
    assert config.bench.min_seconds == 0


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"distill": {"temprature": 3.0}}, "distill.temprature"),
        ({"export": {"onnx_int8": {"per_chanel": False}}}, "export.onnx_int8.per_chanel"),
        ({"export": {"onnx_int9": {}}}, "export.onnx_int9"),
        ({"calibration": {"percentil": 99.9}}, "calibration.percentil"),
    ],
)
def test_unknown_key_is_named(raw: dict, key: str) -> None:
    """Unknown keys, top-level or nested, raise ConfigError naming the dotted key."""
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert f"unknown config key '{key}'" in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (
            {"distill": {"threads": "many"}},
            "config key 'distill.threads' should be a valid integer or 'auto'; got 'many'",
        ),
        (
            {"export": {"onnx_int8": {"per_channel": "maybe"}}},
            "config key 'export.onnx_int8.per_channel' should be a valid boolean or 'auto'; got 'maybe'",
        ),
        ({"export": {"onnx_int8": [1]}}, "config key 'export.onnx_int8' should be a mapping of keys"),
        (
            {"distill": {"epoch": 3}},
            "unknown config key 'distill.epoch'; valid: epochs, batch_size",
        ),
        ({"seed": -1}, "config key 'seed' should be greater than or equal to 0; got -1"),
        # YAML's yes/no where a number goes: pydantic alone would read true as 1 and false as 0
        ({"distill": {"threads": True}}, "config key 'distill.threads': expected a number or 'auto', got true"),
        ({"distill": {"lr": False}}, "config key 'distill.lr': expected a number, got false"),
        ({"calibration": {"size": True}}, "config key 'calibration.size': expected a number, got true"),
        (
            {"bench": {"threads": ["all", True]}},
            "config key 'bench.threads': expected a number or 'all' for each item, got true in [all, true]",
        ),
        (
            {"data": {"image_size": [True, 8]}},
            "config key 'data.image_size': expected a number for each item, got true in [true, 8]",
        ),
        (
            {"prune": {"method": "magnitude", "layers": {"0": False}}},
            "config key 'prune.layers': expected a number for each item, got false in {'0': false}",
        ),
        ({"distill": {"losses": [{"name": "mse", "weight": False}]}}, "config key 'distill.losses.0.weight': expected"),
        (
            {"distill": {"losses": [{"name": "hinton", "temperature": True}]}},
            "distill.losses.0: loss 'hinton' parameter 'temperature' should be a valid number; got true",
        ),
        ({"seed": 2**32}, "config key 'seed' should be less than or equal to 4294967295"),
        (
            {"seed": 2**32 - 2, "distill": {"baseline_seeds": 3}},
            "config key '(top level)': the baselines' training seeds run from seed 4294967294 to 4294967296, past "
            "the largest seed 4294967295",
        ),
    ],
)
def test_errors_speak_the_config_not_pydantic(raw: dict, line: str) -> None:
    """Union members (``constrained-int``, ``literal['auto']``) and model class names never reach the user; every
    member of a union is named; an unknown key lists its section's keys and hints the close one."""
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.one_line().startswith(line)
    assert "constrained" not in caught.value.one_line() and "Config" not in caught.value.one_line()


def test_unknown_nested_key_hints_the_close_one() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"data": {"augment": {"hflp": True}}})
    assert caught.value.hint == "did you mean 'hflip'?"


def test_options_left_empty_are_the_defaults() -> None:
    """``export.onnx_int8:`` with every sub-key commented out (YAML null) is onnx-int8's defaults."""
    from targets import TARGETS

    config = parse_config({"export": {"onnx_int8": None}})
    assert TARGETS.get("onnx-int8").options_of(config) == TARGETS.get("onnx-int8").options()


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"distill": {"epochs": "many"}}, "distill.epochs"),
        ({"seed": "zero"}, "seed"),
        ({"bench": {"min_runs": 0}}, "bench.min_runs"),
        ({"data": {"val_fraction": 0.9}}, "data.val_fraction"),
        ({"export": {"exporter": "onnxmltools"}}, "export.exporter"),
        ({"export": {"onnx_int8": {"activation_type": "int4"}}}, "export.onnx_int8.activation_type"),
        ({"export": {"onnx_int8": [1, 2]}}, "export.onnx_int8"),
        ({"calibration": {"percentile": 50}}, "calibration.percentile"),
    ],
)
def test_wrong_type_or_value_names_key(raw: dict, key: str) -> None:
    """A wrong type or out-of-range value raises ConfigError naming the key, on one line."""
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert f"'{key}'" in str(caught.value)
    assert "\n" not in caught.value.one_line()


def test_unknown_target_lists_valid_names() -> None:
    """An unknown export target is an error that lists every valid target."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"export": {"targets": ["onnx-fp32", "tflite-int4"]}})
    message = str(caught.value)
    assert "'tflite-int4'" in message
    for name in TARGETS.names():
        assert name in message


def test_load_yaml_file(write_config, tiny_config_dict: dict) -> None:
    """A YAML file is read into the typed config."""
    path = write_config(tiny_config_dict)
    config = load_config(path)
    assert config.calibration.size == 64
    assert config.teacher.batch_size == 64
    assert config.export.targets == tiny_config_dict["export"]["targets"]


def test_dump_config_round_trips(tiny_config_dict: dict) -> None:
    """The effective config saved beside a run parses back to the same config."""
    config = parse_config(tiny_config_dict)
    assert parse_config(yaml.safe_load(dump_config(config))) == config


def test_dotted_overrides(write_config, tiny_config_dict: dict) -> None:
    """Dotted overrides replace leaves, create missing sections and keep the other keys."""
    del tiny_config_dict["export"]
    path = write_config(tiny_config_dict)
    config = load_config(
        path, {"data.source": "/some/dir", "distill.lr": 0.01, "export.onnx_int8.activation_type": "int8"}
    )
    assert config.data.source == "/some/dir"
    assert config.distill.lr == 0.01
    assert config.distill.epochs == 2
    onnx_int8 = TARGETS.get("onnx-int8").options_of(config)
    assert onnx_int8.activation_type == "int8"
    assert onnx_int8.per_channel == "auto"


def test_override_with_unknown_key_is_rejected(write_config, tiny_config_dict: dict) -> None:
    """An override cannot smuggle in an unknown key."""
    with pytest.raises(ConfigError, match="distill.temprature"):
        load_config(write_config(tiny_config_dict), {"distill.temprature": 2.0})


def test_yaml_errors(tmp_path) -> None:
    """A missing file, invalid YAML and a non-mapping document each raise ConfigError."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("distill: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


def test_yaml_python_tags_are_not_executed(tmp_path) -> None:
    """YAML is read with safe_load: a python/object tag is an error, never a call."""
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_config_is_frozen() -> None:
    """Sections are immutable once validated."""
    config = parse_config({})
    with pytest.raises(Exception):
        config.distill.epochs = 10  # type: ignore[misc]
    assert config.distill.epochs == RunConfig().distill.epochs


def test_a_new_run_stores_the_files_it_names_absolute(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative files (taken from the current directory) are saved absolute; names and specs that are no files stay."""
    raw = {
        "data": {"source": "images", "test": "test.npz"},
        "teacher": {"arch": "nets/t.py:make", "checkpoint": "t.pt", "class_map": "labels.txt"},
        "student": {"arch": "s.py:make", "checkpoint": "w.pt", "class_map": {"0": 3}},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    config = load_config(tmp_path / "run.yaml", absolute=True)
    assert config.data.source == str(tmp_path / "images") and config.data.test == str(tmp_path / "test.npz")
    assert config.teacher.arch == f"{tmp_path / 'nets' / 't.py'}:make"
    assert config.teacher.checkpoint == str(tmp_path / "t.pt")
    assert config.teacher.class_map == str(tmp_path / "labels.txt")
    assert config.student.arch == f"{tmp_path / 's.py'}:make" and config.student.checkpoint == str(tmp_path / "w.pt")
    assert config.student.class_map == {"0": 3}
    assert load_config(tmp_path / "run.yaml").student.checkpoint == "w.pt"  # an existing run's config: as saved

    others = {
        "data": {"source": "digits"},
        "teacher": {"arch": "torchvision:resnet18", "checkpoint": "auto"},
        "distill": {"arch": "pkg.nets:make"},
    }
    assert load_config(None, others, absolute=True) == load_config(None, others)
    distilled = load_config(None, {"distill.arch": "d.py:make"}, absolute=True)
    assert distilled.distill.arch == f"{tmp_path / 'd.py'}:make"


def test_default_config_is_unchanged_by_absolute_paths(tiny_config_dict: dict, write_config) -> None:
    """The embedded default (and the suite's digits config) name no files: same dump, so same artifact ids."""
    assert dump_config(load_config(None, absolute=True)) == dump_config(load_config(None))
    tiny = write_config(tiny_config_dict)
    assert dump_config(load_config(tiny, absolute=True)) == dump_config(load_config(tiny))


@pytest.mark.parametrize(
    ("targets", "line"),
    [
        (["onnx-int8", "onnx-fp32", "onnx-int8"], "config key 'export.targets' names 'onnx-int8' twice"),
        (["onnx-int9"], "config key 'export.targets': unknown target 'onnx-int9'"),
    ],
)
def test_export_targets_name_each_target_once(targets: list[str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"export": {"targets": targets}})
    assert caught.value.one_line().startswith(line)
