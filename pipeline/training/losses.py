"""Distillation losses, chosen and weighted in the config by registry name.

A loss is built by a factory ``(student, teacher, example_input, **params) -> nn.Module``; the module names the
layers whose outputs it needs (``student_layers``/``teacher_layers``) and is called with both models' outputs.
Adding a loss is one factory and one ``@LOSSES.register`` line.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Annotated, Callable

import torch
import torch.nn.functional as F
from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from pipeline.errors import ConfigError
from pipeline.registry import Registry


@dataclass
class Outputs:
    """A model's logits and the outputs of the named layers a loss asked for."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class DistillLoss(nn.Module):
    """Base of every loss: which layers it reads, and whether it needs the teacher at all."""

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    needs_teacher: bool = True

    def forward(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


LossFactory = Callable[..., DistillLoss]
Temperature = Annotated[float, Field(gt=0)]  # a softmax temperature
Weight = Annotated[float, Field(ge=0)]  # a loss term's weight
Share = Annotated[float, Field(ge=0, le=1)]  # a share of the objective, e.g. Hinton's label weight alpha
LOSSES: Registry[LossFactory] = Registry("distillation loss")


def hinton_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float) -> torch.Tensor:
    """``alpha*CE(y) + (1-alpha)*T²*KL(softmax(t/T) ‖ softmax(s/T))``."""
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * hard + (1 - alpha) * temperature**2 * soft


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score of each row: ``(z - mean(z)) / std(z)`` over the classes (std with Bessel's correction, as the
    published code of Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024)."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + 1e-7)


def standardized_kd_loss(
    student_logits, teacher_logits, labels, *, temperature: float, kd_weight: float, ce_weight: float
) -> torch.Tensor:
    """``ce_weight*CE(y) + kd_weight*T²*KL(softmax(Z(t)/T) ‖ softmax(Z(s)/T))``, Z the row z-score
    (:func:`standardize`; Sun et al., CVPR 2024): the student matches the teacher's logit relations, not their
    scale."""
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(standardize(student_logits) / temperature, dim=1),
        F.log_softmax(standardize(teacher_logits) / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return ce_weight * hard + kd_weight * temperature**2 * soft


def dkd_loss(
    student_logits, teacher_logits, labels, *, alpha: float, beta: float, temperature: float, ce_weight: float
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022):
    ``ce_weight*CE(y) + alpha*TCKD + beta*NCKD``, both terms scaled by T².

    TCKD is the KL between teacher and student of the binary split (target class, all others) of softmax(·/T);
    NCKD the KL between their softmax(·/T) over the non-target classes alone. Shapes: logits (N, C), labels (N,)."""
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    s, t = student_logits / temperature, teacher_logits / temperature
    binary_s = torch.stack([_log_mass(s, target), _log_mass(s, ~target)], dim=1)
    binary_t = torch.stack([_log_mass(t, target), _log_mass(t, ~target)], dim=1)
    tckd = F.kl_div(binary_s, binary_t, reduction="batchmean", log_target=True)
    hidden = torch.finfo(s.dtype).min
    nckd = F.kl_div(
        F.log_softmax(s.masked_fill(target, hidden), dim=1),
        F.softmax(t.masked_fill(target, hidden), dim=1),
        reduction="batchmean",
    )
    return ce_weight * F.cross_entropy(student_logits, labels) + temperature**2 * (alpha * tckd + beta * nckd)


def _log_mass(scaled_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log of the softmax probability mass on the classes in ``mask``, per row (N,)."""
    kept = scaled_logits.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(kept, dim=1) - torch.logsumexp(scaled_logits, dim=1)


class _LogitLoss(DistillLoss):
    def __init__(self, fn: Callable, needs_teacher: bool = True, **params) -> None:
        super().__init__()
        self.fn, self.params, self.needs_teacher = fn, params, needs_teacher

    def forward(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        return self.fn(student.logits, teacher.logits if teacher else None, labels, **self.params)


@LOSSES.register("ce")
def cross_entropy(student, teacher, example, **_) -> DistillLoss:
    """Label cross-entropy only (the baseline student's loss)."""
    return _LogitLoss(lambda s, t, y: F.cross_entropy(s, y), needs_teacher=False)


@LOSSES.register("hinton")
def hinton(student, teacher, example, temperature: Temperature = 4.0, alpha: Share = 0.5) -> DistillLoss:
    """Hinton KD with temperature T and label weight alpha."""
    return _LogitLoss(hinton_loss, temperature=temperature, alpha=alpha)


@LOSSES.register("lskd")
def logit_standardized(
    student, teacher, example, temperature: Temperature = 2.0, kd_weight: Weight = 9.0, ce_weight: Weight = 0.1
) -> DistillLoss:
    """KD on z-scored logits (Sun et al., CVPR 2024); defaults: the paper's CIFAR-100 setting (base temperature 2,
    KD weight 9, CE weight 0.1)."""
    return _LogitLoss(standardized_kd_loss, temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight)


@LOSSES.register("dkd")
def decoupled(
    student,
    teacher,
    example,
    alpha: Weight = 1.0,
    beta: Weight = 8.0,
    temperature: Temperature = 4.0,
    ce_weight: Weight = 1.0,
) -> DistillLoss:
    """Decoupled KD (Zhao et al., CVPR 2022); defaults: the paper's CIFAR-100 setting (alpha 1, beta 8, T 4, CE
    weight 1; its 20-epoch linear warm-up of the KD terms is not applied)."""
    return _LogitLoss(dkd_loss, alpha=alpha, beta=beta, temperature=temperature, ce_weight=ce_weight)


@LOSSES.register("mse")
def logit_mse(student, teacher, example) -> DistillLoss:
    """Mean squared error between student and teacher logits."""
    return _LogitLoss(lambda s, t, y: F.mse_loss(s, t))


class HintLoss(DistillLoss):
    """FitNets hint: MSE between a teacher feature map and a student feature map through a learned 1×1 conv."""

    def __init__(self, student_layer: str, teacher_layer: str, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)

    def forward(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        s = self.adapter(student.features[self.student_layers[0]])
        t = teacher.features[self.teacher_layers[0]]
        if s.shape[-2:] != t.shape[-2:]:
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        return F.mse_loss(s, t)


@LOSSES.register("hint")
def hint(student, teacher, example, student_layer: str, teacher_layer: str) -> DistillLoss:
    """FitNets hints on named layers (``model.named_modules()`` names), with a learned 1×1 adapter."""
    if teacher is None:
        raise ConfigError("losses ['hint'] need a teacher", "use the ce loss alone for a student without one")
    student_channels = _feature_shape(student, student_layer, example, "student")[1]
    teacher_channels = _feature_shape(teacher, teacher_layer, example, "teacher")[1]
    return HintLoss(student_layer, teacher_layer, student_channels, teacher_channels)


def _feature_shape(model: nn.Module, layer: str, example: torch.Tensor, role: str) -> tuple[int, ...]:
    with FeatureTap(model, (layer,), role=role) as tap, torch.no_grad():
        was_training = model.training
        model.eval()
        model(example)
        model.train(was_training)
        if layer not in tap.features:
            raise ConfigError(f"{role} layer {layer!r} did not run in a forward pass; pick a layer the model uses")
        shape = tuple(tap.features[layer].shape)
    if len(shape) != 4:
        raise ConfigError(f"layer {layer!r} gives a {len(shape)}-D output {shape}; hint needs a 4-D feature map")
    return shape


class FeatureTap:
    """Forward hooks that keep the outputs of named layers (a context manager that removes them)."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...], role: str) -> None:
        if layers and isinstance(model, torch.jit.ScriptModule):
            raise ConfigError(
                f"the {role} is a TorchScript program: its layers cannot be tapped for feature losses (hint)",
                "use logit losses (hinton, mse) or give the teacher as a state_dict with its arch",
            )
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            valid = ", ".join(name for name in modules if name)[:300]
            raise ConfigError(f"{role} has no layer {missing[0]!r}; layers: {valid}")
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._keeper(name)) for name in layers]

    def _keeper(self, name: str):
        def keep(module, args, output):
            self.features[name] = output.clone()  # a later in-place op (ReLU(inplace=True)) must not change it

        return keep

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Objective(nn.Module):
    """The configured weighted sum of losses."""

    def __init__(self, specs: list, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor) -> None:
        super().__init__()
        self.terms = nn.ModuleList(LOSSES.get(spec.name)(student, teacher, example, **spec.params) for spec in specs)
        self.weights = [spec.weight for spec in specs]
        self.student_layers = tuple(dict.fromkeys(name for term in self.terms for name in term.student_layers))
        self.teacher_layers = tuple(dict.fromkeys(name for term in self.terms for name in term.teacher_layers))
        self.needs_teacher = any(term.needs_teacher for term in self.terms)
        if self.needs_teacher and teacher is None:
            names = [spec.name for spec, term in zip(specs, self.terms) if term.needs_teacher]
            raise ConfigError(f"losses {names} need a teacher", "use the ce loss alone for a student without one")

    def forward(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        return sum(w * term(student, teacher, labels) for w, term in zip(self.weights, self.terms))


def check_loss_params(name: str, params: dict) -> None:
    """Raise ConfigError unless ``params`` are exactly what loss ``name`` accepts, each of the type and in the range
    its factory's annotation says (``Temperature``: > 0, ``Weight``: ≥ 0, ``Share``: in [0, 1]); names the bad key."""
    factory = LOSSES.get(name)
    signature = inspect.signature(factory)
    accepted = [
        p for p in list(signature.parameters)[3:] if signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
    ]
    for key in params:
        if key not in accepted:
            raise ConfigError(f"loss {name!r} has no parameter {key!r}; it takes: {', '.join(accepted) or 'none'}")
    for key in accepted:
        if signature.parameters[key].default is inspect.Parameter.empty and key not in params:
            raise ConfigError(f"loss {name!r} needs parameter {key!r}")
    hints = typing.get_type_hints(factory, include_extras=True)
    for key, value in params.items():
        try:
            TypeAdapter(hints.get(key, typing.Any)).validate_python(value, strict=True)
        except ValidationError as e:
            message = e.errors()[0]["msg"].removeprefix("Input should be ")
            given = str(value).lower() if isinstance(value, bool) else repr(value)  # as YAML spells it
            raise ConfigError(f"loss {name!r} parameter {key!r} should be {message}; got {given}") from None


def reads_teacher_features(name: str) -> bool:
    """Whether loss ``name`` taps the teacher's inner layers (its factory takes a ``teacher_layer``)."""
    return "teacher_layer" in inspect.signature(LOSSES.get(name)).parameters
