"""The export stage: a forced target is rebuilt alone; an unforced export reuses every artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import RunStateError
from pipeline.io import sha256_file
from pipeline.manifest import Manifest
from pipeline.rundir import RunDir
from pipeline.stages.export import run_export


def test_force_rebuilds_only_that_target(run_copy: Path, snapshot_artifacts) -> None:
    """Forcing onnx-int8 rewrites only its file and replaces only its record."""
    before = snapshot_artifacts(run_copy)
    old_manifest = Manifest.load(run_copy / "manifest.json")
    run = RunDir.open(run_copy)
    (record,) = run_export(run, ["onnx-int8"], force={"onnx-int8"})
    after = snapshot_artifacts(run_copy)
    assert set(after) == set(before)
    for name in before:
        if name != "onnx-int8":
            assert after[name] == before[name], f"{name} was rewritten"
    assert after["onnx-int8"][:2] != before["onnx-int8"][:2], "onnx-int8 was not rewritten"
    new_manifest = Manifest.load(run_copy / "manifest.json")
    assert new_manifest.artifacts["onnx-int8"] == record
    assert record.sha256 == sha256_file(run_copy / record.path) == after["onnx-int8"][2]
    assert record.id == old_manifest.artifacts["onnx-int8"].id  # same inputs, same id
    for name, old in old_manifest.artifacts.items():
        if name != "onnx-int8":
            assert new_manifest.artifacts[name] == old


def test_unforced_export_reuses_everything(run_copy: Path, snapshot_artifacts) -> None:
    """A second export without force writes no artifact and returns the recorded ones."""
    before = snapshot_artifacts(run_copy)
    recorded = Manifest.load(run_copy / "manifest.json").artifacts
    records = run_export(RunDir.open(run_copy))
    assert [r.name for r in records] == RunDir.open(run_copy).config.export.targets
    assert {r.name: r for r in records} == {name: recorded[name] for name in before}
    assert snapshot_artifacts(run_copy) == before


def test_changed_artifact_is_rebuilt(run_copy: Path, snapshot_artifacts) -> None:
    """A tampered artifact fails the reuse check and is rebuilt to match its record again."""
    record = Manifest.load(run_copy / "manifest.json").artifacts["onnx-int8"]
    path = run_copy / record.path
    path.write_bytes(b"garbage")
    before = snapshot_artifacts(run_copy)
    (rebuilt,) = run_export(RunDir.open(run_copy), ["onnx-int8"])
    assert sha256_file(path) == rebuilt.sha256
    assert path.read_bytes() != b"garbage"
    assert path.stat().st_size == rebuilt.bytes > 1000
    after = snapshot_artifacts(run_copy)
    assert all(after[name] == before[name] for name in before if name != "onnx-int8")


def test_export_needs_a_student(tmp_path: Path, tiny_config_dict: dict) -> None:
    """Exporting in a run without a student raises RunStateError with a hint."""
    from pipeline.config_load import parse_config

    run = RunDir.create(tmp_path / "empty", parse_config(tiny_config_dict))
    with pytest.raises(RunStateError, match="no student") as caught:
        run_export(run, ["onnx-fp32"])
    assert caught.value.hint
    assert not (tmp_path / "empty" / "artifacts" / "student-onnx-fp32.onnx").exists()
