"""DDP under torchrun on CPU (gloo): two processes train one student, rank 0 alone writes, and the result
matches a single-process run within noise; the helpers behave as no-ops without a process group."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config_load import parse_config
from pipeline.errors import ConfigError
from pipeline.io import sha256_file
from pipeline.manifest import Manifest
from pipeline.rundir import RunDir
from pipeline.stages.distill import STUDENT_PATH, TEACHER_PATH, run_distill
from pipeline.training import distributed
from pipeline.training.run_models import load_student
from pipeline.training.train import accuracy, predict_logits

# Test top-1 of the 2-process student minus the 1-process one, on digits (359 test images, 0.28 points each),
# 3 epochs, over six data seeds: +0.3, -0.6, -0.3, 0.0, +0.6, 0.0. Allow 3 points (11 images).
DDP_TOLERANCE = 3.0


pytestmark = pytest.mark.usefixtures("one_thread")


def torchrun_distill(root: Path, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m pipeline distill ROOT` (a free port, so parallel runs
    do not collide), as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "120"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "pipeline",
        "distill",
        str(root),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_two_processes_match_one_process(
    tmp_path: Path, tiny_config_dict: dict, teacher_checkpoint: Path
) -> None:
    """Two DDP processes write one clean manifest (rank 0 only, atomically) recording `processes: 2`, leave no
    temp or progress files, log each epoch once, and distil a student whose test accuracy is within noise of
    the same config trained in one process."""
    tiny_config_dict["teacher"]["checkpoint"] = str(teacher_checkpoint)
    tiny_config_dict["export"]["targets"] = []
    tiny_config_dict["distill"]["epochs"] = 3
    ddp_root, single_root = tmp_path / "ddp", tmp_path / "single"
    RunDir.create(ddp_root, parse_config(copy.deepcopy(tiny_config_dict)))

    result = torchrun_distill(ddp_root)
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    for epoch in (1, 2, 3):
        assert output.count(f"student epoch {epoch}/3:") == 1, output[-3000:]

    manifest_json = json.loads((ddp_root / "manifest.json").read_text())
    Manifest.load(ddp_root / "manifest.json")  # and it is a valid typed manifest
    artifacts = manifest_json["artifacts"]
    assert set(artifacts) == {"teacher", "student"}
    for record in artifacts.values():
        path = ddp_root / record["path"]
        assert path.is_file() and path.stat().st_size == record["bytes"]
        assert sha256_file(path) == record["sha256"]
    assert artifacts["teacher"]["path"] == TEACHER_PATH and artifacts["student"]["path"] == STUDENT_PATH
    info = artifacts["student"]["info"]
    assert info["processes"] == 2 and info["device"] == "cpu"
    assert info["epochs_run"] == 3 and info["resumed_from_epoch"] is None
    leftovers = [p.name for p in ddp_root.rglob("*") if ".tmp" in p.name or p.name.endswith(".progress.pt")]
    assert leftovers == []

    ddp = RunDir.open(ddp_root)
    ddp_student = load_student(ddp)
    assert (
        round(accuracy(predict_logits(ddp_student, ddp.splits, ddp.splits.val), ddp.splits.val.y), 2)
        == info["val_accuracy"]
    )  # the saved weights are the best epoch every rank agreed on

    single = RunDir.create(single_root, parse_config(copy.deepcopy(tiny_config_dict)))
    single_student = run_distill(single)
    single_info = single.manifest.artifacts["student"].info
    assert single_info["processes"] == 1
    assert single.manifest.artifacts["student"].id == artifacts["student"]["id"]  # same config, same id
    test = ddp.splits.test
    ddp_accuracy = accuracy(predict_logits(ddp_student, ddp.splits, test), test.y)
    single_accuracy = accuracy(predict_logits(single_student, single.splits, test), test.y)
    assert single_accuracy > 85
    assert abs(ddp_accuracy - single_accuracy) <= DDP_TOLERANCE, (ddp_accuracy, single_accuracy)


def test_torchrun_hint_loss_trains_the_adapter_in_ddp(
    tmp_path: Path, tiny_config_dict: dict, teacher_checkpoint: Path
) -> None:
    """A learned FitNets adapter sits inside the DDP module with the student: a 2-process hint run with early
    stopping (every rank must take the same decision, or the run hangs) finishes and records both terms."""
    tiny_config_dict["teacher"]["checkpoint"] = str(teacher_checkpoint)
    tiny_config_dict["export"]["targets"] = []
    tiny_config_dict["distill"]["losses"] = [
        {"name": "hinton", "temperature": 4, "alpha": 0.5},
        {"name": "hint", "weight": 0.5, "student_layer": "6", "teacher_layer": "6"},
    ]
    tiny_config_dict["distill"].update(epochs=3, patience=1)
    root = tmp_path / "ddp"
    RunDir.create(root, parse_config(tiny_config_dict))
    result = torchrun_distill(root)
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads((root / "manifest.json").read_text())["artifacts"]["student"]["info"]
    assert info["processes"] == 2
    assert [spec["name"] for spec in info["losses"]] == ["hinton", "hint"]
    assert info["val_accuracy"] > 80
    assert info["epochs_run"] == len(info["history"]) <= 3
    assert info["stopped_early"] == (info["epochs_run"] < 3)


def test_helpers_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside torchrun: one process of rank 0 that writes; barriers and buffer syncs are no-ops."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.setup_from_env()
    assert not torch.distributed.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    distributed.barrier()
    module = torch.nn.BatchNorm2d(3)
    before = module.running_mean.clone()
    distributed.sync_buffers(module)
    assert torch.equal(module.running_mean, before)
    distributed.teardown()


def test_world_size_one_from_torchrun_env_starts_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torchrun --nproc-per-node 1` (WORLD_SIZE=1) trains as a plain single process."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.setup_from_env()
    assert not torch.distributed.is_initialized()


def test_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu is always CPU; auto picks CPU without CUDA; asking for cuda without one is a ConfigError."""
    assert distributed.device_for("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert distributed.device_for("auto") == torch.device("cuda", 0)
        return
    assert distributed.device_for("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: cuda") as caught:
        distributed.device_for("cuda")
    assert "\n" not in caught.value.one_line()
