"""Every artifact of the session run exists and its manifest record describes it exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from targets import TARGETS, Target

ARTIFACTS = ["teacher", "student", "calibration", *TARGETS.names()]


def test_target_classes_declare_their_attributes() -> None:
    """Each registered target is a Target subclass with a name matching its key and a sane declaration."""
    for name in TARGETS:
        target = TARGETS.get(name)
        assert issubclass(target, Target)
        assert target.name == name
        assert target.format in ("onnx", "tflite")
        assert target.precision in ("fp32", "fp16", "int8")
        assert target.suffix == f".{target.format}"
        assert target.parent == "student" or target.parent in TARGETS
        assert target.needs_calibration == (target.precision == "int8")
        assert (target.max_abs_diff is None) == (target.precision == "int8")
        assert target.description


@pytest.mark.parametrize("name", ARTIFACTS)
def test_record_matches_file(finished_run: Path, manifest_json: dict, name: str) -> None:
    """The file exists inside the run and its size and sha256 are what the manifest says."""
    record = manifest_json["artifacts"][name]
    assert record["name"] == name
    assert not Path(record["path"]).is_absolute()
    path = finished_run / record["path"]
    assert path.is_file()
    assert path.resolve().is_relative_to(finished_run.resolve())
    assert record["bytes"] == path.stat().st_size > 0
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", TARGETS.names())
def test_export_record_lineage_and_specs(manifest_json: dict, name: str) -> None:
    """Export records name their parent, format, precision, tensor specs and a passed verification."""
    record = manifest_json["artifacts"][name]
    target = TARGETS.get(name)
    assert record["stage"] == "export"
    assert record["parent"] == target.parent and target.parent in manifest_json["artifacts"]
    assert record["path"] == f"artifacts/student-{name}{target.suffix}"
    assert record["info"]["format"] == target.format
    assert record["info"]["precision"] == target.precision
    (spec,) = record["inputs"]
    assert spec["layout"] == ("NCHW" if target.format == "onnx" else "NHWC")
    assert "batch" in spec["shape"] or spec["shape"][0] in (-1, 1)
    assert record["outputs"][0]["shape"][-1] == 10
    verification = record["info"]["verification"]
    assert verification["samples"] > 0
    if target.max_abs_diff is not None:
        assert verification["max_abs_diff_vs_student"] <= target.max_abs_diff
    assert verification["top1_agreement_vs_student"] >= 90


def test_ids_are_unique_and_data_recorded(manifest_json: dict) -> None:
    """Artifact ids differ; the data record adds up to the digits set with preprocessing for 1×8×8."""
    ids = [record["id"] for record in manifest_json["artifacts"].values()]
    assert len(set(ids)) == len(ids)
    data = manifest_json["data"]
    assert data["source"] == "digits"
    assert data["train"] + data["val"] + data["test"] == 1797
    prep = data["preprocessing"]
    assert (prep["channels"], prep["height"], prep["width"]) == (1, 8, 8)
    assert len(prep["mean"]) == len(prep["std"]) == 1 and prep["std"][0] > 0


def test_effective_config_saved(finished_run: Path, manifest_json: dict) -> None:
    """config.yaml beside the manifest is the config the manifest records."""
    import yaml

    assert yaml.safe_load((finished_run / "config.yaml").read_text()) == manifest_json["config"]
    assert manifest_json["config"]["calibration"]["size"] == 64


def test_calibration_record_lists_training_ids(manifest_json: dict, digits_splits) -> None:
    """The calibration record says it came from train, with per-class counts summing to its size."""
    info = manifest_json["artifacts"]["calibration"]["info"]
    assert info["split"] == "train" and info["size"] == 64
    assert sum(info["per_class"].values()) == 64
    assert set(info["sample_ids"]) <= set(digits_splits.train.ids.tolist())
