"""Feeds of one calibration set to each quantizer: onnxruntime's reader and TFLite's representative dataset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from calibration.sampling import CalibrationSet


def equal_batch_size(count: int, limit: int) -> int:
    """The largest batch size up to ``limit`` that divides ``count``.

    onnxruntime's histogram calibrators (entropy, percentile) stack every batch's activations into one array, so
    every batch must have the same size (a ragged last batch fails in ``np.asarray``). The histograms do not
    depend on the batching; batches of 1 (a prime ``count``) calibrated 997 3×64×64 samples no slower than
    batches of 32 (10 s against 12-14 s, same peak memory).
    """
    return next(size for size in range(min(limit, count), 0, -1) if count % size == 0) if count > 0 else 1


def ort_reader(calibration: CalibrationSet, input_name: str, batch_size: int = 32):
    """An onnxruntime ``CalibrationDataReader`` streaming NCHW batches (``get_next`` / ``rewind``), all of one size:
    the largest divisor of the set's size up to ``batch_size`` (see ``equal_batch_size``)."""
    from onnxruntime.quantization import CalibrationDataReader

    size = equal_batch_size(len(calibration), batch_size)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._start >= len(calibration):
                return None
            batch = calibration.x[self._start : self._start + size]
            self._start += size
            return {input_name: batch}

        def rewind(self) -> None:
            self._start = 0

    return _Reader()


def representative_dataset(calibration: CalibrationSet) -> Iterator[list[np.ndarray]]:
    """TFLite converter feed: one NHWC sample at a time, the same samples as the ONNX quantizer sees."""
    for sample in calibration.x.transpose(0, 2, 3, 1):
        yield [sample[None]]
