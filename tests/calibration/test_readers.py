"""Calibration feeds: onnxruntime's data reader and TFLite's representative dataset."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader

from calibration.readers import ort_reader, representative_dataset
from calibration.sampling import CalibrationSet


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
    """get_next yields NCHW batches under the input name covering every sample once, then None."""
    reader = ort_reader(calibration, input_name="input", batch_size=32)
    assert isinstance(reader, CalibrationDataReader)
    batches = drain(reader)
    assert [b["input"].shape[0] for b in batches] == [32, 32, 6]
    assert all(set(b) == {"input"} and b["input"].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), calibration.x)
    assert reader.get_next() is None


def test_ort_reader_rewinds(calibration: CalibrationSet) -> None:
    """rewind starts the stream again from the first sample."""
    reader = ort_reader(calibration, input_name="x", batch_size=50)
    first = drain(reader)
    reader.rewind()
    second = drain(reader)
    assert len(first) == len(second) == 2
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
