"""Lazy image folders: pixels decoded only when rows are asked for; training through torch's DataLoader (workers);
streamed evaluation; calibration that decodes only its draw; mean/std from a seeded sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.data.splits
from calibration.sampling import draw_calibration_set
from pipeline.config import DataConfig, LossSpec, TrainConfig
from pipeline.data.image_decode import decode_image
from pipeline.data.splits import LazyPixels, NormalizedView, load_splits
from pipeline.errors import DataError
from pipeline.training.losses import Objective
from pipeline.training.models import build_model
from pipeline.training.train import TrainJob, _epoch_loader, fit, predict_logits, seed_everything

PER_CLASS = 8


def make_rgb_folder(root: Path, classes: int = 2, size: tuple[int, int] = (8, 8)) -> Path:
    """PER_CLASS smooth RGB PNGs per class; each class has its own brightness."""
    for c in range(classes):
        for i in range(PER_CLASS):
            base = np.random.default_rng(100 * c + i).integers(0, 60, (*size, 3))
            pixels = (base + 90 * c).astype(np.uint8)
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i:02d}.png")
    return root


@pytest.fixture
def counted(monkeypatch):
    """Count every file decoded through the folder's decoder."""
    calls: list[Path] = []
    real = pipeline.data.splits.decoder_for

    def decoder_for(config):
        decode = real(config)

        def counting(path: Path) -> np.ndarray:
            calls.append(path)
            return decode(path)

        return counting

    monkeypatch.setattr(pipeline.data.splits, "decoder_for", decoder_for)
    return calls


def config(root: Path, **keys) -> DataConfig:
    return DataConfig(source=str(root), channels=3, image_size=(8, 8), **keys)


def test_listing_decodes_one_image_and_stats_use_a_sample(tmp_path: Path, counted, monkeypatch) -> None:
    """Loading a lazy folder decodes its first image (the sample shape) and, for mean/std, a seeded sample of at
    most STATS_SAMPLES training images; the manifest fields say so."""
    root = make_rgb_folder(tmp_path / "data")
    given = load_splits(config(root, mean=[0.5] * 3, std=[0.2] * 3), seed=0)
    assert len(counted) == 1 and given.stats_from == "config" and given.stats_samples is None
    assert isinstance(given.train.x, LazyPixels) and given.input_shape == (3, 8, 8) and given.lazy
    counted.clear()
    monkeypatch.setattr(pipeline.data.splits, "STATS_SAMPLES", 5)
    sampled = load_splits(config(root), seed=0)
    assert len(counted) == 1 + 5
    assert sampled.stats_from == "train-sample" and sampled.stats_samples == 5
    again = load_splits(config(root), seed=0)
    assert (again.mean, again.std) == (sampled.mean, sampled.std)


def test_lazy_pixels_index_like_an_array(tmp_path: Path) -> None:
    """Slices, index arrays, masks, integer rows, trailing indices and np.asarray give what the decoded array
    gives; take() decodes nothing."""
    root = make_rgb_folder(tmp_path / "data")
    x = pipeline.data.splits.read_image_folder(root).train.x
    paths = sorted(root.glob("*/*.png"))
    eager = np.stack([decode_image(path)[0] for path in paths])
    assert isinstance(x, LazyPixels) and x.shape == eager.shape and len(x) == len(eager) and x.dtype == np.uint8
    index = np.array([5, 0, 11])
    mask = np.arange(len(eager)) % 3 == 0
    for key in (slice(2, 7), index, mask, 3, -1, (slice(None), 0), (4, 1), (index, slice(None), 2)):
        np.testing.assert_array_equal(x[key], eager[key])
    np.testing.assert_array_equal(np.asarray(x), eager)
    part = x.take(index)
    assert isinstance(part, LazyPixels) and part.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(part[:], eager[index])


def test_normalized_view_and_batches_stream(tmp_path: Path) -> None:
    """normalize(lazy pixels) is a view whose slices equal the eager normalization; batches() yields the same
    (x, y) as slicing, in order."""
    splits = load_splits(config(make_rgb_folder(tmp_path / "data")), seed=0)
    view = splits.normalize(splits.train.x)
    eager = splits.normalize(np.asarray(splits.train.x))
    assert isinstance(view, NormalizedView) and view.shape == eager.shape and len(view) == len(eager)
    np.testing.assert_array_equal(view[1:4], eager[1:4])
    np.testing.assert_array_equal(view[np.array([2, 0])], eager[[2, 0]])
    batches = list(splits.batches(splits.train, 3))
    assert [len(y) for _, y in batches] == [3] * (len(eager) // 3) + ([len(eager) % 3] if len(eager) % 3 else [])
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), eager)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), splits.train.y)


def test_calibration_decodes_only_its_draw(tmp_path: Path, counted) -> None:
    """Drawing a calibration set of 4 decodes those 4 training images and nothing else."""
    splits = load_splits(config(make_rgb_folder(tmp_path / "data"), mean=[0.5] * 3, std=[0.2] * 3), seed=0)
    counted.clear()
    calibration = draw_calibration_set(splits, 4, seed=0)
    assert len(counted) == 4 and calibration.x.shape == (4, 3, 8, 8) and calibration.x.dtype == np.float32
    rows = np.searchsorted(splits.train.ids, calibration.ids)
    np.testing.assert_array_equal(calibration.x, splits.normalize(np.asarray(splits.train.x)[rows]))


def _job(splits, tmp_path: Path, name: str) -> TrainJob:
    seed_everything(0)
    model = build_model("student-cnn", 3, 2)
    example = torch.from_numpy(splits.normalize(splits.train.x[:2]))
    return TrainJob(
        name=name,
        model=model,
        objective=Objective([LossSpec(name="ce")], model, None, example),
        cfg=TrainConfig(epochs=1, batch_size=4, device="cpu"),
        seed=0,
        progress_path=tmp_path / f"{name}.progress.pt",
        job_id=name,
    )


def test_training_is_the_same_with_and_without_workers(tmp_path: Path) -> None:
    """A lazy folder trains to the same weights whether batches are decoded in worker processes or here, and
    predict_logits over the lazy split equals it over the decoded array."""
    root = make_rgb_folder(tmp_path / "data")
    weights = []
    for workers in (0, 2):
        splits = load_splits(config(root, augment={"hflip": True}, workers=workers), seed=0)
        assert splits.workers == workers
        job = _job(splits, tmp_path, f"w{workers}")
        fit(job, splits)
        weights.append(job.model.state_dict())
    for key, tensor in weights[0].items():
        assert torch.equal(weights[1][key], tensor), key
    eager = pipeline.data.splits.Images(np.asarray(splits.test.x), splits.test.y, splits.test.ids)
    lazy_logits = predict_logits(job.model, splits, splits.test, 3)
    np.testing.assert_array_equal(lazy_logits, predict_logits(job.model, splits, eager, 3))


def test_in_memory_loader_keeps_torch_random_stream(digits_splits) -> None:
    """Iterating an epoch of in-memory data leaves torch's global generator untouched (the loader has its own)."""
    torch.manual_seed(3)
    before = torch.get_rng_state()
    order = np.arange(len(digits_splits.train))
    batches = list(_epoch_loader(digits_splits, order, 512, [0, 0, 0], "cpu"))
    assert torch.equal(torch.get_rng_state(), before)
    x, y, index = batches[0]
    np.testing.assert_array_equal(x.numpy(), digits_splits.normalize(digits_splits.train.x[:512]))
    np.testing.assert_array_equal(index.numpy(), order[:512])


def test_unreadable_file_in_a_worker_is_one_data_error(tmp_path: Path) -> None:
    """With channels and size given no header is read before training; a training image that turns out broken
    fails the step that decodes it, in a worker process, as a DataError naming the file (one line, a hint)."""
    splits = load_splits(config(make_rgb_folder(tmp_path / "data"), mean=[0.5] * 3, std=[0.2] * 3, workers=1), seed=0)
    broken = Path(splits.train.x.paths[-1])
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError) as caught:
        fit(_job(splits, tmp_path, "broken"), splits)
    assert broken.name in str(caught.value) and "\n" not in str(caught.value) and caught.value.hint


def test_truncated_test_image_ends_the_run_with_one_data_error(tmp_path: Path) -> None:
    """A truncated JPEG in test/ is the data's fault, not a runtime's: `edgepipe run` exits 3 with one line naming
    the file and the remedy (no bench row recorded as skipped, no traceback); the artifacts built before stay."""
    import json
    import shutil
    import subprocess
    import sys

    import yaml

    root = tmp_path / "data"
    for split, count in (("train", 6), ("test", 2)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                pixels = (np.random.default_rng(100 * c + i).integers(0, 60, (48, 48, 3)) + 90 * c).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i:02d}.jpg", quality=95)
    bad = root / "test" / "c1" / "01.jpg"
    bad.write_bytes(bad.read_bytes()[:-200])  # the header reads; the pixels do not
    config = {
        "seed": 0,
        "data": {"source": str(root)},
        "teacher": {"epochs": 1, "batch_size": 8},
        "distill": {"epochs": 1, "batch_size": 8},
        "calibration": {"size": 4},
        "export": {"targets": ["onnx-fp32"]},
        "bench": {"warmup": 1, "min_runs": 2, "min_seconds": 0, "eval_batch": 8, "batch_sizes": [1]},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    edgepipe = shutil.which("edgepipe", path=str(Path(sys.executable).parent)) or "edgepipe"
    out = tmp_path / "run"
    result = subprocess.run(
        [edgepipe, "run", str(tmp_path / "config.yaml"), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("edgepipe: error:")]
    assert str(bad) in line and "truncated" in line and "remove or replace the file" in line
    assert (out / "artifacts" / "student-onnx-fp32.onnx").is_file()
    assert not json.loads((out / "manifest.json").read_text()).get("skipped")
