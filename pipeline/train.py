"""The training loop shared by teacher, student and baseline: DDP-aware, resumable, best epoch chosen on val.

Each epoch ends with an atomic progress checkpoint (model, optimizer, schedule, RNG, history); a killed run
continues from the last finished epoch and ends where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from pipeline import distributed
from pipeline.config import TrainConfig
from pipeline.data import Images, Splits
from pipeline.io import atomic_path
from pipeline.losses import FeatureTap, Objective, Outputs
from pipeline.progress import progress_bar


def seed_everything(seed: int) -> None:
    """Seed torch and numpy; deterministic algorithms where torch has them."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def to_input(x: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A float NCHW batch in channels-last memory (oneDNN's fast path for CPU convolutions)."""
    return torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(model: nn.Module, splits: Splits, images: Images, batch_size: int = 512) -> np.ndarray:
    """Float logits of ``model`` over ``images`` (eval mode, normalized as every artifact expects)."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    chunks = [
        model(to_input(splits.normalize(images.x[i : i + batch_size]), device)).float().cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels).mean() * 100)


@dataclass
class TrainJob:
    """One model to train: what it learns from and where its progress is kept."""

    name: str
    model: nn.Module
    objective: Objective
    cfg: TrainConfig
    seed: int
    progress_path: Path
    job_id: str
    teacher: nn.Module | None = None
    teacher_logits: np.ndarray | None = None  # cached over the training split (no augmentation, no features)


class _Trainee(nn.Module):
    """Student and objective (with any learned adapters) as one module, so DDP syncs both."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.tap = FeatureTap(model, objective.student_layers, role="student")

    def forward(self, x: torch.Tensor, labels: torch.Tensor, teacher: Outputs | None) -> torch.Tensor:
        logits = self.model(x)
        return self.objective(Outputs(logits, dict(self.tap.features)), teacher, labels)


def _schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs * steps_per_epoch, gamma=cfg.gamma)


class _Teacher:
    """Teacher outputs for a batch: cached logits when possible, else a no-grad forward pass."""

    def __init__(self, job: TrainJob, device: torch.device) -> None:
        self.job = job
        layers = job.objective.teacher_layers
        self.tap = FeatureTap(job.teacher, layers, role="teacher") if job.teacher is not None and layers else None
        self.cached = None
        if job.teacher_logits is not None:
            self.cached = torch.from_numpy(job.teacher_logits).to(device)
        elif job.teacher is not None:
            job.teacher.to(device).eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: np.ndarray) -> Outputs | None:
        if not self.job.objective.needs_teacher:
            return None
        if self.cached is not None:
            return Outputs(self.cached[torch.from_numpy(index)])
        logits = self.job.teacher(x)
        return Outputs(logits, dict(self.tap.features) if self.tap else {})


def _load_progress(job: TrainJob) -> dict | None:
    if not job.progress_path.is_file():
        return None
    state = torch.load(job.progress_path, map_location="cpu", weights_only=True)
    return state if state.get("job_id") == job.job_id else None


def fit(job: TrainJob, splits: Splits) -> dict:
    """Train ``job.model``; restore the weights of its best val epoch. Returns what happened, for the manifest."""
    cfg, world, rank = job.cfg, distributed.world_size(), distributed.rank()
    device = distributed.device_for(cfg.device)
    seed_everything(job.seed)
    job.model.to(device).to(memory_format=torch.channels_last)
    job.objective.to(device)
    trainee: nn.Module = _Trainee(job.model, job.objective)
    if world > 1:
        trainee = nn.parallel.DistributedDataParallel(
            trainee, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = DistributedSampler(range(len(splits.train)), num_replicas=world, rank=rank, shuffle=True, seed=job.seed)
    batch_size = max(1, cfg.batch_size // world)
    steps_per_epoch = math.ceil(len(sampler) / batch_size)
    schedule = _schedule(optimizer, cfg, steps_per_epoch)
    teacher = _Teacher(job, device)
    state = {
        "epoch": 0,
        "best_accuracy": -1.0,
        "best_epoch": 0,
        "best_state": None,
        "history": [],
        "resumed_from": None,
    }
    progress = _load_progress(job)
    if progress:
        trainee_module = trainee.module if world > 1 else trainee
        trainee_module.load_state_dict(progress["trainee"])
        optimizer.load_state_dict(progress["optimizer"])
        schedule.load_state_dict(progress["schedule"])
        torch.set_rng_state(progress["torch_rng"])
        state.update({k: progress[k] for k in ("epoch", "best_accuracy", "best_epoch", "best_state", "history")})
        state["resumed_from"] = progress["epoch"]
    with progress_bar(disable=not distributed.is_main()) as bar:
        task = bar.add_task(
            job.name, total=cfg.epochs * steps_per_epoch, completed=state["epoch"] * steps_per_epoch, status=""
        )
        for epoch in range(state["epoch"], cfg.epochs):
            if _stale(state, cfg):
                break
            trainee.train()
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            rng = np.random.default_rng([job.seed, epoch, rank])
            for step in range(steps_per_epoch):
                index = order[step * batch_size : (step + 1) * batch_size]
                x = to_input(splits.normalize(splits.train_batch(index, rng)), device)
                y = torch.from_numpy(splits.train.y[index]).to(device)
                loss = trainee(x, y, teacher(x, index))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f}")
            _end_epoch(job, splits, state, epoch, loss.item(), bar)
            _save_progress(job, trainee.module if world > 1 else trainee, optimizer, schedule, state)
    job.model.load_state_dict(state["best_state"])
    job.model.eval()
    return {
        "best_epoch": state["best_epoch"],
        "val_accuracy": round(state["best_accuracy"], 2),
        "epochs_run": len(state["history"]),
        "stopped_early": len(state["history"]) < cfg.epochs,
        "resumed_from_epoch": state["resumed_from"],
        "processes": world,
        "device": str(device),
        "history": state["history"],
    }


def _stale(state: dict, cfg: TrainConfig) -> bool:
    """Early stop: ``patience`` epochs have passed since the best one."""
    return cfg.patience is not None and state["epoch"] - state["best_epoch"] >= cfg.patience


def _end_epoch(job: TrainJob, splits: Splits, state: dict, epoch: int, last_loss: float, bar) -> None:
    distributed.sync_buffers(job.model)
    val_accuracy = accuracy(predict_logits(job.model, splits, splits.val), splits.val.y)
    state["epoch"] = epoch + 1
    state["history"].append({"epoch": epoch + 1, "loss": round(last_loss, 4), "val_accuracy": round(val_accuracy, 2)})
    if val_accuracy > state["best_accuracy"]:
        state.update(
            best_accuracy=val_accuracy,
            best_epoch=epoch + 1,
            best_state={k: v.detach().cpu().clone() for k, v in job.model.state_dict().items()},
        )
    if distributed.is_main():
        bar.console.log(
            f"{job.name} epoch {epoch + 1}/{job.cfg.epochs}: loss {last_loss:.4f}, "
            f"val top-1 {val_accuracy:.2f}% (best {state['best_accuracy']:.2f}% at {state['best_epoch']})"
        )


def _save_progress(job: TrainJob, trainee: nn.Module, optimizer, schedule, state: dict) -> None:
    if distributed.is_main():
        with atomic_path(job.progress_path) as tmp:
            torch.save(
                {
                    "job_id": job.job_id,
                    "trainee": trainee.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    **{k: state[k] for k in ("epoch", "best_accuracy", "best_epoch", "best_state", "history")},
                },
                tmp,
            )
    distributed.barrier()
