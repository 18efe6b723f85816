"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018), written out
here because torchvision/timm from PyPI may not import beside this torch; no weights are downloaded (trained from
scratch by edgepipe's distill stage).

The layout is torchvision's ``mobilenet_v2`` (inverted residual blocks: 1×1 expand, 3×3 depthwise, 1×1 linear
projection, BatchNorm, ReLU6, identity shortcut when stride 1 and widths match; widths rounded to multiples of 8;
the (t, c, n, s) table of the paper), with one change for small inputs: the stem's stride is ``stem_stride`` (1 by
default, 2 in the paper) so a 32×32 image reaches the last block at 2×2 instead of 1×1.

    teacher:
      arch: bench/models/mobilenet_v2.py:make
      arch_kwargs: {width_mult: 1.0}

Input (N, in_channels, H, W) → logits (N, num_classes); any H, W ≥ 1 (global average pool before the classifier).
Total stride 16 with ``stem_stride=1`` (32 in the paper). Parameters at 10 classes, 3 input channels (counted):
2,236,682 at width 1.0, 2,024,202 at width 1.0 with last_channel=640, 700,490 at width 0.5.
"""

from __future__ import annotations

from torch import nn

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor``, never below 90 % of ``value`` (torchvision's _make_divisible)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expand (×t, ReLU6) → 3×3 depthwise (stride, ReLU6) → 1×1 linear projection; + input when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        stem_stride: int = 1,
        last_channel: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        channels = _divisible(32 * width_mult)
        last = _divisible(last_channel * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(in_channels, channels, 3, stem_stride)]
        for t, c, n, s in SETTINGS:
            out = _divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(_conv_bn(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def make(
    in_channels: int,
    num_classes: int,
    width_mult: float = 1.0,
    stem_stride: int = 1,
    last_channel: int = 1280,
    dropout: float = 0.2,
) -> nn.Module:
    """edgepipe factory: a MobileNetV2 for ``in_channels``-channel images and ``num_classes`` classes."""
    if width_mult <= 0 or stem_stride not in (1, 2) or last_channel < 1 or not 0 <= dropout < 1:
        raise ValueError(
            f"mobilenet_v2: need width_mult > 0, stem_stride 1 or 2, last_channel ≥ 1, 0 ≤ dropout < 1; got "
            f"{width_mult}, {stem_stride}, {last_channel}, {dropout}"
        )
    return MobileNetV2(in_channels, num_classes, width_mult, stem_stride, last_channel, dropout)
