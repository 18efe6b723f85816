"""Mixed training batches: mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019).

A batch is blended with a shuffled copy of itself; the returned weight ``lam`` is the share of the original batch,
so a label loss is ``lam * loss(y) + (1 - lam) * loss(y[perm])``. Draws come from torch's global generator, which
the training seeds and saves in its progress checkpoint, so a resumed run mixes as an uninterrupted one.
"""

from __future__ import annotations

import torch

from pipeline.config import TrainConfig


def mix_batch(x: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(mixed x, perm, lam)`` for a float N×C×H×W batch ``x``: mixup or CutMix as ``cfg`` says (one of the two
    at random per batch when both are set). ``perm`` indexes the rows each image was mixed with; ``lam`` ∈ [0, 1]
    is the share of each image that is its own (CutMix: 1 − the pasted box's area share)."""
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup == 0 or bool(torch.rand(()) < 0.5))
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0]).to(x.device)
    if not use_cutmix:
        return lam * x + (1 - lam) * x[perm], perm, lam
    top, bottom, left, right = _box(x.shape[-2], x.shape[-1], 1 - lam)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    pasted = (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
    return mixed, perm, 1 - pasted


def _box(height: int, width: int, share: float) -> tuple[int, int, int, int]:
    """A box of about ``share`` of the image's area, its centre uniform over the image, clipped to it
    (top, bottom, left, right; pixel rows/columns, end exclusive)."""
    h, w = round(height * share**0.5), round(width * share**0.5)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, left = max(cy - h // 2, 0), max(cx - w // 2, 0)
    return top, min(cy + h - h // 2, height), left, min(cx + w - w // 2, width)
