"""Draw the calibration set from the training split only (never test): stratified or class-balanced."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import CalibrationConfig
from pipeline.data.splits import Splits
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


def calibration_size(config: CalibrationConfig, available: int) -> tuple[int, str | None]:
    """How many training samples to draw, and a note when that is fewer than ``calibration.size``: left at its
    default (512) on a training split of fewer samples (``available``), the whole split is the calibration set.
    A size the user set above the split is kept (``draw_calibration_set`` then says what to do)."""
    default = CalibrationConfig.model_fields["size"].default
    if config.size <= available or config.size != default:  # a config written back in full sets size: compare
        return config.size, None
    return available, (
        f"calibration.size is {default} (the default) but the training split has only {available} samples: "
        f"calibrating on all {available}"
    )


def draw_calibration_set(splits: Splits, size: int, seed: int, selection: str = "stratified") -> CalibrationSet:
    """Pick ``size`` training samples: each class in proportion to its share of the training split
    (``stratified``), or the same number from every class as far as each class has samples (``balanced``).

    Raises:
        DataError: ``size`` is larger than the training split.
    """
    train = splits.train
    if size > len(train):
        raise DataError(
            f"calibration.size is {size} but the training split has only {len(train)} samples",
            f"lower calibration.size to at most {len(train)}, or give more training images",
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(train.y, return_counts=True)
    quotas = _balanced_quotas(counts, size) if selection == "balanced" else _stratified_quotas(counts, size)
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(train.y == label), quota, replace=False) for label, quota in zip(classes, quotas)]
    )
    picked = np.sort(picked)
    return CalibrationSet(splits.normalize(train.x[picked]), train.ids[picked], train.y[picked])


def _stratified_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Largest-remainder shares of ``size`` in proportion to ``counts``."""
    exact = counts / counts.sum() * size
    quotas = np.floor(exact).astype(int)
    quotas[np.argsort(-(exact - quotas), kind="stable")[: size - quotas.sum()]] += 1
    return quotas


def _balanced_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Equal shares of ``size``; a class with too few samples gives all it has and the rest is shared out."""
    quotas = np.zeros_like(counts)
    while quotas.sum() < size:
        open_classes = np.flatnonzero(quotas < counts)
        share, extra = divmod(size - int(quotas.sum()), len(open_classes))
        for rank, label in enumerate(open_classes):
            quotas[label] = min(counts[label], quotas[label] + share + (rank < extra))
    return quotas
