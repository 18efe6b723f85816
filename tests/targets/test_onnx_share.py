"""The int8 share of a QDQ ONNX file, counted exactly on a tiny model quantized by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from targets.int8_search import FloatLayer
from targets.onnx_share import onnx_int8_share

# per-sample MACs on a 1×8×8 input (onnx-tool's count: output elements × kernel fan-in, plus one per output for the
# bias): conv 1→8 3×3: 512·9 + 512; conv 8→16 3×3 groups 2: 1024·36 + 1024; linear 16→10: 160 + 10
CONV1, CONV2, LINEAR = 5120, 37888, 170
WEIGHTS = {"conv1": 8 * 9, "conv2": 16 * 4 * 9, "linear": 16 * 10}


@pytest.fixture(scope="module")
def float_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    path = tmp_path_factory.mktemp("share") / "tiny.onnx"
    torch.onnx.export(
        model, (torch.zeros(2, 1, 8, 8),), path, dynamo=False, input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    return path


def quantized(float_file: Path, exclude: list[str]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((8, 1, 8, 8), dtype=np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    output = float_file.with_name(f"int8-{len(exclude)}.onnx")
    quantize_static(
        str(float_file), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, nodes_to_exclude=exclude
    )
    return output


def compute_nodes(path: Path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(path).graph.node if n.op_type in ("Conv", "Gemm")]


def test_an_all_int8_file_is_all_int8(float_file: Path) -> None:
    share = onnx_int8_share(quantized(float_file, []))
    assert share.total_macs == CONV1 + CONV2 + LINEAR
    assert share.macs == 1.0 and share.weight_bytes == 1.0 and share.float_layers == ()


def test_an_excluded_conv_is_counted_float_with_its_macs(float_file: Path) -> None:
    second_conv = compute_nodes(float_file)[1]
    share = onnx_int8_share(quantized(float_file, [second_conv.name]))
    total = CONV1 + CONV2 + LINEAR
    assert share.total_macs == total
    assert share.float_layers == (FloatLayer(second_conv.name, "Conv", CONV2),)
    assert share.macs == (CONV1 + LINEAR) / total
    assert share.weight_bytes == (WEIGHTS["conv1"] + WEIGHTS["linear"]) / sum(WEIGHTS.values())
    assert share.to_dict()["float_layers"] == [{"node": second_conv.name, "op": "Conv", "macs": CONV2}]


def test_the_float_file_has_no_int8(float_file: Path) -> None:
    share = onnx_int8_share(float_file)
    assert share.macs == 0.0 and share.weight_bytes == 0.0
    assert [layer.macs for layer in share.float_layers] == [CONV1, CONV2, LINEAR]


def test_einsum_counts_in_macs_and_share(tmp_path: Path) -> None:
    """An Einsum is a matrix product: its MACs count (onnx-tool counts none) and, left float by the quantizer, it
    lowers the int8 share instead of hiding from it."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from pipeline.measure.model_profile import einsum_macs, onnx_profile

    assert einsum_macs("bchw,chwk->bk", [[1, 4, 8, 8], [4, 8, 8, 256]]) == 4 * 8 * 8 * 256
    assert einsum_macs("...c,cn->...n", [[1, 2, 32], [32, 10]]) == 2 * 32 * 10

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.w = torch.nn.Parameter(torch.randn(4, 8, 8, 16) * 0.1)

        def forward(self, x):
            return torch.einsum("bchw,chwk->bk", torch.relu(self.conv(x)), self.w)

    fp32 = tmp_path / "einsum.onnx"
    example = (torch.randn(1, 1, 8, 8),)
    torch.onnx.export(
        Net().eval(),
        example,
        str(fp32),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "b"}},
    )
    conv_macs = 4 * 8 * 8 * 9 + 4 * 8 * 8  # onnx-tool counts the bias add
    assert onnx_profile(fp32).macs == conv_macs + 4 * 8 * 8 * 16

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.standard_normal((1, 1, 8, 8), np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    qdq = tmp_path / "einsum-int8.onnx"
    quantize_static(str(fp32), str(qdq), Reader(), quant_format=QuantFormat.QDQ)
    share = onnx_int8_share(qdq)
    assert share.total_macs == conv_macs + 4 * 8 * 8 * 16
    einsum = [layer for layer in share.float_layers if layer.op == "Einsum"]  # onnxruntime leaves Einsum float
    assert [layer.macs for layer in einsum] == [4 * 8 * 8 * 16]
    assert share.macs == pytest.approx(conv_macs / share.total_macs)
