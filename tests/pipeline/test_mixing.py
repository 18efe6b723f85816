"""Mixed training batches (mixup, CutMix): what the batch, the weight and the loss become, and that the teacher
sees the mixed images (never cached logits of the unmixed ones)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import LossSpec, TrainConfig
from pipeline.training.losses import Objective, Outputs
from pipeline.training.mixing import mix_batch
from pipeline.training.train import TrainJob, _Teacher, _Trainee


def _batch() -> torch.Tensor:
    return torch.arange(4 * 1 * 6 * 6, dtype=torch.float32).reshape(4, 1, 6, 6)


def test_mixup_blends_each_image_with_its_partner() -> None:
    torch.manual_seed(0)
    x = _batch()
    mixed, perm, lam = mix_batch(x, TrainConfig(mixup=0.4))
    assert 0 <= lam <= 1 and sorted(perm.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])


def test_cutmix_pastes_one_box_and_lam_is_the_kept_share() -> None:
    x = _batch()  # every pixel of every image differs from every other image's
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, perm, lam = mix_batch(x, TrainConfig(cutmix=1.0))
        assert bool(((mixed == x) | (mixed == x[perm])).all())  # each pixel is its own or its partner's
        moved = [i for i in range(4) if perm[i] != i]
        if not moved:  # the shuffle kept every image in place
            assert torch.equal(mixed, x)
            continue
        changed = mixed[moved[0], 0] != x[moved[0], 0]
        rows, cols = torch.nonzero(changed, as_tuple=True)
        if len(rows) == 0:
            assert lam == 1.0
            continue
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all()) and int(changed.sum()) == box.numel()  # one rectangle
        assert lam == pytest.approx(1 - box.numel() / 36)
        for i in moved:  # the same box in every image
            assert torch.equal(mixed[i, 0] != x[i, 0], changed)


def test_the_loss_weighs_both_labels_by_lam() -> None:
    """hinton: alpha * (lam CE(y) + (1 - lam) CE(y')) + (1 - alpha) T² KL — the KD term once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    objective = Objective([LossSpec(name="hinton", temperature=2.0, alpha=0.5)], model, model, _batch()[:2])
    trainee = _Trainee(model, objective)
    x, y, other = _batch(), torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 1])
    teacher = Outputs(torch.randn(4, 3))
    lam = 0.3
    combined = trainee(x, y, teacher, (other, lam))
    expected = lam * objective(Outputs(model(x)), teacher, y) + (1 - lam) * objective(Outputs(model(x)), teacher, other)
    torch.testing.assert_close(combined, expected)
    assert not torch.allclose(combined, objective(Outputs(model(x)), teacher, y))


def test_a_mixing_job_never_uses_cached_teacher_logits() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    objective = Objective([LossSpec(name="hinton")], model, model, _batch()[:2])
    cached = np.zeros((4, 3), dtype=np.float32)
    job = TrainJob("s", model, objective, TrainConfig(mixup=0.2), 0, None, "id", teacher=model, teacher_logits=cached)
    out = _Teacher(job, torch.device("cpu"))(_batch(), np.arange(4))
    torch.testing.assert_close(out.logits, model(_batch()))


def test_off_by_default_and_kept_out_of_dumps() -> None:
    """Cache ids of runs made before mixing existed still hold: the defaults are not in the dump."""
    cfg = TrainConfig()
    assert not cfg.mixes and "mixup" not in cfg.model_dump() and "cutmix" not in cfg.model_dump()
    assert TrainConfig(mixup=0.2).model_dump()["mixup"] == 0.2
