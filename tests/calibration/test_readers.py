"""Calibration feeds: onnxruntime's data reader and TFLite's representative dataset."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader

from calibration.methods import CALIBRATION_METHODS, ort_calibration
from calibration.readers import equal_batch_size, ort_reader, representative_dataset
from calibration.sampling import CalibrationSet
from pipeline.config import CalibrationConfig


@pytest.fixture
def calibration() -> CalibrationSet:
    rng = np.random.default_rng(0)
    return CalibrationSet(rng.standard_normal((70, 1, 8, 8)).astype(np.float32), np.arange(70), np.arange(70) % 10)


def drain(reader) -> list[dict]:
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)
        assert len(batches) < 100, "reader never returned None"
    return batches


def test_ort_reader_batches_then_none(calibration: CalibrationSet) -> None:
    """get_next yields equal NCHW batches (70 = 5 × 14) under the input name covering every sample once, then None."""
    reader = ort_reader(calibration, input_name="input", batch_size=32)
    assert isinstance(reader, CalibrationDataReader)
    batches = drain(reader)
    assert [b["input"].shape[0] for b in batches] == [14] * 5
    assert all(set(b) == {"input"} and b["input"].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), calibration.x)
    assert reader.get_next() is None


def test_ort_reader_rewinds(calibration: CalibrationSet) -> None:
    """rewind starts the stream again from the first sample."""
    reader = ort_reader(calibration, input_name="x", batch_size=50)
    first = drain(reader)
    reader.rewind()
    second = drain(reader)
    assert len(first) == len(second) == 2  # 70 = 2 × 35, the largest divisor up to 50
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["x"], b["x"])


def test_representative_dataset_yields_nhwc_samples(calibration: CalibrationSet) -> None:
    """One ``[array]`` per sample, shaped 1×H×W×C, in calibration order."""
    samples = list(representative_dataset(calibration))
    assert len(samples) == len(calibration)
    for i, sample in enumerate(samples):
        assert isinstance(sample, list) and len(sample) == 1
        assert sample[0].shape == (1, 8, 8, 1)
        np.testing.assert_array_equal(sample[0][0], calibration.x[i].transpose(1, 2, 0))


def test_representative_dataset_multichannel_layout() -> None:
    """Channels move last: sample[0][0, h, w, c] == x[i, c, h, w]."""
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    sample = next(iter(representative_dataset(CalibrationSet(x, np.arange(2), np.zeros(2)))))[0]
    assert sample.shape == (1, 4, 5, 3)
    assert sample[0, 2, 1, 0] == x[0, 0, 2, 1] and sample[0, 2, 1, 2] == x[0, 2, 2, 1]


@pytest.mark.parametrize(
    ("count", "limit", "size"), [(100, 32, 25), (37, 32, 1), (64, 32, 32), (5, 32, 5), (96, 32, 32)]
)
def test_equal_batch_size_is_the_largest_divisor(count: int, limit: int, size: int) -> None:
    """Batches are all one size: the largest divisor of the count up to the limit (1 for a prime count)."""
    assert equal_batch_size(count, limit) == size


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory):
    """A two-conv model on 8×8 digits-like input, exported for quantize_static."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, 10),
    ).eval()
    path = tmp_path_factory.mktemp("calibration") / "tiny.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), path, dynamo=False, input_names=["input"], dynamic_axes={"input": {0: "n"}}
    )
    return path


@pytest.mark.parametrize("count", [100, 37])
@pytest.mark.parametrize("method", CALIBRATION_METHODS.names())
def test_every_method_calibrates_any_size(tiny_onnx, tmp_path, method: str, count: int) -> None:
    """minmax, entropy and percentile quantize from a calibration set whose size is no multiple of 32 (the
    histogram calibrators failed on a ragged last batch: 'setting an array element with a sequence')."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    rng = np.random.default_rng(1)
    calibration = CalibrationSet(
        rng.standard_normal((count, 1, 8, 8)).astype(np.float32), np.arange(count), np.zeros(count)
    )
    output = tmp_path / "int8.onnx"
    quantize_static(
        str(tiny_onnx),
        str(output),
        ort_reader(calibration, input_name="input"),
        quant_format=QuantFormat.QDQ,
        **ort_calibration(method, CalibrationConfig()),
    )
    ops = [node.op_type for node in onnx.load(output).graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3


def test_method_keywords_for_the_quantizer() -> None:
    """Each method's quantize_static keywords: its onnxruntime calibrator, and its own option (percentile) read from
    the checked calibration section."""
    from onnxruntime.quantization import CalibrationMethod

    from pipeline.config_load import parse_config

    calibration = parse_config({"calibration": {"percentile": 99.9, "symmetric_activations": True}}).calibration
    keywords = {name: ort_calibration(name, calibration) for name in CALIBRATION_METHODS.names()}
    assert keywords == {
        "minmax": {"calibrate_method": CalibrationMethod.MinMax, "extra_options": {"ActivationSymmetric": True}},
        "percentile": {
            "calibrate_method": CalibrationMethod.Percentile,
            "extra_options": {"ActivationSymmetric": True, "CalibPercentile": 99.9, "CalibTensorRangeSymmetric": True},
        },
        "entropy": {
            "calibrate_method": CalibrationMethod.Entropy,
            "extra_options": {"ActivationSymmetric": True, "CalibTensorRangeSymmetric": True},
        },
    }
    assert ort_calibration("percentile", CalibrationConfig())["extra_options"]["CalibPercentile"] == 99.999
