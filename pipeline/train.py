"""Training loops: the teacher from labels, the student by distillation; best epoch chosen on val."""

from __future__ import annotations

import copy
import functools
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.config import DistillConfig, TrainConfig
from pipeline.data import Images, Splits
from pipeline.losses import LOSSES
from pipeline.progress import progress_bar

BatchLoss = Callable[[torch.Tensor, torch.Tensor, np.ndarray], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed torch and numpy; deterministic algorithms where torch has them."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def predict_logits(model: nn.Module, splits: Splits, images: Images, batch_size: int = 512) -> np.ndarray:
    """Float logits of ``model`` over ``images`` (eval mode, normalized as every artifact expects)."""
    model.eval()
    chunks = [
        model(to_input(splits.normalize(images.x[i : i + batch_size]))).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def to_input(x: np.ndarray) -> torch.Tensor:
    """A float NCHW batch in channels-last memory (oneDNN's fast path for CPU convolutions)."""
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels).mean() * 100)


def fit(model: nn.Module, splits: Splits, cfg: TrainConfig, seed: int, batch_loss: BatchLoss, name: str) -> dict:
    """Train with AdamW + cosine schedule; restore the weights of the best val epoch. Returns history."""
    seed_everything(seed)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(splits.train) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    rng = np.random.default_rng(seed)
    best = {"val_accuracy": -1.0}
    history = []
    with progress_bar() as bar:
        task = bar.add_task(f"{name} epoch 1/{cfg.epochs}", total=cfg.epochs * steps_per_epoch, status="")
        for epoch in range(cfg.epochs):
            model.train()
            order = rng.permutation(len(splits.train))
            for step in range(steps_per_epoch):
                index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x = to_input(splits.normalize(splits.train.x[index]))
                y = torch.from_numpy(splits.train.y[index])
                loss = batch_loss(model(x), y, index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
            val_accuracy = accuracy(predict_logits(model, splits, splits.val), splits.val.y)
            history.append({"epoch": epoch + 1, "loss": round(loss.item(), 4), "val_accuracy": round(val_accuracy, 2)})
            bar.update(task, description=f"{name} epoch {epoch + 1}/{cfg.epochs} val {val_accuracy:.2f}%")
            bar.console.log(f"{name} epoch {epoch + 1}/{cfg.epochs}: loss {loss.item():.4f}, val top-1 {val_accuracy:.2f}%")
            if val_accuracy > best["val_accuracy"]:
                best = {"val_accuracy": val_accuracy, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best.pop("state"))
    model.eval()
    return {"best_epoch": best["epoch"], "val_accuracy": round(best["val_accuracy"], 2), "history": history}


def train_teacher(model: nn.Module, splits: Splits, cfg: TrainConfig, seed: int) -> dict:
    """Supervised training from labels."""
    return fit(model, splits, cfg, seed, lambda logits, y, index: nn.functional.cross_entropy(logits, y), "teacher")


def distill_student(student: nn.Module, teacher_train_logits: np.ndarray, splits: Splits, cfg: DistillConfig, seed: int) -> dict:
    """Distil from teacher logits precomputed once on the (un-augmented) training split."""
    loss_fn = functools.partial(LOSSES.get(cfg.loss), temperature=cfg.temperature, alpha=cfg.alpha)
    teacher_logits = torch.from_numpy(teacher_train_logits)

    def batch_loss(logits: torch.Tensor, y: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        return loss_fn(logits, teacher_logits[index], y)

    return fit(student, splits, cfg, seed, batch_loss, "student")
