"""The calibration set: training split only, stratified, deterministic, saved and loaded intact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.sampling import CalibrationSet, draw_calibration_set
from pipeline.errors import DataError


@pytest.fixture(scope="module")
def calibration(digits_splits) -> CalibrationSet:
    return draw_calibration_set(digits_splits, 100, seed=0)


def test_drawn_from_train_only(digits_splits, calibration: CalibrationSet) -> None:
    """Every id is a training id; none is a val or test id; no sample twice."""
    ids = set(calibration.ids.tolist())
    assert len(ids) == len(calibration) == 100
    assert ids <= set(digits_splits.train.ids.tolist())
    assert not ids & set(digits_splits.val.ids.tolist())
    assert not ids & set(digits_splits.test.ids.tolist())


def test_samples_are_the_normalized_training_images(digits_splits, calibration: CalibrationSet) -> None:
    """x and labels are those of the training samples named by ids, normalized like model input."""
    position = {sample_id: i for i, sample_id in enumerate(digits_splits.train.ids.tolist())}
    rows = np.array([position[i] for i in calibration.ids.tolist()])
    np.testing.assert_array_equal(calibration.labels, digits_splits.train.y[rows])
    np.testing.assert_allclose(calibration.x, digits_splits.normalize(digits_splits.train.x[rows]), rtol=0, atol=0)
    assert calibration.x.dtype == np.float32
    assert calibration.x.shape == (100, 1, 8, 8)


@pytest.mark.parametrize("size", [10, 64, 100, 333])
def test_stratified_and_size_respected(digits_splits, size: int) -> None:
    """Exactly ``size`` samples, each class within ±1 of its share of the training split."""
    drawn = draw_calibration_set(digits_splits, size, seed=0)
    assert len(drawn) == size
    train_y = digits_splits.train.y
    for label in np.unique(train_y):
        expected = (train_y == label).mean() * size
        assert abs(int((drawn.labels == label).sum()) - expected) <= 1


def test_deterministic_for_a_seed(digits_splits, calibration: CalibrationSet) -> None:
    """The same seed draws the same samples; another seed draws others."""
    again = draw_calibration_set(digits_splits, 100, seed=0)
    np.testing.assert_array_equal(again.ids, calibration.ids)
    np.testing.assert_array_equal(again.x, calibration.x)
    assert not np.array_equal(draw_calibration_set(digits_splits, 100, seed=1).ids, calibration.ids)


def test_too_large_raises(digits_splits) -> None:
    """Asking for more samples than the training split holds raises DataError."""
    with pytest.raises(DataError, match="training split has only"):
        draw_calibration_set(digits_splits, len(digits_splits.train) + 1, seed=0)
    assert len(draw_calibration_set(digits_splits, len(digits_splits.train), seed=0)) == len(digits_splits.train)


def test_save_load_round_trip(tmp_path: Path, calibration: CalibrationSet) -> None:
    """save → load gives back identical arrays and leaves no temp file."""
    path = tmp_path / "calibration" / "calibration.npz"
    calibration.save(path)
    loaded = CalibrationSet.load(path)
    np.testing.assert_array_equal(loaded.x, calibration.x)
    np.testing.assert_array_equal(loaded.ids, calibration.ids)
    np.testing.assert_array_equal(loaded.labels, calibration.labels)
    assert loaded.x.dtype == calibration.x.dtype
    assert [p.name for p in path.parent.iterdir()] == ["calibration.npz"]


def test_load_missing_raises(tmp_path: Path) -> None:
    """A missing calibration file raises DataError with a hint to run quantize."""
    with pytest.raises(DataError, match="does not exist") as caught:
        CalibrationSet.load(tmp_path / "calibration.npz")
    assert "quantize" in caught.value.hint


def test_load_empty_set_raises(tmp_path: Path) -> None:
    """A calibration file holding zero samples raises DataError."""
    path = tmp_path / "calibration.npz"
    CalibrationSet(np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)).save(path)
    with pytest.raises(DataError, match="empty"):
        CalibrationSet.load(path)


def test_load_zero_byte_file_raises(tmp_path: Path) -> None:
    """An empty (0-byte) calibration file raises DataError."""
    path = tmp_path / "calibration.npz"
    path.write_bytes(b"")
    with pytest.raises(DataError):
        CalibrationSet.load(path)


def test_load_incomplete_file_raises(tmp_path: Path) -> None:
    """An npz without the ids/labels arrays raises DataError."""
    path = tmp_path / "calibration.npz"
    np.savez(path, x=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(DataError):
        CalibrationSet.load(path)


@pytest.mark.parametrize("size", [10, 64, 100, 333])
def test_balanced_draws_the_same_count_from_every_class(digits_splits, size: int) -> None:
    """balanced: every class within one sample of size / classes, exactly ``size`` in all."""
    drawn = draw_calibration_set(digits_splits, size, seed=0, selection="balanced")
    labels, counts = np.unique(drawn.labels, return_counts=True)
    assert len(drawn) == size and counts.max() - counts.min() <= 1
    assert len(labels) == min(size, len(np.unique(digits_splits.train.y)))


def test_balanced_gives_a_small_class_all_it_has(digits_splits) -> None:
    """A class with fewer samples than its equal share gives them all; the others make up the rest."""
    train_counts = np.bincount(digits_splits.train.y)
    size = len(train_counts) * train_counts.min() + 5
    drawn = draw_calibration_set(digits_splits, size, seed=0, selection="balanced")
    counts = np.bincount(drawn.labels, minlength=len(train_counts))
    assert len(drawn) == size
    assert counts[train_counts.argmin()] == train_counts.min()


def test_default_size_larger_than_the_split_takes_the_whole_split(tmp_path: Path, capsys) -> None:
    """calibration.size left at its default (512) on a 60-image training split: all 60 are drawn, the record says
    60 and why, a warning goes to stderr; the cache id stays that of the default config."""
    from pipeline.config_load import parse_config
    from pipeline.manifest import Manifest
    from pipeline.rundir import RunDir
    from pipeline.stages.calibrate import run_calibrate

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", x=rng.integers(0, 256, (100, 8, 8), dtype=np.uint8), y=np.arange(100) % 2)
    config = parse_config({"data": {"source": str(tmp_path / "small.npz")}})
    run = RunDir(tmp_path / "run", config, Manifest(edgepipe_version="test", config=config.model_dump(mode="json")))
    available = len(run.splits.train)
    assert available < 512
    calibration = run_calibrate(run)
    assert len(calibration) == available
    info = run.manifest.artifacts["calibration"].info
    assert info["size"] == available and "the training split has only" in info["note"]
    assert f"calibrating on all {available}" in capsys.readouterr().err


def test_size_set_above_the_split_is_an_error_with_a_hint(digits_splits) -> None:
    """calibration.size set larger than the training split: the error says how far to lower it."""
    from calibration.sampling import calibration_size
    from pipeline.config import CalibrationConfig

    available = len(digits_splits.train)
    assert calibration_size(CalibrationConfig(size=available + 1), available) == (available + 1, None)
    assert calibration_size(CalibrationConfig(), 2000) == (512, None)
    assert calibration_size(CalibrationConfig(), 145)[0] == 145
    with pytest.raises(DataError) as caught:
        draw_calibration_set(digits_splits, available + 1, seed=0)
    assert caught.value.hint == f"lower calibration.size to at most {available}, or give more training images"
