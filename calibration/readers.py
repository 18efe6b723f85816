"""Feeds of one calibration set to each quantizer: onnxruntime's reader and TFLite's representative dataset."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from calibration.sampling import CalibrationSet


def ort_reader(calibration: CalibrationSet, input_name: str, batch_size: int = 32):
    """An onnxruntime ``CalibrationDataReader`` streaming NCHW batches (``get_next`` / ``rewind``)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._start >= len(calibration):
                return None
            batch = calibration.x[self._start : self._start + batch_size]
            self._start += batch_size
            return {input_name: batch}

        def rewind(self) -> None:
            self._start = 0

    return _Reader()


def representative_dataset(calibration: CalibrationSet) -> Iterator[list[np.ndarray]]:
    """TFLite converter feed: one NHWC sample at a time, the same samples as the ONNX quantizer sees."""
    for sample in calibration.x.transpose(0, 2, 3, 1):
        yield [sample[None]]
