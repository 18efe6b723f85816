"""The training loop: LR schedules, seeds, early stop and best-epoch restore, resume after SIGKILL, and the
label-only baselines, one per training seed (recorded, reused, benched, reported, and reachable from the CLI)."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from pipeline.config import LossSpec, TrainConfig
from pipeline.config_load import parse_config
from pipeline.rundir import RunDir
from pipeline.stages.distill import STUDENT_PATH, run_distill
from pipeline.training.losses import Objective
from pipeline.training.models import build_model, save_checkpoint
from pipeline.training.run_models import load_model, load_student
from pipeline.training.train import TrainJob, accuracy, fit, predict_logits, seed_everything

PROGRESS_PATH = "checkpoints/student.progress.pt"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def still_one_thread(one_thread) -> None:
    torch.set_num_threads(1)  # bench sets its own thread count for the rest of the process


@pytest.fixture
def student_config(tiny_config_dict: dict, teacher_checkpoint: Path) -> dict:
    """The tiny digits config with the pre-trained teacher and no export targets."""
    tiny_config_dict["teacher"]["checkpoint"] = str(teacher_checkpoint)
    tiny_config_dict["export"]["targets"] = []
    return tiny_config_dict


def inode(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def val_accuracy(model: nn.Module, splits) -> float:
    return round(accuracy(predict_logits(model, splits, splits.val), splits.val.y), 2)


def make_job(
    splits, tmp_path: Path, *, seed: int = 0, job_id: str = "job", objective: nn.Module | None = None, **train
) -> TrainJob:
    """A student-cnn trained from labels alone (no teacher), built the way the distill stage builds it."""
    seed_everything(seed)
    model = build_model("student-cnn", 1, 10)
    example = torch.from_numpy(splits.normalize(splits.train.x[:2]))
    objective = objective if objective is not None else Objective([LossSpec(name="ce")], model, None, example)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 64, "device": "cpu", **train})
    return TrainJob(
        name="student",
        model=model,
        objective=objective,
        cfg=cfg,
        seed=seed,
        progress_path=tmp_path / "student.progress.pt",
        job_id=job_id,
    )


def assert_early_stop_consistent(summary: dict, cfg: TrainConfig) -> None:
    """epochs_run, stopped_early, best_epoch and val_accuracy agree with the per-epoch history."""
    history = [entry["val_accuracy"] for entry in summary["history"]]
    assert summary["epochs_run"] == len(history) <= cfg.epochs
    assert [entry["epoch"] for entry in summary["history"]] == list(range(1, len(history) + 1))
    assert summary["best_epoch"] == int(np.argmax(history)) + 1  # the first epoch reaching the maximum
    assert summary["val_accuracy"] == history[summary["best_epoch"] - 1]
    assert summary["stopped_early"] == (len(history) < cfg.epochs)
    if summary["stopped_early"]:
        assert cfg.patience is not None
        # stopped as soon as `patience` epochs in a row did not beat the best one before them
        assert len(history) - summary["best_epoch"] == cfg.patience
        assert max(history[-cfg.patience :]) <= max(history[: -cfg.patience])
    elif cfg.patience is not None:
        for seen in range(1, len(history)):  # no earlier point where it should have stopped
            assert seen - (int(np.argmax(history[:seen])) + 1) < cfg.patience


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records the learning rate of every step it takes."""

    rates: list[float] = []

    def step(self, closure=None):
        RecordingAdamW.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.fixture
def recorded_rates(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    RecordingAdamW.rates = []
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return RecordingAdamW.rates


# --- schedules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step"])
def test_schedule_sets_the_learning_rate_per_step(
    digits_splits, tmp_path: Path, recorded_rates: list[float], schedule: str
) -> None:
    """Per optimizer step over the whole budget: onecycle warms up to lr then anneals, cosine decays from lr
    towards 0, step keeps lr for step_epochs epochs and then multiplies it by gamma; each of them trains."""
    lr, gamma, epochs = 0.01, 0.25, 3
    job = make_job(digits_splits, tmp_path, epochs=epochs, lr=lr, schedule=schedule, gamma=gamma, step_epochs=2)
    summary = fit(job, digits_splits)
    steps = math.ceil(len(digits_splits.train) / 64)
    rates = np.array(recorded_rates)
    assert len(rates) == epochs * steps
    assert summary["val_accuracy"] > 80
    if schedule == "onecycle":
        peak = int(rates.argmax())
        assert rates[0] == pytest.approx(lr / 25)  # OneCycleLR's default div_factor
        assert rates.max() == pytest.approx(lr, rel=1e-3)
        assert 0 < peak < 0.25 * len(rates)
        assert (np.diff(rates[: peak + 1]) >= 0).all() and (np.diff(rates[peak:]) <= 0).all()
        assert rates[-1] < lr / 100
    elif schedule == "cosine":
        assert rates[0] == pytest.approx(lr)
        assert (np.diff(rates) <= 1e-12).all()
        assert rates[len(rates) // 2] == pytest.approx(lr / 2, rel=0.05)
        assert rates[-1] < lr / 100
    else:
        np.testing.assert_allclose(rates[: 2 * steps], lr, rtol=1e-9)
        np.testing.assert_allclose(rates[2 * steps :], lr * gamma, rtol=1e-9)


# --- seeds ---------------------------------------------------------------------------------------------------


def test_same_seed_same_student_other_seed_differs(digits_splits, tmp_path: Path) -> None:
    """Two fits with the same seed give bit-identical weights and history; another seed gives another model."""
    results = []
    for index, seed in enumerate((0, 0, 1)):
        torch.manual_seed(1000 + index)  # whatever drew random numbers before must not matter
        job = make_job(digits_splits, tmp_path / str(index), seed=seed, epochs=1)
        results.append((fit(job, digits_splits), job.model.state_dict()))
    (first, first_state), (second, second_state), (_, other_state) = results
    assert first["history"] == second["history"]
    for key, tensor in first_state.items():
        assert torch.equal(second_state[key], tensor), key
    assert not torch.equal(other_state["0.weight"], first_state["0.weight"])


# --- early stop and best epoch -----------------------------------------------------------------------------


class LabelsGoWrongLater(nn.Module):
    """Cross-entropy with the true labels for ``good_steps`` steps, then with shifted (wrong) labels, so val
    accuracy peaks early and then collapses: a deterministic stall for the early-stop rule."""

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    needs_teacher = False

    def __init__(self, good_steps: int) -> None:
        super().__init__()
        self.good_steps, self.calls = good_steps, 0

    def forward(self, student, teacher, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.good_steps:
            labels = (labels + 1) % 10
        return F.cross_entropy(student.logits, labels)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stop_after_patience_and_best_epoch_restored(digits_splits, tmp_path: Path, patience: int) -> None:
    """Val accuracy peaks in epoch 1 and then falls: training stops after 1 + patience epochs, and the model
    handed back (and kept in the progress file) is epoch 1's, not the last one."""
    steps = math.ceil(len(digits_splits.train) / 64)
    job = make_job(
        digits_splits,
        tmp_path,
        epochs=6,
        lr=0.01,
        schedule="step",
        gamma=1.0,
        patience=patience,
        objective=LabelsGoWrongLater(good_steps=steps),
    )
    summary = fit(job, digits_splits)
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] == 1 + patience
    assert summary["best_epoch"] == 1
    assert summary["history"][-1]["val_accuracy"] < summary["val_accuracy"] - 20
    assert_early_stop_consistent(summary, job.cfg)
    assert val_accuracy(job.model, digits_splits) == summary["val_accuracy"]
    assert not job.model.training
    progress = torch.load(job.progress_path, weights_only=True)
    assert progress["epoch"] == 1 + patience and progress["best_epoch"] == 1


def test_distilled_student_is_its_best_val_epoch(tmp_path: Path, student_config: dict) -> None:
    """A real distillation with patience: the manifest's numbers agree with its history, and the saved
    student scores exactly the recorded best val accuracy."""
    student_config["distill"].update(epochs=4, patience=1, lr=0.02, schedule="step", gamma=1.0)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    run_distill(run)
    info = run.manifest.artifacts["student"].info
    assert_early_stop_consistent(info, run.config.distill)
    assert val_accuracy(load_student(run), run.splits) == info["val_accuracy"]
    assert info["resumed_from_epoch"] is None and info["processes"] == 1
    assert not run.path(PROGRESS_PATH).exists()


@pytest.mark.parametrize("threads", [2, "auto"])
def test_training_threads_are_recorded_and_given_back(
    digits_splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads
) -> None:
    """A pinned count trains at that count; auto at the usable cores (at most torch's own count); the record says
    which, and torch's thread count is the one it was once training ends."""
    import pipeline.measure.machine_load as machine_load

    monkeypatch.setattr(machine_load, "usable_cores", lambda: 1)
    during: list[int] = []
    job = make_job(digits_splits, tmp_path, epochs=1, threads=threads)
    job.model.register_forward_hook(lambda *_: during.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        summary = fit(job, digits_splits)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    expected = 2 if threads == 2 else 1
    assert summary["threads"] == expected and set(during) == {expected}
    assert summary["threads_from"] == ("config" if threads == 2 else "auto: 1 usable cores")


def test_more_training_threads_than_usable_cores_is_a_warning(
    digits_splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import pipeline.training.train as train

    monkeypatch.setattr(train, "usable_cores", lambda: 1)
    fit(make_job(digits_splits, tmp_path, epochs=1, threads=2), digits_splits)
    out = capsys.readouterr()
    assert "edgepipe: warning: student: 2 training threads on the 1 core(s) this process may use" in out.out + out.err


def test_training_threads_stay_out_of_config_dumps_when_auto() -> None:
    """auto is left out of a dumped section (cache keys made before the option hold); a pinned count is kept."""
    assert "threads" not in TrainConfig().model_dump()
    assert TrainConfig(threads=3).model_dump()["threads"] == 3


# --- progress checkpoints and resume -------------------------------------------------------------------------


def test_progress_with_another_job_id_is_ignored(digits_splits, tmp_path: Path) -> None:
    """A finished progress file of the same job is picked up (nothing left to train); one of another job is not."""
    first = make_job(digits_splits, tmp_path, job_id="a", epochs=1)
    fit(first, digits_splits)
    assert torch.load(first.progress_path, weights_only=True)["job_id"] == "a"

    same = make_job(digits_splits, tmp_path, job_id="a", seed=7, epochs=1)  # other init: must be overwritten
    summary = fit(same, digits_splits)
    assert summary["resumed_from_epoch"] == 1 and summary["epochs_run"] == 1
    for key, tensor in first.model.state_dict().items():
        assert torch.equal(same.model.state_dict()[key], tensor), key

    other = make_job(digits_splits, tmp_path, job_id="b", epochs=1)
    summary = fit(other, digits_splits)
    assert summary["resumed_from_epoch"] is None
    assert summary["epochs_run"] == 1
    assert torch.load(other.progress_path, weights_only=True)["job_id"] == "b"


def test_a_resumed_training_keeps_the_thread_count_it_began_with(
    digits_splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto on fewer cores after an interruption: the run goes on at its first count (the weights depend on it) and
    the record says so; a pinned count is part of the job's config, so it never meets another count's progress."""
    import pipeline.measure.machine_load as machine_load
    import pipeline.training.train as train

    class Interrupted(Exception):
        pass

    saved = train._save_progress

    def save_then_interrupt(*args, **kwargs) -> None:  # killed right after epoch 1's progress file is written
        saved(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(machine_load, "usable_cores", lambda: 2)
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(train, "_save_progress", save_then_interrupt)
        with pytest.raises(Interrupted):
            fit(make_job(digits_splits, tmp_path, job_id="a", epochs=2), digits_splits)
        monkeypatch.setattr(train, "_save_progress", saved)
        monkeypatch.setattr(machine_load, "usable_cores", lambda: 1)
        during: list[int] = []
        resumed = make_job(digits_splits, tmp_path, job_id="a", epochs=2)
        resumed.model.register_forward_hook(lambda *_: during.append(torch.get_num_threads()))
        summary = fit(resumed, digits_splits)
    finally:
        torch.set_num_threads(1)
    assert summary["resumed_from_epoch"] == 1 and summary["threads"] == 2 and set(during) == {2}
    assert (
        summary["threads_from"] == "auto: 1 usable cores; resumed at the 2 threads it began with (the weights "
        "depend on it)"
    )


def _distill_command(root: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "distill", str(root)]


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "120", "OMP_NUM_THREADS": "1"}


def _kill_after_epoch(root: Path, epoch: int, timeout: float = 240) -> int:
    """Start `python -m pipeline distill ROOT`, SIGKILL it once the student's progress file reaches ``epoch``;
    return the epoch the progress file held when it was killed."""
    progress, log = root / PROGRESS_PATH, root.parent / f"{root.name}.log"
    with open(log, "w") as output:  # a file, not a pipe: a full pipe would stall the run
        process = subprocess.Popen(_distill_command(root), stdout=output, stderr=subprocess.STDOUT, env=_env())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"distill ended before it could be killed: {log.read_text()[-2000:]}"
            if progress.is_file():
                try:
                    seen = torch.load(progress, map_location="cpu", weights_only=True)["epoch"]
                except (OSError, RuntimeError, EOFError):
                    seen = 0  # replaced while reading; look again
                if seen >= epoch:
                    process.send_signal(signal.SIGKILL)
                    process.wait(30)
                    return seen
            time.sleep(0.05)
        pytest.fail(f"no progress file with epoch ≥ {epoch} after {timeout} s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path: Path, student_config: dict) -> None:
    """`edgepipe distill` killed with SIGKILL after epoch ≥ 2 resumes from its progress checkpoint when run
    again, and ends with exactly the student an uninterrupted run makes; a changed config ignores that
    progress file and trains from epoch 0."""
    student_config["distill"]["epochs"] = 5
    killed, changed, clean = tmp_path / "killed", tmp_path / "changed", tmp_path / "clean"
    RunDir.create(killed, parse_config(copy.deepcopy(student_config)))
    epoch_at_kill = _kill_after_epoch(killed, 2)
    assert epoch_at_kill >= 2
    assert "student" not in json.loads((killed / "manifest.json").read_text())["artifacts"]

    # another config (fewer epochs: a new student id) in a copy holding the same progress file
    shutil.copytree(killed, changed)
    changed_config = copy.deepcopy(student_config)
    changed_config["distill"]["epochs"] = 2
    changed_run = RunDir.create(changed, parse_config(changed_config))
    run_distill(changed_run)
    changed_info = changed_run.manifest.artifacts["student"].info
    assert changed_info["resumed_from_epoch"] is None
    assert [entry["epoch"] for entry in changed_info["history"]] == [1, 2]

    finished = subprocess.run(_distill_command(killed), capture_output=True, text=True, timeout=300, env=_env())
    assert finished.returncode == 0, finished.stderr[-3000:]
    manifest = json.loads((killed / "manifest.json").read_text())
    info = manifest["artifacts"]["student"]["info"]
    assert 2 <= epoch_at_kill <= info["resumed_from_epoch"] < 5
    assert info["epochs_run"] == 5 and len(info["history"]) == 5
    assert not (killed / PROGRESS_PATH).exists()

    clean_run = RunDir.create(clean, parse_config(copy.deepcopy(student_config)))
    run_distill(clean_run)
    clean_info = clean_run.manifest.artifacts["student"].info
    assert clean_info["resumed_from_epoch"] is None
    assert manifest["artifacts"]["student"]["id"] == clean_run.manifest.artifacts["student"].id
    assert info["history"] == clean_info["history"]
    resumed_state = torch.load(killed / STUDENT_PATH, weights_only=True)["state_dict"]
    clean_state = torch.load(clean / STUDENT_PATH, weights_only=True)["state_dict"]
    for key, tensor in clean_state.items():  # resuming is exact, not merely within noise
        assert torch.equal(resumed_state[key], tensor), key


# --- baseline --------------------------------------------------------------------------------------------------


def _perturbed_teacher(source: Path, target: Path) -> Path:
    """Another teacher: the same checkpoint with its classifier bias shifted (a different file and sha256)."""
    payload = torch.load(source, weights_only=True)
    state = dict(payload["state_dict"])
    state["17.bias"] = state["17.bias"] + 0.01
    model = build_model("teacher-cnn", 1, 10)
    model.load_state_dict(state)
    save_checkpoint(model, target, payload["meta"])
    return target


def test_baseline_added_later_is_label_only_and_independent_of_the_teacher(
    tmp_path: Path, student_config: dict, teacher_checkpoint: Path
) -> None:
    """baseline=True adds a `baseline` artifact trained with ce alone and leaves the student as it was; a new
    teacher retrains the student but reuses the baseline, whose id does not depend on the teacher."""
    root = tmp_path / "run"
    run = RunDir.create(root, parse_config(copy.deepcopy(student_config)))
    run_distill(run)
    assert "baseline" not in run.manifest.artifacts
    student_state = inode(root / STUDENT_PATH)

    run = RunDir.open(root)
    run_distill(run, baseline=True)
    assert inode(root / STUDENT_PATH) == student_state
    record = run.manifest.artifacts["baseline"]
    assert record.stage == "distill" and record.parent is None
    assert record.path == "checkpoints/baseline.pt"
    assert record.info["losses"] == [{"name": "ce", "weight": 1.0}]
    assert record.info["arch"] == "student-cnn"
    assert record.info["epochs_run"] == student_config["distill"]["epochs"]
    assert run.manifest.artifacts["student"].info["losses"][0]["name"] == "hinton"
    assert not list((root / "checkpoints").glob("*.progress.pt"))
    baseline = load_model(run, "baseline")
    assert val_accuracy(baseline, run.splits) == record.info["val_accuracy"]
    baseline_state, baseline_id = inode(root / "checkpoints/baseline.pt"), record.id
    student_id = run.manifest.artifacts["student"].id

    student_config["teacher"]["checkpoint"] = str(_perturbed_teacher(teacher_checkpoint, tmp_path / "other.pt"))
    run = RunDir.create(root, parse_config(student_config))
    run_distill(run, baseline=True)
    assert run.manifest.artifacts["student"].id != student_id
    assert inode(root / STUDENT_PATH) != student_state
    assert run.manifest.artifacts["baseline"].id == baseline_id
    assert inode(root / "checkpoints/baseline.pt") == baseline_state


def test_baseline_is_retrained_when_the_data_changes(tmp_path: Path, student_config: dict) -> None:
    """Another validation split (data.val_fraction) means other training data: a new baseline id."""
    student_config["distill"]["epochs"] = 1
    root = tmp_path / "run"
    run = RunDir.create(root, parse_config(copy.deepcopy(student_config)))
    run_distill(run, baseline=True)
    first_id = run.manifest.artifacts["baseline"].id
    student_config["data"]["val_fraction"] = 0.2
    run = RunDir.create(root, parse_config(student_config))
    run_distill(run, baseline=True)
    assert run.manifest.artifacts["student"].info["history"]  # the student was retrained
    assert run.manifest.artifacts["baseline"].id != first_id


def test_baseline_seeds_train_one_baseline_per_training_seed(tmp_path: Path, student_config: dict) -> None:
    """distill.baseline_seeds: 2 keeps the run's single baseline (same id and file: the first seed is the run's) and
    adds `baseline-2`, trained with seed + 1 (other weights), each recording its training seed; a second call
    reuses both, --force retrains both, and a count lowered again drops the extra record."""
    student_config["distill"].update(epochs=1, baseline=True)
    root = tmp_path / "run"
    run = RunDir.create(root, parse_config(copy.deepcopy(student_config)))
    run_distill(run)
    assert [name for name in run.manifest.artifacts if name.startswith("baseline")] == ["baseline"]
    single = run.manifest.artifacts["baseline"].id, inode(root / "checkpoints/baseline.pt")

    student_config["distill"]["baseline_seeds"] = 2
    run = RunDir.create(root, parse_config(copy.deepcopy(student_config)))
    run_distill(run)
    first, second = run.manifest.artifacts["baseline"], run.manifest.artifacts["baseline-2"]
    assert (first.id, inode(root / first.path)) == single
    assert second.path == "checkpoints/baseline-2.pt" and second.id != first.id and second.parent is None
    assert (first.info["train_seed"], second.info["train_seed"]) == (0, 1)
    assert second.info["losses"] == [{"name": "ce", "weight": 1.0}]
    assert run.manifest.artifacts["student"].info["train_seed"] == 0
    weights = [load_model(run, name).state_dict() for name in ("baseline", "baseline-2")]
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert val_accuracy(load_model(run, "baseline-2"), run.splits) == second.info["val_accuracy"]
    files = {name: inode(root / f"checkpoints/{name}.pt") for name in ("student", "baseline", "baseline-2")}

    run = RunDir.open(root)
    run_distill(run)
    assert {name: inode(root / f"checkpoints/{name}.pt") for name in files} == files
    assert run.manifest.artifacts["baseline-2"].id == second.id
    run_distill(run, force=True)
    assert all(inode(root / f"checkpoints/{name}.pt") != files[name] for name in files)

    student_config["distill"]["baseline_seeds"] = 1
    run = RunDir.create(root, parse_config(student_config))
    run_distill(run)
    assert "baseline-2" not in run.manifest.artifacts and run.manifest.artifacts["baseline"].id == first.id


def test_bench_and_report_show_the_kd_gain(tmp_path: Path, student_config: dict) -> None:
    """distill.baseline: true with baseline_seeds: 2 trains two baselines; bench measures each under pytorch and
    the report prints the baselines line and the KD gain (student − the baselines' mean test top-1, beside their
    seed-to-seed spread) from those measurements."""
    from pipeline.stages.bench import run_bench
    from pipeline.stages.report import run_report

    student_config["distill"].update(baseline=True, baseline_seeds=2)
    run = RunDir.create(tmp_path / "run", parse_config(student_config))
    run_distill(run)
    run_bench(run)
    pytorch = {m.artifact: m for m in run.manifest.measurements if m.runtime == "pytorch"}
    assert set(pytorch) == {"teacher", "student", "baseline", "baseline-2"}
    for name in ("baseline", "baseline-2"):
        logits = predict_logits(load_model(run, name), run.splits, run.splits.test)
        assert pytorch[name].accuracy == round(accuracy(logits, run.splits.test.y), 2)
    run_report(run)
    report = (tmp_path / "run" / "report.md").read_text()
    baselines = [pytorch["baseline"].accuracy, pytorch["baseline-2"].accuracy]
    gain = pytorch["student"].accuracy - sum(baselines) / 2
    head = f"**KD gain** (test top-1, KD student − mean of 2 baseline students): {gain:+.2f} points; baselines' "
    assert head + "seed-to-seed std" in report and "(training seeds 0, 1): " in report
    assert "larger than the seed-to-seed spread" in report
    assert "baseline students: 2 training seeds (0, 1), same architecture and budget, loss 1·ce" in report
    assert "| baseline | pytorch" in report and "| baseline-2 | pytorch" in report


def test_cli_distill_baseline_and_force(tmp_path: Path, student_config: dict) -> None:
    """`edgepipe distill RUN --baseline` adds the baseline; a plain rerun rewrites nothing; --force retrains."""
    from pipeline.cli import app

    root = tmp_path / "run"
    RunDir.create(root, parse_config(student_config))
    cli = CliRunner()
    result = cli.invoke(app, ["distill", str(root), "--baseline"])
    assert result.exit_code == 0, result.output
    artifacts = json.loads((root / "manifest.json").read_text())["artifacts"]
    assert set(artifacts) == {"teacher", "student", "baseline"}
    assert artifacts["baseline"]["info"]["losses"] == [{"name": "ce", "weight": 1.0}]
    states = {name: inode(root / record["path"]) for name, record in artifacts.items()}

    assert cli.invoke(app, ["distill", str(root), "--baseline"]).exit_code == 0
    assert {name: inode(root / record["path"]) for name, record in artifacts.items()} == states

    assert cli.invoke(app, ["distill", str(root), "--force"]).exit_code == 0
    assert inode(root / STUDENT_PATH) != states["student"]
    assert inode(root / "checkpoints/baseline.pt") == states["baseline"]  # no --baseline: left alone
