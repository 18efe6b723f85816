"""Distillation losses, chosen in the config by registry name."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.registry import Registry

KDLoss = Callable[..., torch.Tensor]
LOSSES: Registry[KDLoss] = Registry("distillation loss")


@LOSSES.register("hinton")
def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton KD: ``alpha*CE(y) + (1-alpha)*T²*KL(softmax(t/T) ‖ softmax(s/T))``."""
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * hard + (1 - alpha) * temperature**2 * soft
