"""Quantization-aware distillation: the fake-quantized copy keeps the student's tensors, its weight grid is
onnxruntime's, activation ranges learn from training batches only and then freeze, the result is a plain float
student, and QAT-KD recovers most of an int8 drop that onnxruntime's post-training quantization really shows."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from calibration import draw_calibration_set
from calibration.readers import ort_reader
from pipeline.config import LossSpec, QatConfig, TrainConfig
from pipeline.config_load import parse_config
from pipeline.errors import ConfigError
from pipeline.training.losses import Objective
from pipeline.training.models import build_model
from pipeline.training.qat_kd import (
    _freeze_ranges,
    _observe_in_training_only,
    float_student,
    int8_qconfig,
    prepare_qat_student,
    qat_distill,
)
from pipeline.training.train import TrainJob, accuracy, fit, predict_logits, seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")

HINTON = LossSpec(name="hinton", temperature=4.0, alpha=0.5)


@pytest.fixture(autouse=True)
def still_one_thread(one_thread) -> None:
    torch.set_num_threads(1)  # other modules' benches set their own thread count for the rest of the process


def int8_onnx(model: nn.Module, input_shape: tuple, calibration, work: Path, reduce_range: bool = True) -> Path:
    """``model`` through torch.onnx and onnxruntime's static QDQ int8 with onnx-int8's default options."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    work.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model.eval(),
        (torch.zeros(2, *input_shape),),
        work / "float.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
        opset_version=18,
    )
    quant_pre_process(str(work / "float.onnx"), str(work / "prepared.onnx"))
    quantize_static(
        str(work / "prepared.onnx"),
        str(work / "int8.onnx"),
        ort_reader(calibration, input_name="input"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return work / "int8.onnx"


def int8_accuracy(model: nn.Module, splits, calibration, work: Path) -> float:
    """Test-split top-1 of ``model`` quantized by onnxruntime (the deployed int8 accuracy)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(int8_onnx(model, splits.input_shape, calibration, work)))
    logits = session.run(None, {"input": splits.normalize(splits.test.x)})[0]
    return accuracy(logits, splits.test.y)


def float_accuracy(model: nn.Module, splits) -> float:
    """Test-split top-1 of the float model in torch."""
    return accuracy(predict_logits(model, splits, splits.test), splits.test.y)


# --- the prepared copy -------------------------------------------------------------------------------------


def test_prepared_copy_keeps_the_students_tensors_and_trains_channels_last() -> None:
    """prepare_qat swaps Conv/Linear for QAT versions under the same names, leaves the student alone, trains in
    channels-last memory, and its state (fake-quant ranges included) loads into a fresh copy (fit's resume)."""
    torch.manual_seed(0)
    student = build_model("student-cnn", 1, 10)
    model = prepare_qat_student(student, int8_qconfig())
    prepared = model.state_dict()
    for key, tensor in student.state_dict().items():
        assert prepared[key].shape == tensor.shape
    quantized = [name for name, module in model.named_modules() if hasattr(module, "weight_fake_quant")]
    assert quantized == ["0", "4", "8", "13"]  # the three convs and the classifier
    assert type(student[0]) is nn.Conv2d and type(model[0]) is not nn.Conv2d and not hasattr(student, "qconfig")

    model.to(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    model(x).logsumexp(1).mean().backward()
    assert model[0].weight.grad is not None and model[0].activation_post_process.scale.item() != 1.0
    fresh = prepare_qat_student(student, int8_qconfig())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize("reduce_range", [True, False])
def test_weight_grid_is_onnxruntimes(digits_splits, tmp_path: Path, reduce_range: bool) -> None:
    """The fake-quantized weights are exactly the int8 weights onnxruntime writes (per channel, ±64 or ±127)."""
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 10))
    with torch.no_grad():
        student[0].weight[2] *= 40  # channels of very different ranges
    model = prepare_qat_student(student, int8_qconfig(reduce_range=reduce_range))
    model(torch.zeros(1, 1, 8, 8))
    ours = {name: model[index].weight_fake_quant(model[index].weight).detach() for name, index in (("0", 0), ("3", 3))}

    calibration = draw_calibration_set(digits_splits, 32, seed=0)
    graph = onnx.load(int8_onnx(student, digits_splits.input_shape, calibration, tmp_path, reduce_range)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for name, fake_quantized in ours.items():
        values, scale = initializers[f"{name}.weight_quantized"], initializers[f"{name}.weight_scale"]
        dequantized = values.astype(np.float32) * scale.reshape(-1, *[1] * (values.ndim - 1))
        bound = 64 if reduce_range else 127
        assert np.abs(values).max() == bound
        np.testing.assert_allclose(fake_quantized.numpy(), dequantized, rtol=0, atol=1e-7)


def test_ranges_learn_from_training_batches_then_freeze() -> None:
    """Eval-mode passes (fit's validation) leave activation ranges alone; freezing stops them and the BatchNorm
    statistics from moving, while weight scales keep following the weights."""
    torch.manual_seed(0)
    model = prepare_qat_student(build_model("student-cnn", 1, 10), int8_qconfig())
    observing = _observe_in_training_only(model)
    observer = model[0].activation_post_process.activation_post_process  # conv output: scales with the input
    model.train()(torch.randn(16, 1, 8, 8))
    seen = observer.max_val.clone()
    model.eval()(100 * torch.randn(16, 1, 8, 8))
    assert torch.equal(observer.max_val, seen)
    model.train()(100 * torch.randn(16, 1, 8, 8))
    assert observer.max_val > seen

    observing.remove()
    _freeze_ranges(model)
    ranges, statistics = model[1].activation_post_process.scale.clone(), model[1].running_mean.clone()
    with torch.no_grad():
        model[4].weight *= 2
    model.train()(torch.randn(16, 1, 8, 8))
    assert torch.equal(model[1].activation_post_process.scale, ranges)
    assert torch.equal(model[1].running_mean, statistics)
    torch.testing.assert_close(model[4].weight_fake_quant.scale, model[4].weight.detach().abs().amax((1, 2, 3)) / 64)


@pytest.mark.parametrize(
    "settings", [{"frozen_epochs": 2}, {"epochs": 1, "frozen_epochs": 1}, {"lr": 0.0}, {"frozen_epochs": -1}]
)
def test_config_rejects_impossible_settings(settings: dict) -> None:
    with pytest.raises(ConfigError, match="quantize.qat"):
        parse_config({"quantize": {"qat": settings}})


# --- qat_distill -------------------------------------------------------------------------------------------


def test_qat_distill_returns_a_float_student(digits_splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logit and hint losses (an uncached teacher) train the QAT copy: a constant lr while ranges are observed,
    then cosine-annealed while frozen; the result is a float student of the same class and tensors, in eval mode,
    with new weights and no fake-quant left; the student and the progress files are not left behind."""
    rates: list[float] = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    torch.manual_seed(0)
    student = build_model("student-cnn", 1, 10)
    teacher = copy.deepcopy(student).eval()
    before = copy.deepcopy(student.state_dict())
    losses = [HINTON, LossSpec(name="hint", student_layer="4", teacher_layer="8", weight=0.1)]
    cfg = QatConfig(epochs=3, frozen_epochs=1, lr=1e-3, batch_size=256, device="cpu")

    result, summary = qat_distill(student, teacher, losses, digits_splits, cfg, seed=0, progress_dir=tmp_path)

    assert type(result) is type(student) and not result.training
    assert {k: v.shape for k, v in result.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert not any(hasattr(module, "activation_post_process") or module._forward_hooks for module in result.modules())
    assert any(not torch.equal(result.state_dict()[key], before[key]) for key in before)
    assert all(torch.equal(student.state_dict()[key], before[key]) for key in before)
    assert list(tmp_path.iterdir()) == []
    steps = math.ceil(len(digits_splits.train) / cfg.batch_size)
    assert rates[: 2 * steps] == [cfg.lr] * (2 * steps)
    assert rates[2 * steps] == pytest.approx(cfg.lr) and rates[-1] < cfg.lr / 5
    assert [len(phase["history"]) for phase in summary["phases"].values()] == [2, 1]
    assert summary["val_accuracy_fake_quant"] == summary["phases"]["frozen"]["val_accuracy"]
    assert summary["lr"] == cfg.lr and summary["epochs"] == 3


def test_float_student_takes_the_trained_tensors_only() -> None:
    torch.manual_seed(0)
    student = build_model("student-cnn", 1, 10)
    model = prepare_qat_student(student, int8_qconfig())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    result = float_student(model, student)
    assert torch.equal(result[0].weight, model[0].weight) and not torch.equal(result[0].weight, student[0].weight)
    assert list(result.state_dict()) == list(student.state_dict())


# --- what it is for: recovering a real int8 drop -----------------------------------------------------------


def imbalanced_student() -> nn.Module:
    """A conv student without BatchNorm after its second conv, so channel scales of the first block pass on."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def shrink_channels(model: nn.Module, channels: torch.Tensor, factor: float) -> None:
    """Scale some channels of the first block by ``factor`` and the next conv's weights on them by 1/factor: the
    float function is unchanged (ReLU is positively homogeneous), but those channels fall below one int8 step of
    the shared activation range, and their large weights widen every output channel's weight scale."""
    with torch.no_grad():
        model[1].weight[channels] *= factor
        model[1].bias[channels] *= factor
        model[3].weight[:, channels] /= factor


def test_qat_distillation_recovers_most_of_the_int8_drop(digits_splits, tmp_path: Path) -> None:
    """A student whose float function hides a channel-scale imbalance loses far more than int8 usually costs
    under onnxruntime's static quantization; QAT-KD from the float model recovers at least half of that drop."""
    splits = digits_splits
    seed_everything(0)
    student = imbalanced_student()
    example = torch.from_numpy(splits.normalize(splits.train.x[:2]))
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.01, device="cpu")
    objective = Objective([LossSpec(name="ce")], student, None, example)
    fit(TrainJob("student", student, objective, cfg, 0, tmp_path / "student.progress.pt", "student"), splits)
    teacher = copy.deepcopy(student).eval()
    shrink_channels(student, torch.arange(0, 16, 2), factor=0.01)
    np.testing.assert_allclose(
        predict_logits(student, splits, splits.test), predict_logits(teacher, splits, splits.test), atol=1e-4
    )
    calibration = draw_calibration_set(splits, 64, seed=0)
    fp32_accuracy = float_accuracy(student, splits)
    ptq_accuracy = int8_accuracy(student, splits, calibration, tmp_path / "ptq")

    qat_cfg = QatConfig(epochs=3, frozen_epochs=1, lr=1e-3, batch_size=64, device="cpu")
    result, summary = qat_distill(student, teacher, [HINTON], splits, qat_cfg, seed=0, progress_dir=tmp_path)
    qat_accuracy = int8_accuracy(result, splits, calibration, tmp_path / "qat")

    figures = (
        f"float {fp32_accuracy:.2f}%, int8 PTQ {ptq_accuracy:.2f}%, int8 after QAT-KD {qat_accuracy:.2f}% "
        f"(float after QAT-KD {float_accuracy(result, splits):.2f}%, "
        f"fake-quant val {summary['val_accuracy_fake_quant']}%)"
    )
    print(figures)
    assert {k: v.shape for k, v in result.state_dict().items()} == {k: v.shape for k, v in student.state_dict().items()}
    assert fp32_accuracy - ptq_accuracy > 20, figures  # the case really loses to int8
    assert qat_accuracy - ptq_accuracy >= 0.5 * (fp32_accuracy - ptq_accuracy), figures
