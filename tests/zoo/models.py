"""The zoo: tiny students, each one pattern that the field's issue trackers report as breaking a converter or int8.

Every factory is ``NAME(in_channels, num_classes) -> nn.Module``, usable as
``distill.arch: tests/zoo/models.py:NAME``. ``ZOO`` lists the names with the data each one is fed
(``digits``: 1×8×8 gray; ``rgb``: 3×8×8; ``wide``: 1×8×12, see ``tests/zoo/test_zoo.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def silu(in_channels: int, num_classes: int) -> nn.Module:
    """SiLU after every conv: a smooth activation int8 PTQ approximates poorly."""
    # ultralytics/yolov5#10164: SiLU activations lose accuracy under full-integer TFLite PTQ
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.SiLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


class _SqueezeExcite(nn.Module):
    """``x * hardsigmoid(fc2(relu6(fc1(mean(x)))))``: the MobileNetV3 gate (TFLite RELU_0_TO_1 after conversion)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc2(F.relu6(self.fc1(x.mean((2, 3), keepdim=True)))))


def hswish_se(in_channels: int, num_classes: int) -> nn.Module:
    """Hardswish stem, depthwise conv with ReLU6, a Hardsigmoid squeeze-excite gate."""
    # PINTO0309/onnx2tf#683: MobileNetV3 (Hardswish, SE with Hardsigmoid, ReLU6) int8 has bad accuracy
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
        _SqueezeExcite(16),
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


def relu6(in_channels: int, num_classes: int) -> nn.Module:
    """ReLU6 (a Clip(0, 6) in ONNX, fused RELU6 in TFLite) after every conv, MobileNetV2 style."""
    # tensorflow/tensorflow#53370: quantized Conv2D with fused ReLU6 clamps to the int8 range, not to [0, 6]
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


def maxpool_pad(in_channels: int, num_classes: int) -> nn.Module:
    """MaxPool 3×3/s2/p1 on signed activations (BatchNorm, no ReLU before the pool)."""
    # PINTO0309/onnx2tf#444 (OSNet): MaxPool 3x3/s2/p1 padded with -inf/min value breaks int8 TFLite
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, 3, padding=1), nn.BatchNorm2d(24),
        nn.MaxPool2d(3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48),
        nn.MaxPool2d(3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes),
    )  # fmt: skip


class _ConcatRanges(nn.Module):
    """Two branches scaled by 0.01 and 100 concatenated: one int8 scale must cover ranges ~1e-2 and ~1e2."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.small = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())
        self.large = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.small(x) * 0.01, self.large(x) * 100.0], 1)
        return self.head(self.mix(y).mean((2, 3)))


def concat_ranges(in_channels: int, num_classes: int) -> nn.Module:
    """Concat of tensors whose ranges differ by 10⁴."""
    # tensorflow/tensorflow#52357: int8 error grows after Concat of tensors with very different ranges
    return _ConcatRanges(in_channels, num_classes)


def groupnorm(in_channels: int, num_classes: int) -> nn.Module:
    """GroupNorm after each conv (decomposed into Reshape/InstanceNorm or mean/var ops on export)."""
    # pytorch/pytorch#94261: GroupNorm ONNX export does not reproduce the same output
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


class _LayerNormChannels(nn.Module):
    """NCHW → NHWC, LayerNorm over the channels, back to NCHW (the ConvNeXt/Swin idiom), then ReLU."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(F.relu(self.conv2(x)).mean((2, 3)))


def layernorm_ch(in_channels: int, num_classes: int) -> nn.Module:
    """LayerNorm over channels between two permutes."""
    # PINTO0309/onnx2tf#312 (Swin): LayerNormalization over channels after permute: Unmatched outputs
    return _LayerNormChannels(in_channels, num_classes)


def reflect_pad(in_channels: int, num_classes: int) -> nn.Module:
    """Convs with reflect padding (ONNX Pad mode=reflect, TFLite MIRROR_PAD)."""
    # tensorflow/tensorflow#62585: TFLite MirrorPad in reflect mode yields incorrect results
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=2, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


class _UpsampleResidual(nn.Module):
    """``a + upsample_bilinear(conv(maxpool(a)))``: a Resize feeding a residual Add."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.mix = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        return self.head(self.mix(a + self.up(self.down(a))).mean((2, 3)))


def upsample_res(in_channels: int, num_classes: int) -> nn.Module:
    """Bilinear ×2 upsampling added back to its input."""
    # tensorflow/tensorflow#56871: bilinear upsampling cannot be int8-quantized correctly (+ residual add)
    return _UpsampleResidual(in_channels, num_classes)


def adaptive3(in_channels: int, num_classes: int) -> nn.Module:
    """AdaptiveAvgPool2d((3, 3)) on an 8×8 map: overlapping, uneven windows (no plain AveragePool equivalent)."""
    # pytorch/pytorch#42653: AdaptiveAvgPool2d output size not a factor of the input size (8 -> 3)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(), nn.Linear(16 * 9, num_classes),
    )  # fmt: skip


def gelu(in_channels: int, num_classes: int) -> nn.Module:
    """Exact (erf) GELU: ONNX Erf, which TFLite builtins lack."""
    # PINTO0309/onnx2tf#465: exact GeLU (0.5·x·(1+erf(x/√2))) arrives as primitive ops around Erf
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.GELU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


def sigmoid_head(in_channels: int, num_classes: int) -> nn.Module:
    """A sigmoid on the logits (multi-label style): outputs squeezed into (0, 1)."""
    # PINTO0309/PINTO_model_zoo#352: TFLite int8 LOGISTIC output is pinned to scale 1/256, zero point -128
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes), nn.Sigmoid(),
    )  # fmt: skip


class _LogitsAndFeatures(nn.Module):
    """Returns ``(logits, features)``: (N, num_classes) and (N, 16)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def multi_output(in_channels: int, num_classes: int) -> nn.Module:
    """Two outputs, logits first (a classification head with its embedding)."""
    # tensorflow/tensorflow#55424: a PyTorch model with several outputs breaks at TFLite int8 conversion
    return _LogitsAndFeatures(in_channels, num_classes)


class _ConstantChannel(nn.Module):
    """A branch that is exactly 0 for every input (``relu(conv(x) - 1000)``), concatenated to a live one."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.live = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dead = nn.Conv2d(in_channels, 8, 1)
        self.mix = nn.Sequential(nn.Conv2d(24, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = torch.relu(self.dead(x) - 1000.0)
        return self.head(self.mix(torch.cat([self.live(x), zeros], 1)).mean((2, 3)))


def const_channel(in_channels: int, num_classes: int) -> nn.Module:
    """A constant (all-zero) activation: a zero-range tensor for calibration, 0 dB SQNR."""
    # microsoft/onnxruntime#11928: entropy/percentile calibration fails on some tensors; here a dead (all-zero) one
    return _ConstantChannel(in_channels, num_classes)


def _plain_cnn(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


def non_square(in_channels: int, num_classes: int) -> nn.Module:
    """A plain CNN fed 8×12 images (H ≠ W), where an NCHW→NHWC mix-up of H and W shows."""
    # PINTO0309/onnx2tf#783: a non-square input's height and width swapped by the conversion
    return _plain_cnn(in_channels, num_classes)


def rgb(in_channels: int, num_classes: int) -> nn.Module:
    """A plain CNN fed 3-channel images with a different tint per channel (a channel-order mix-up shows)."""
    # PINTO0309/tflite2tensorflow#26: the order of the input channels switched between TFLite and ONNX
    return _plain_cnn(in_channels, num_classes)


ZOO: dict[str, str] = {
    "silu": "digits",
    "hswish_se": "digits",
    "relu6": "digits",
    "maxpool_pad": "digits",
    "concat_ranges": "digits",
    "groupnorm": "digits",
    "layernorm_ch": "digits",
    "reflect_pad": "digits",
    "upsample_res": "digits",
    "adaptive3": "digits",
    "gelu": "digits",
    "sigmoid_head": "digits",
    "multi_output": "digits",
    "const_channel": "digits",
    "non_square": "wide",
    "rgb": "rgb",
}
