"""Hinton KD loss against a hand computation in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training.losses import LOSSES, Outputs, hinton_loss


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def by_hand(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, temperature: float, alpha: float) -> float:
    """alpha*CE + (1-alpha)*T²*KL(softmax(t/T) ‖ softmax(s/T)), batch-mean, in float64."""
    student, teacher = student.astype(np.float64), teacher.astype(np.float64)
    ce = -log_softmax(student)[np.arange(len(labels)), labels].mean()
    log_p = log_softmax(teacher / temperature)
    log_q = log_softmax(student / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean()
    return alpha * ce + (1 - alpha) * temperature**2 * kl


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(16, 10, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (16,), generator=generator)
    return student, teacher, labels


@pytest.mark.parametrize(("temperature", "alpha"), [(4.0, 0.5), (1.0, 0.0), (2.5, 0.9), (8.0, 0.1)])
def test_matches_hand_computation(logits, temperature: float, alpha: float) -> None:
    """The loss equals the formula computed by hand."""
    student, teacher, labels = logits
    got = hinton_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
    expected = by_hand(student.numpy(), teacher.numpy(), labels.numpy(), temperature, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got.item() > 0


def test_alpha_one_is_plain_cross_entropy(logits) -> None:
    """alpha=1 ignores the teacher: plain cross-entropy with the labels."""
    student, teacher, labels = logits
    got = hinton_loss(student, teacher, labels, temperature=4.0, alpha=1.0)
    ce = -log_softmax(student.numpy())[np.arange(16), labels.numpy()].mean()
    assert got.item() == pytest.approx(ce, rel=1e-9)
    other_teacher = hinton_loss(student, -teacher, labels, temperature=4.0, alpha=1.0)
    assert other_teacher.item() == pytest.approx(got.item(), rel=1e-12)


def test_zero_kl_when_student_equals_teacher(logits) -> None:
    """With identical logits the KL term vanishes: alpha=0 gives 0, alpha=a gives a*CE."""
    student, _, labels = logits
    zero = hinton_loss(student, student.clone(), labels, temperature=4.0, alpha=0.0).item()
    assert zero == pytest.approx(0, abs=1e-12)
    ce = -log_softmax(student.numpy())[np.arange(16), labels.numpy()].mean()
    got = hinton_loss(student, student.clone(), labels, temperature=3.0, alpha=0.3).item()
    assert got == pytest.approx(0.3 * ce, rel=1e-9)


def test_gradient_flows_to_student_only(logits) -> None:
    """The loss is differentiable in the student logits and pulls them towards the teacher."""
    student, teacher, labels = logits
    student = student.clone().requires_grad_(True)
    loss = hinton_loss(student, teacher, labels, temperature=2.0, alpha=0.0)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    with torch.no_grad():
        stepped = student - 0.5 * student.grad
    assert hinton_loss(stepped, teacher, labels, temperature=2.0, alpha=0.0) < loss


def test_float32_batch_works(logits) -> None:
    """float32 logits (what training uses) agree with the float64 hand computation closely."""
    student, teacher, labels = logits
    term = LOSSES.get("hinton")(None, None, None, temperature=4.0, alpha=0.5)
    got = term(Outputs(student.float()), Outputs(teacher.float()), labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(by_hand(student.numpy(), teacher.numpy(), labels.numpy(), 4.0, 0.5), rel=1e-5)
