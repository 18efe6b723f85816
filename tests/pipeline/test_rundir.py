"""Run directories and the calibrate stage: opening, requirements, and calibration reuse."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config_load import parse_config
from pipeline.converter_log import RUN_LOG
from pipeline.errors import DataError, RunStateError
from pipeline.rundir import RunDir
from pipeline.stages.calibrate import CALIBRATION_PATH, run_calibrate


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


# --- the writer lock ----------------------------------------------------------------------------------------------

EDGEPIPE = shutil.which("edgepipe", path=str(Path(sys.executable).parent)) or shutil.which("edgepipe")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}


def _started_distill(root: Path, config: Path) -> subprocess.Popen:
    """`edgepipe distill ROOT --config CONFIG` in its own process, returned once it holds the lock (its manifest
    is written under the lock)."""
    holder = subprocess.Popen(
        [EDGEPIPE, "distill", str(root), "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (root / "manifest.json").is_file():
        assert holder.poll() is None and time.monotonic() < deadline, "distill ended before writing its run"
        time.sleep(0.2)
    return holder


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path, tiny_config_dict: dict) -> None:
    """While `edgepipe distill` writes a run, another process (this one, and `edgepipe report` from the shell) gets
    one line naming its PID, command and start time (exit 6) and writes nothing into the run, its log included;
    killed, the holder leaves no stale lock and no file behind."""
    root, config = tmp_path / "run", tmp_path / "config.yaml"
    tiny_config_dict["teacher"]["epochs"] = tiny_config_dict["distill"]["epochs"] = 50  # still training when checked
    config.write_text(yaml.safe_dump(tiny_config_dict))
    holder = _started_distill(root, config)
    try:
        with pytest.raises(RunStateError, match=rf"is being written by PID {holder.pid} \(`edgepipe distill`, since"):
            RunDir.open(root)
        refused = subprocess.run([EDGEPIPE, "report", str(root)], capture_output=True, text=True, env=ENV)
        assert refused.returncode == 6
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith(f"edgepipe: error: {root} is being written by PID {holder.pid}")
        assert line.endswith("(hint: wait for it to finish or stop it)")
        for command in (["export", str(root)], ["bench", str(root)], ["run", "--data", "digits", "--out", str(root)]):
            refused = subprocess.run([EDGEPIPE, *command], capture_output=True, text=True, env=ENV)
            assert refused.returncode == 6
            header, error = refused.stderr.splitlines()  # refused before any stage starts
            assert header == f"edgepipe {command[0]} → {root}"
            assert error.startswith(f"edgepipe: error: {root} is being written by PID {holder.pid}")
            assert f"edgepipe {command[0]}" not in (root / RUN_LOG).read_text()  # it wrote nothing into the run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert RunDir.open(root).root == root  # the kernel dropped the dead holder's lock
    assert not [p for p in root.rglob("*") if "lock" in p.name]


def test_the_lock_is_reentrant_and_lent_to_helper_processes(tmp_path: Path, tiny_config_dict: dict) -> None:
    """One process may create and open its run again (tests, stages calling stages); a process it starts (the memory
    probe) may open the run it holds."""
    root = tmp_path / "run"
    RunDir.create(root, parse_config(tiny_config_dict))
    RunDir.create(root, parse_config(tiny_config_dict))
    RunDir.open(root)
    code = f"from pathlib import Path; from pipeline.rundir import RunDir; RunDir.open(Path({str(root)!r}))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert child.returncode == 0, child.stderr


# --- hints name a command that runs in the run's state --------------------------------------------------------------


def test_how_to_make_starts_with_a_command_that_runs(tmp_path: Path, tiny_config_dict: dict) -> None:
    """From an empty run every hint starts with distill; with a prune section, prune comes before what it feeds."""
    root = tmp_path / "run"
    run = RunDir.create(root, parse_config(tiny_config_dict))
    export = f"`edgepipe export {root} --target onnx-int8`"
    assert run.how_to_make("onnx-int8") == f"run `edgepipe distill {root}`, then {export}"
    assert run.how_to_make("calibration") == f"run `edgepipe distill {root}`, then `edgepipe quantize {root}`"
    assert run.how_to_make("baseline") == f"run `edgepipe distill {root} --baseline`"
    tiny_config_dict["prune"] = {"method": "magnitude", "sparsity": 0.5}
    pruned = RunDir.create(tmp_path / "pruned", parse_config(tiny_config_dict))
    assert pruned.how_to_make("tflite-fp32").split(", then ") == [
        f"run `edgepipe distill {pruned.root}`",
        f"`edgepipe prune {pruned.root}`",
        f"`edgepipe export {pruned.root} --target tflite-fp32`",
    ]


def _hint(result) -> str:
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("edgepipe: error:")]
    return line.split("(hint: ", 1)[1].rstrip(")")


def test_following_the_hints_reaches_a_release(tmp_path: Path, tiny_config_dict: dict) -> None:
    """From an empty run, `release` says what to run; each suggested command, run in turn, succeeds (none refuses
    with another "run X first"), until `release` writes its bundle."""
    root, cli = tmp_path / "run", CliRunner()
    tiny_config_dict["export"]["targets"] = ["onnx-fp32"]
    tiny_config_dict["bench"] |= {"memory": False, "rounds": 1, "batch_sizes": [1], "threads": [1]}
    RunDir.create(root, parse_config(tiny_config_dict))
    release = ["release", str(root), "--target", "onnx-fp32", "--out", str(tmp_path / "bundle")]
    followed = []
    for _ in range(4):
        result = cli.invoke(app, release)
        if result.exit_code == 0:
            break
        assert result.exit_code == 6, result.output
        hint = _hint(result)
        commands = [part.split("`")[1] for part in hint.removeprefix("run ").split(", then ")]
        for command in commands:
            done = cli.invoke(app, command.split()[1:])
            assert done.exit_code == 0, (command, done.output)
            followed.append(command.split()[1])
    assert result.exit_code == 0, result.output
    assert followed == ["distill", "export", "bench"]
