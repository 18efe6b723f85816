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
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline import progress as view
from pipeline.config import TrainConfig
from pipeline.data.splits import DECODE_THREADS, Images, Splits
from pipeline.errors import EdgepipeError
from pipeline.io import atomic_path
from pipeline.measure.machine_load import training_threads, usable_cores
from pipeline.measure.runtimes import torch_threads_kept
from pipeline.training import distributed
from pipeline.training.losses import FeatureTap, Objective, Outputs
from pipeline.training.mixing import mix_batch
from pipeline.training.models import forward_failure


def seed_everything(seed: int) -> None:
    """Seed torch and numpy; deterministic algorithms where torch has them."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def to_input(x: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """A float NCHW batch in channels-last memory (oneDNN's fast path for CPU convolutions)."""
    tensor = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    return tensor.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    splits: Splits,
    images: Images,
    batch_size: int = 512,
    label: str | None = None,
    who: str = "model",
) -> np.ndarray:
    """Float logits (N × classes) of ``model`` over ``images`` (eval mode, normalized as every artifact expects),
    streamed in batches (an image folder is decoded a batch at a time); with ``label``, a bar of the progress view
    counts the batches.

    Raises:
        ModelError: the forward raised (``who`` names the model in the line).
    """
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device

    def logits(x: np.ndarray) -> np.ndarray:
        try:
            return model(to_input(x, device)).float().cpu().numpy()
        except EdgepipeError:
            raise
        except Exception as e:  # a forward that fails only at this batch size
            raise forward_failure(f"the {who}'s forward fails on an evaluation batch", tuple(x.shape), e) from e

    batches = splits.batches(images, batch_size)
    if label is None:
        return np.concatenate([logits(x) for x, _ in batches])
    chunks = []
    with view.task(label, total=math.ceil(len(images) / batch_size)) as bar:
        for x, _ in batches:
            chunks.append(logits(x))
            bar.advance()
    return np.concatenate(chunks)


class _EpochBatches(Dataset):
    """Item ``step`` is training batch ``step`` of one epoch: (float32 normalized N×C×H×W, int64 labels, row
    indices), or the ``_Failed`` data error of that batch.

    In-memory data draws its augmentation from one generator in step order (``workers`` must be 0), exactly as
    before loaders; a lazy folder's batch ``step`` draws from its own generator seeded by (``seed_parts``, step), so
    DataLoader workers may build batches in any order and the epoch is still the same."""

    def __init__(self, splits: Splits, order: np.ndarray, batch_size: int, seed_parts: list[int]) -> None:
        self.splits, self.order, self.batch_size, self.seed_parts = splits, order, batch_size, seed_parts
        self.steps = math.ceil(len(order) / batch_size)
        self.shared_rng = None if splits.lazy else np.random.default_rng(seed_parts)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int):
        index = self.order[step * self.batch_size : (step + 1) * self.batch_size]
        rng = self.shared_rng if self.shared_rng is not None else np.random.default_rng([*self.seed_parts, step])
        threads = 1 if torch.utils.data.get_worker_info() else DECODE_THREADS  # a worker decodes its batch alone
        try:
            pixels = self.splits.train_batch(index, rng, threads)
        except EdgepipeError as e:  # raised again in the training process as itself (workers would re-wrap it)
            return _Failed(type(e), str(e), e.hint)
        return self.splits.normalize(pixels), self.splits.train.y[index], index


@dataclass
class _Failed:
    """An edgepipe error raised while building a batch (in a worker process)."""

    kind: type
    message: str
    hint: str | None

    def raise_it(self) -> None:
        raise self.kind(self.message, self.hint)


def _epoch_loader(splits: Splits, order: np.ndarray, batch_size: int, seed_parts: list[int], device) -> DataLoader:
    """Batches of one epoch through torch's DataLoader: for a lazy folder ``splits.workers`` processes decode and
    prefetch them; in-memory data is batched in this process. The loader has its own generator (its base seed
    would otherwise be drawn from torch's global one, changing the training's random stream)."""
    workers = splits.workers if splits.lazy else 0
    return DataLoader(
        _EpochBatches(splits, order, batch_size, seed_parts),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator(),
        prefetch_factor=2 if workers else None,
    )


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
    teacher_logits: np.ndarray | None = None  # cached over the training split (no augmentation or mixing, no features)


class _Trainee(nn.Module):
    """Student and objective (with any learned adapters) as one module, so DDP syncs both."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.tap = FeatureTap(model, objective.student_layers, role="student")

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, teacher: Outputs | None, mixed: tuple | None = None
    ) -> torch.Tensor:
        """The objective on a batch; ``mixed`` = (the labels ``x`` was mixed with, the share ``lam`` of its own):
        ``lam * objective(labels) + (1 - lam) * objective(mixed labels)`` (label-free terms count once)."""
        student = Outputs(self.model(x), dict(self.tap.features))
        if mixed is None:
            return self.objective(student, teacher, labels)
        other, lam = mixed
        return lam * self.objective(student, teacher, labels) + (1 - lam) * self.objective(student, teacher, other)


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
        if job.teacher_logits is not None and not job.cfg.mixes:  # cached logits are of the unmixed images
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


@torch_threads_kept()  # the training's thread count is its own: what runs after it keeps the one it had
def fit(job: TrainJob, splits: Splits) -> dict:
    """Train ``job.model``; restore the weights of its best val epoch. Returns what happened, for the manifest."""
    cfg, world, rank = job.cfg, distributed.world_size(), distributed.rank()
    device = distributed.device_for(cfg.device)
    progress = _load_progress(job)
    threads, threads_from = training_threads(cfg.threads, torch.get_num_threads())
    if progress and cfg.threads == "auto" and progress.get("threads", threads) != threads:
        threads_from += f"; resumed at the {progress['threads']} threads it began with (the weights depend on it)"
        threads = progress["threads"]
    usable = usable_cores()
    if threads > usable and distributed.is_main():
        view.warn(
            f"edgepipe: warning: {job.name}: {threads} training threads on the {usable} core(s) this process may use: "
            "they share cores and wait for each other (slower, same result); threads: auto uses the usable cores"
        )
    torch.set_num_threads(threads)
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
    if progress:
        trainee_module = trainee.module if world > 1 else trainee
        trainee_module.load_state_dict(progress["trainee"])
        optimizer.load_state_dict(progress["optimizer"])
        schedule.load_state_dict(progress["schedule"])
        torch.set_rng_state(progress["torch_rng"])
        state.update({k: progress[k] for k in ("epoch", "best_accuracy", "best_epoch", "best_state", "history")})
        state["resumed_from"] = progress["epoch"]
    with view.task(job.name, total=cfg.epochs * steps_per_epoch, completed=state["epoch"] * steps_per_epoch) as bar:
        for epoch in range(state["epoch"], cfg.epochs):
            if _stale(state, cfg):
                break
            trainee.train()
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            for batch in _epoch_loader(splits, order, batch_size, [job.seed, epoch, rank], device):
                if isinstance(batch, _Failed):
                    batch.raise_it()
                x_batch, y_batch, index = batch
                x = to_input(x_batch, device)
                y = y_batch.to(device)
                mixed = None
                if cfg.mixes:  # the teacher below sees the mixed batch too
                    x, perm, lam = mix_batch(x, cfg)
                    mixed = (y[perm], lam)
                try:
                    loss = trainee(x, y, teacher(x, index.numpy()), mixed)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                except EdgepipeError:
                    raise
                except Exception as e:  # a forward that fails only in training mode or at this batch size
                    raise forward_failure(f"training the {job.name} fails on a batch", tuple(x.shape), e) from e
                optimizer.step()
                schedule.step()
                bar.advance(status=f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f}", boundary=False)
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
        "threads": threads,
        "threads_from": threads_from,
        "history": state["history"],
    }


def _stale(state: dict, cfg: TrainConfig) -> bool:
    """Early stop: ``patience`` epochs have passed since the best one."""
    return cfg.patience is not None and state["epoch"] - state["best_epoch"] >= cfg.patience


def _end_epoch(job: TrainJob, splits: Splits, state: dict, epoch: int, last_loss: float, bar: view.Task) -> None:
    """Validate, keep the best epoch, and say the epoch's line; ``bar``'s ETA is measured up to here (validation
    included)."""
    distributed.sync_buffers(job.model)
    val_accuracy = accuracy(predict_logits(job.model, splits, splits.val, who=job.name), splits.val.y)
    state["epoch"] = epoch + 1
    state["history"].append({"epoch": epoch + 1, "loss": round(last_loss, 4), "val_accuracy": round(val_accuracy, 2)})
    if val_accuracy > state["best_accuracy"]:
        state.update(
            best_accuracy=val_accuracy,
            best_epoch=epoch + 1,
            best_state={k: v.detach().cpu().clone() for k, v in job.model.state_dict().items()},
        )
    bar.mark()
    if distributed.is_main():
        view.log(
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
                    "threads": torch.get_num_threads(),
                    **{k: state[k] for k in ("epoch", "best_accuracy", "best_epoch", "best_state", "history")},
                },
                tmp,
            )
    distributed.barrier()
