"""Run directories and the calibrate stage: opening, requirements, and calibration reuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.calibrate import CALIBRATION_PATH, run_calibrate
from pipeline.config import parse_config
from pipeline.errors import DataError, RunStateError
from pipeline.rundir import RunDir


def test_open_non_run_raises(tmp_path: Path) -> None:
    """Opening a directory without manifest.json/config.yaml raises RunStateError with a hint."""
    with pytest.raises(RunStateError, match="not an edgepipe run directory") as caught:
        RunDir.open(tmp_path)
    assert "edgepipe run" in caught.value.hint


def test_open_finished_run(finished_run: Path) -> None:
    """A finished run opens with its config and manifest, and requires what it has."""
    run = RunDir.open(finished_run)
    assert run.config.data.source == "digits"
    assert run.require("student").path == "checkpoints/student.pt"
    with pytest.raises(RunStateError, match="no nothing-here artifact"):
        run.require("nothing-here")


def test_require_missing_file(run_copy: Path) -> None:
    """A record whose file was deleted does not satisfy ``require``."""
    run = RunDir.open(run_copy)
    (run_copy / CALIBRATION_PATH).unlink()
    with pytest.raises(RunStateError, match="calibration"):
        run.require("calibration")


def test_create_with_bad_data_writes_nothing(tmp_path: Path, tiny_config_dict: dict) -> None:
    """A run whose data cannot load raises DataError before creating its directory."""
    tiny_config_dict["data"]["source"] = str(tmp_path / "missing.npz")
    with pytest.raises(DataError):
        RunDir.create(tmp_path / "run", parse_config(tiny_config_dict))
    assert not (tmp_path / "run").exists()


def test_calibrate_reuse_and_redraw(run_copy: Path, tiny_config_dict: dict) -> None:
    """The calibration set is reused while its config is unchanged and redrawn when its size changes."""
    path = run_copy / CALIBRATION_PATH
    before = path.stat().st_ino
    run_calibrate(RunDir.create(run_copy, parse_config(tiny_config_dict)))
    assert path.stat().st_ino == before
    tiny_config_dict["calibration"]["size"] = 32
    run = RunDir.create(run_copy, parse_config(tiny_config_dict))
    calibration = run_calibrate(run)
    assert len(calibration) == 32 and path.stat().st_ino != before
    assert run.manifest.artifacts["calibration"].info["size"] == 32


def test_calibrate_too_large_is_data_error(tmp_path: Path, tiny_config_dict: dict) -> None:
    """A calibration size above the training split's raises DataError and records nothing."""
    tiny_config_dict["calibration"]["size"] = 5000
    run = RunDir.create(tmp_path / "run", parse_config(tiny_config_dict))
    with pytest.raises(DataError, match="calibration.size"):
        run_calibrate(run)
    assert "calibration" not in run.manifest.artifacts
    assert not (tmp_path / "run" / CALIBRATION_PATH).exists()
