"""Draw the calibration set: stratified by class, from the training split only (never test)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data import Splits
from pipeline.errors import DataError
from pipeline.io import atomic_path


@dataclass(frozen=True)
class CalibrationSet:
    """Normalized float32 NCHW samples with the training-split ids they came from."""

    x: np.ndarray
    ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=self.x, ids=self.ids, labels=self.labels)

    @classmethod
    def load(cls, path: Path) -> "CalibrationSet":
        if not path.is_file():
            raise DataError(f"calibration set {path} does not exist", "run `edgepipe quantize RUN_DIR` first")
        try:
            with np.load(path) as archive:
                calibration = cls(archive["x"], archive["ids"], archive["labels"])
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(
                f"calibration set {path} is unreadable: {e}", "re-run `edgepipe quantize RUN_DIR --force`"
            ) from e
        if len(calibration) == 0:
            raise DataError(f"calibration set {path} is empty", "set calibration.size ≥ 1 and re-run quantize")
        return calibration


def draw_calibration_set(splits: Splits, size: int, seed: int) -> CalibrationSet:
    """Pick ``size`` training samples, each class in proportion to its share of the training split."""
    train = splits.train
    if size > len(train):
        raise DataError(f"calibration.size is {size} but the training split has only {len(train)} samples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(train.y, return_counts=True)
    quotas = np.floor(counts / counts.sum() * size).astype(int)
    for extra in np.argsort(-(counts / counts.sum() * size - quotas))[: size - quotas.sum()]:
        quotas[extra] += 1
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(train.y == label), quota, replace=False) for label, quota in zip(classes, quotas)]
    )
    picked = np.sort(picked)
    return CalibrationSet(splits.normalize(train.x[picked]), train.ids[picked], train.y[picked])
