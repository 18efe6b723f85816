"""SIGKILL `edgepipe run` while it distils the student, and again while it exports; running the same command
again finishes the run, and the result matches an uninterrupted run of the same config in another directory.

What must match: every artifact record (id, path, bytes, sha256, tensors, info: the pipeline is deterministic
for a fixed seed on one machine, so a resumed run writes the same bytes), the data and config records, and each
measurement's accuracy, agreement, sizes and parity. What may differ, and is left out: ``created`` (when the
manifest was started), latencies and throughput (wall-clock), the size of bench's own tf2onnx conversions
(see ``measured``), and the student's ``resumed_from_epoch``, which says where training picked up again and is
checked on its own.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from conftest import TINY_CONFIG

from pipeline.io import sha256_file
from pipeline.stages.bench import TF2ONNX_RUNTIME
from targets import TARGETS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TEMP_FILE = re.compile(r"^\..+\.tmp")  # pipeline.io.atomic_path's ".<name>.<random>.tmp<suffix>"
DISTILL_EPOCHS = 8  # the tiny config's 2 leave no time to kill the student mid-training
RUN_TIMEOUT = 900
MEASURED = ("artifact", "runtime", "provider", "accuracy", "agreement", "file_bytes", "params", "macs", "parity")


def config_file(tmp_path: Path) -> Path:
    """The tiny digits config with a longer student and a quick bench (one batch size, one thread, no probes)."""
    raw = copy.deepcopy(TINY_CONFIG)
    raw["distill"]["epochs"] = DISTILL_EPOCHS
    raw["bench"] = {"warmup": 0, "min_runs": 1, "min_seconds": 0, "batch_sizes": [1], "threads": [1], "memory": False}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(config), "--out", str(out)]


def environment() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}


def run_to_end(config: Path, out: Path, log: Path) -> None:
    with open(log, "ab") as sink:
        done = subprocess.run(
            command(config, out), stdout=sink, stderr=sink, env=environment(), cwd=REPO, timeout=RUN_TIMEOUT
        )
    assert done.returncode == 0, log.read_text()[-3000:]


def kill_when(config: Path, out: Path, log: Path, ready: Callable[[], bool], what: str) -> None:
    """Start `edgepipe run`, SIGKILL its whole process group as soon as ``ready()``, and wait for it to die."""
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            command(config, out), stdout=sink, stderr=sink, env=environment(), cwd=REPO, start_new_session=True
        )
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not ready():
            assert process.poll() is None, (
                f"edgepipe exited {process.returncode} before {what}:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"no {what} within {RUN_TIMEOUT} s"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"edgepipe finished before it could be killed {what}"


def artifact_files(out: Path) -> list[Path]:
    folder = out / "artifacts"
    return sorted(p for p in folder.iterdir() if not TEMP_FILE.match(p.name)) if folder.is_dir() else []


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_recorded_files_whole(out: Path) -> None:
    """Every file the manifest records is the file it recorded (a kill leaves no half-written artifact)."""
    for name, record in manifest(out)["artifacts"].items():
        assert sha256_file(out / record["path"]) == record["sha256"], f"{name} is not the file its record describes"


def measured(measurement: dict) -> dict:
    """What a measurement must reproduce: no latencies; for a TFLite file run through tf2onnx, not the converted
    file's size either. Each process converts anew, and tf2onnx numbers its constant-folded initializers
    (``const_fold_opt__96``) in an order that is not stable from one process to the next: the same graph and
    outputs (accuracy, agreement and parity are compared), a few bytes more or less."""
    row = {key: measurement.get(key) for key in MEASURED}
    if measurement["runtime"] == TF2ONNX_RUNTIME:
        row["file_bytes"] = None
    return row


def comparable(raw: dict) -> dict:
    """The part of a manifest that a resumed run must reproduce exactly (see the module docstring)."""
    artifacts = {}
    for name, record in raw["artifacts"].items():
        info = {key: value for key, value in record["info"].items() if key != "resumed_from_epoch"}
        artifacts[name] = {**record, "info": info}
    measurements = sorted(json.dumps(measured(m), sort_keys=True) for m in raw["measurements"])
    kept = {key: raw[key] for key in raw if key not in ("created", "artifacts", "measurements")}
    return {**kept, "artifacts": artifacts, "measurements": measurements}


def test_killed_twice_then_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    log = tmp_path / "edgepipe.log"
    run_to_end(config, reference, tmp_path / "reference.log")

    progress = resumed / "checkpoints" / "student.progress.pt"
    kill_when(config, resumed, log, progress.is_file, "during distillation")
    assert "student" not in manifest(resumed)["artifacts"] and not (resumed / "checkpoints" / "student.pt").exists()
    killed_at = torch.load(progress, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= killed_at < DISTILL_EPOCHS
    assert_recorded_files_whole(resumed)

    targets = len(TINY_CONFIG["export"]["targets"])
    kill_when(config, resumed, log, lambda: 1 <= len(artifact_files(resumed)) < targets, "during export")
    exported = [name for name, r in manifest(resumed)["artifacts"].items() if r["stage"] == "export"]
    assert len(exported) < targets, "every target was exported before the kill"
    assert_recorded_files_whole(resumed)

    run_to_end(config, resumed, log)
    first, second = manifest(reference), manifest(resumed)
    assert second["artifacts"]["student"]["info"]["resumed_from_epoch"] == killed_at
    assert first["artifacts"]["student"]["info"]["resumed_from_epoch"] is None
    assert set(second["artifacts"]) == set(first["artifacts"]) >= {"teacher", "student", "calibration", *TARGETS}
    for name in first["artifacts"]:
        assert comparable(second)["artifacts"][name] == comparable(first)["artifacts"][name], name
    assert comparable(second) == comparable(first)
    assert [p.name for p in artifact_files(resumed)] == [p.name for p in artifact_files(reference)]
