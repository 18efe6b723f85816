"""Quantization-aware distillation: when post-training int8 loses too much, fine-tune the student under int8 fake
quantization while the teacher keeps distilling into it, then hand back a float student (same architecture, same
state_dict keys) whose weights the int8 exporters re-quantize with little loss.

Eager-mode ``torch.ao.quantization``: ``prepare_qat`` swaps Conv/Linear for their QAT versions (weights
fake-quantized on onnxruntime's symmetric int8 grid) and fake-quantizes the output of each quantizable module. Two
``fit`` phases: activation ranges are observed (training batches only), then frozen together with BatchNorm
running statistics for the last ``frozen_epochs``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.utils.hooks import RemovableHandle

from pipeline.config import LossSpec, QatConfig, TrainConfig
from pipeline.data.splits import Splits
from pipeline.errors import ModelError
from pipeline.training import distributed
from pipeline.training.losses import Objective
from pipeline.training.train import TrainJob, fit, predict_logits, seed_everything


def int8_qconfig(per_channel: bool = True, reduce_range: bool = True) -> tq.QConfig:
    """Fake quantization on onnxruntime's static int8 grid.

    Activations: asymmetric uint8 over moving-average min/max ranges. Weights: symmetric int8 with scales from the
    current weights' range (per output channel when ``per_channel``), ±64 levels with ``reduce_range``, else ±127.
    The unfused ``FakeQuantize``: the fused op's symmetric scale is max/(n+0.5), not onnxruntime's max/n.
    """
    bound = 64 if reduce_range else 127
    return tq.QConfig(
        activation=tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8
        ),
        weight=tq.FakeQuantize.with_args(
            observer=tq.MovingAveragePerChannelMinMaxObserver if per_channel else tq.MovingAverageMinMaxObserver,
            averaging_constant=1.0,
            quant_min=-bound,
            quant_max=bound,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ),
    )


def prepare_qat_student(student: nn.Module, qconfig: tq.QConfig) -> nn.Module:
    """A fake-quantized training copy of ``student``: its parameters and buffers keep their names and shapes."""
    model = copy.deepcopy(student).train()
    model.qconfig = qconfig
    tq.prepare_qat(model, inplace=True)
    found = model.state_dict()
    for key, tensor in student.state_dict().items():
        if key not in found or found[key].shape != tensor.shape:
            raise ModelError(
                f"QAT preparation renamed or reshaped the student's {key!r} (a layer eager-mode QAT swaps, e.g. LSTM)",
                "use post-training int8 for this student; QAT keeps only Conv/Linear students' tensor names",
            )
    return model


def float_student(qat_model: nn.Module, student: nn.Module) -> nn.Module:
    """A copy of ``student`` holding ``qat_model``'s trained parameters and buffers (fake-quant state dropped)."""
    result = copy.deepcopy(student)
    trained = qat_model.state_dict()
    result.load_state_dict({key: trained[key] for key in result.state_dict()})
    return result.eval()


def _activation_fake_quants(model: nn.Module) -> list[tq.FakeQuantizeBase]:
    return [
        module.activation_post_process
        for module in model.modules()
        if isinstance(getattr(module, "activation_post_process", None), tq.FakeQuantizeBase)
    ]


def _observe_in_training_only(model: nn.Module) -> RemovableHandle:
    """Activation ranges follow training batches only, never fit's validation passes (eval mode)."""
    fake_quants = _activation_fake_quants(model)

    def toggle(module: nn.Module, args) -> None:
        for fake_quant in fake_quants:
            fake_quant.enable_observer(module.training)

    return model.register_forward_pre_hook(toggle)


def _use_running_statistics(module: nn.Module, args) -> None:
    module.training = False  # fit() calls model.train() every epoch; a frozen BatchNorm must stay in eval mode


def _freeze_ranges(model: nn.Module) -> None:
    """Fix activation ranges and BatchNorm (normalize with the running statistics, never update them), so the
    frozen epochs train exactly the function the exporters quantize; weight scales keep following the weights."""
    for fake_quant in _activation_fake_quants(model):
        fake_quant.disable_observer()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_use_running_statistics)


def qat_distill(
    student: nn.Module,
    teacher: nn.Module | None,
    losses: list[LossSpec],
    splits: Splits,
    cfg: QatConfig,
    seed: int,
    progress_dir: Path,
    job_id: str = "qat",
    per_channel: bool = True,
    reduce_range: bool = True,
) -> tuple[nn.Module, dict]:
    """Fine-tune a fake-quantized copy of ``student`` on ``losses`` (distilled from ``teacher``); ``student`` is
    left unchanged.

    Returns a float model of the student's architecture and state_dict keys, in eval mode, for the int8 exporters
    to re-quantize, and what happened, for the manifest. ``per_channel``/``reduce_range`` pick the weight grid:
    ±64 with reduce_range (onnx-int8's default), ±127 without (TFLite's full-integer weights). Each phase resumes
    from its progress file in ``progress_dir``, named after ``job_id`` (an id of all the inputs, as fit's); both
    are removed at the end.
    """
    seed_everything(seed)
    model = prepare_qat_student(student, int8_qconfig(per_channel, reduce_range))
    objective = Objective(losses, student, teacher, torch.from_numpy(splits.normalize(splits.train.x[:2])))
    teacher_logits = None
    if objective.needs_teacher and not objective.teacher_layers and splits.fixed_train_inputs:
        teacher_logits = predict_logits(teacher, splits, splits.train)
    paths = {phase: progress_dir / f"{job_id}.{phase}.progress.pt" for phase in ("observe", "frozen")}

    def run_phase(phase: str, epochs: int, schedule: str, phase_seed: int) -> dict:
        train_cfg = TrainConfig(
            epochs=epochs,
            schedule=schedule,
            gamma=1.0,  # the step schedule at gamma 1 is a constant lr
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            device=cfg.device,
        )
        job = TrainJob(
            name=f"qat-{phase}",
            model=model,
            objective=objective,
            cfg=train_cfg,
            seed=phase_seed,
            progress_path=paths[phase],
            job_id=f"{job_id}:{phase}",
            teacher=teacher,
            teacher_logits=teacher_logits,
        )
        return fit(job, splits)

    observing = _observe_in_training_only(model)
    phases = {"observe": run_phase("observe", cfg.epochs - cfg.frozen_epochs, "step", seed)}
    observing.remove()
    if cfg.frozen_epochs:
        _freeze_ranges(model)
        phases["frozen"] = run_phase("frozen", cfg.frozen_epochs, "cosine", seed + 1)  # a new shuffle order
    if distributed.is_main():
        for path in paths.values():
            path.unlink(missing_ok=True)
    last = phases["frozen" if cfg.frozen_epochs else "observe"]
    summary = {
        **cfg.model_dump(exclude={"when"}),
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "val_accuracy_fake_quant": last["val_accuracy"],
        "phases": phases,
    }
    return float_student(model, student), summary
