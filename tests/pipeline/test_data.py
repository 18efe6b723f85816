"""Data: IDX and npz readers, splits (val from train, stratified, deterministic) and missing data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import pipeline.data.splits
from pipeline.config import DataConfig
from pipeline.data.splits import load_splits, read_idx, read_idx_dir, read_npz
from pipeline.errors import DataError

DIGITS_SAMPLES = 1797


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_images(n: int, seed: int = 0, classes: int = 4, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images whose brightness encodes a label, labels balanced over ``classes``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.integers(0, 40, (n, size, size)) + y[:, None, None] * 50).astype(np.uint8)
    return x, y.astype(np.uint8)


def write_idx_dir(directory: Path, gz: bool, with_test: bool) -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    x, y = make_images(120)
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", x)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", y)
    if with_test:
        xt, yt = make_images(40, seed=1)
        write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", xt)
        write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", yt)
    return x, y


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_images(tmp_path: Path, name: str) -> None:
    """Plain and gzip'd IDX image files read back to the same uint8 array."""
    x, _ = make_images(10)
    got = read_idx(write_idx(tmp_path / name, x))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_labels(tmp_path: Path, name: str) -> None:
    """A 1-D IDX label file reads back exactly."""
    _, y = make_images(10)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, y)), y)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    """A file that does not start with the IDX magic raises DataError."""
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)


def test_read_idx_truncated_data(tmp_path: Path) -> None:
    """An IDX file cut inside its pixel data raises DataError saying it is truncated."""
    x, _ = make_images(10)
    path = tmp_path / "cut-idx3-ubyte"
    path.write_bytes(idx_bytes(x)[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    """A gzip stream cut short raises DataError, not a gzip exception."""
    x, _ = make_images(50)
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(x))[:-20])
    with pytest.raises(DataError):
        read_idx(path)


def test_read_idx_empty_file(tmp_path: Path) -> None:
    """An empty file is not an IDX file."""
    path = tmp_path / "empty-idx1-ubyte"
    path.write_bytes(b"")
    with pytest.raises(DataError):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    """An IDX file cut inside its dimension header raises DataError."""
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + (5).to_bytes(4, "big"))
    with pytest.raises(DataError):
        read_idx(path)


def test_read_idx_dir_needs_train_pair(tmp_path: Path) -> None:
    """A directory without the train images/labels pair raises DataError with a hint."""
    write_idx(tmp_path / "train-images-idx3-ubyte", make_images(10)[0])
    with pytest.raises(DataError) as caught:
        read_idx_dir(tmp_path)
    assert caught.value.hint


def test_read_npz_nhw_uint8(tmp_path: Path) -> None:
    """N×H×W uint8 images become N×1×H×W, labels int64."""
    x, y = make_images(12)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    images = read_npz(path)
    assert images.x.shape == (12, 1, 6, 6)
    assert images.x.dtype == np.uint8 and images.y.dtype == np.int64
    np.testing.assert_array_equal(images.x[:, 0], x)
    np.testing.assert_array_equal(images.ids, np.arange(12))


def test_read_npz_nhwc_float(tmp_path: Path) -> None:
    """NHWC float images in [0, 1] become NCHW uint8 (value * 255, rounded)."""
    rng = np.random.default_rng(0)
    x = rng.random((5, 7, 7, 3)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(5))
    images = read_npz(path)
    assert images.x.shape == (5, 3, 7, 7)
    np.testing.assert_array_equal(images.x, np.round(x.transpose(0, 3, 1, 2) * 255).astype(np.uint8))


def test_read_npz_nchw_kept(tmp_path: Path) -> None:
    """NCHW input keeps its layout."""
    x = np.zeros((4, 1, 5, 5), np.uint8)
    x[2, 0, 1, 3] = 200
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.zeros(4))
    np.testing.assert_array_equal(read_npz(path).x, x)


@pytest.mark.parametrize("arrays", [{"x": np.zeros((3, 4, 4))}, {"images": np.zeros((3, 4, 4)), "y": np.zeros(3)}])
def test_read_npz_missing_arrays(tmp_path: Path, arrays: dict) -> None:
    """An npz without both ``x`` and ``y`` raises DataError listing what it found."""
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="'x' and 'y'"):
        read_npz(path)


def test_read_npz_rejects_bad_values(tmp_path: Path) -> None:
    """Float pixels outside [0, 1], a label count mismatch and a non-npz file raise DataError."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((3, 4, 4), 2.0), y=np.zeros(3))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        read_npz(path)
    np.savez(path, x=np.zeros((3, 4, 4), np.uint8), y=np.zeros(2))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        read_npz(path)
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(DataError):
        read_npz(path)


def test_digits_splits_are_disjoint_and_complete(digits_splits) -> None:
    """Train, val and test are disjoint and together hold every digits sample once."""
    train, val, test = (set(part.ids.tolist()) for part in (digits_splits.train, digits_splits.val, digits_splits.test))
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == DIGITS_SAMPLES
    assert train | val | test == set(range(DIGITS_SAMPLES))
    assert digits_splits.input_shape == (1, 8, 8)
    assert digits_splits.classes == [str(d) for d in range(10)]


def test_digits_val_from_train_and_stratified(digits_splits) -> None:
    """Val is carved from the non-test part, each class in proportion (±1) to val_fraction."""
    fraction = DataConfig().val_fraction
    pool = np.concatenate([digits_splits.train.y, digits_splits.val.y])
    assert len(digits_splits.val) == pytest.approx(len(pool) * fraction, abs=10)
    for label in range(10):
        expected = (pool == label).sum() * fraction
        assert abs((digits_splits.val.y == label).sum() - expected) <= 1
    test_fraction = DataConfig().test_fraction
    for label in range(10):
        expected = ((pool == label).sum() + (digits_splits.test.y == label).sum()) * test_fraction
        assert abs((digits_splits.test.y == label).sum() - expected) <= 1


def test_digits_splits_deterministic(digits_splits) -> None:
    """The same seed gives the same split; another seed a different one."""
    again = load_splits(DataConfig(source="digits"), seed=0)
    for a, b in ((again.train, digits_splits.train), (again.val, digits_splits.val), (again.test, digits_splits.test)):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.x, b.x)
    assert again.mean == digits_splits.mean and again.std == digits_splits.std
    other = load_splits(DataConfig(source="digits"), seed=1)
    assert not np.array_equal(other.val.ids, digits_splits.val.ids)


def test_normalization_stats_from_train(digits_splits) -> None:
    """mean/std come from the training split and normalize it to roughly zero mean, unit std."""
    x = digits_splits.normalize(digits_splits.train.x)
    assert x.dtype == np.float32 and x.shape == digits_splits.train.x.shape
    assert abs(float(x.mean())) < 1e-3
    assert float(x.std()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("gz", [False, True])
def test_load_splits_idx_dir_with_test(tmp_path: Path, gz: bool) -> None:
    """An IDX directory with t10k files uses them as test; val is carved from train only."""
    x, y = write_idx_dir(tmp_path / "idx", gz=gz, with_test=True)
    splits = load_splits(DataConfig(source=str(tmp_path / "idx"), val_fraction=0.2), seed=3)
    assert len(splits.test) == 40
    assert len(splits.train) + len(splits.val) == 120
    assert len(splits.val) == 24
    assert not set(splits.train.ids.tolist()) & set(splits.val.ids.tolist())
    assert splits.input_shape == (1, 6, 6)
    assert splits.classes == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(splits.train.x[:, 0], x[splits.train.ids])
    np.testing.assert_array_equal(splits.val.y, y[splits.val.ids])


def test_load_splits_npz_path(tmp_path: Path) -> None:
    """An npz without a test split gets test and val carved out, disjoint, sizes adding up."""
    x, y = make_images(200)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    splits = load_splits(DataConfig(source=str(path), test_fraction=0.2, val_fraction=0.1), seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 200
    assert len(splits.test) == 40
    assert len(splits.val) == 16
    ids = [set(p.ids.tolist()) for p in (splits.train, splits.val, splits.test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]


def test_load_splits_separate_test_npz(tmp_path: Path) -> None:
    """``data.test`` supplies the test split; all of source then feeds train and val."""
    x, y = make_images(100)
    xt, yt = make_images(30, seed=5)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    splits = load_splits(DataConfig(source=str(tmp_path / "train.npz"), test=str(tmp_path / "test.npz")), seed=0)
    assert len(splits.test) == 30
    np.testing.assert_array_equal(splits.test.x[:, 0], xt)
    assert len(splits.train) + len(splits.val) == 100


def test_load_splits_missing_path(tmp_path: Path) -> None:
    """A data path that does not exist raises DataError with a hint."""
    with pytest.raises(DataError, match="does not exist") as caught:
        load_splits(DataConfig(source=str(tmp_path / "nowhere")), seed=0)
    assert caught.value.exit_code == 3
    assert caught.value.hint


def test_load_splits_unsupported_file(tmp_path: Path) -> None:
    """A file that is neither an npz nor an IDX directory raises DataError."""
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(DataError, match="neither"):
        load_splits(DataConfig(source=str(path)), seed=0)


def test_fashion_mnist_absent_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the Fashion-MNIST files the error tells the user how to install them or use digits."""
    monkeypatch.setattr(pipeline.data.splits, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DataError) as caught:
        load_splits(DataConfig(source="fashion-mnist"), seed=0)
    line = caught.value.one_line()
    assert "Fashion-MNIST not found" in line
    assert "apt-get install dataset-fashion-mnist" in line
    assert "digits" in line


def test_read_npz_empty_float_is_data_error(tmp_path: Path) -> None:
    """An npz with zero float images raises DataError."""
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 4, 4), np.float32), y=np.zeros(0))
    with pytest.raises(DataError):
        read_npz(path)


# --- preprocessing config (data.image_size, channels, mean/std, augment) --------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"channels": 2}, "data.channels"),
        ({"image_size": [0, 8]}, "data.image_size"),
        ({"image_size": [8]}, "data.image_size"),
        ({"image_size": 8}, "data.image_size"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2], "channels": 1}, "data.mean"),
        ({"mean": [0.5], "std": [0.2, 0.2]}, "data.std"),
        ({"mean": [0.5]}, "data.std"),
        ({"std": [0.5]}, "data.mean"),
        ({"mean": [123.7], "std": [0.2]}, "data.mean"),
        ({"mean": [0.5], "std": [0.0]}, "data.std"),
        ({"mean": [], "std": []}, "data.mean"),
        ({"augment": {"brightness": 1.0}}, "data.augment.brightness"),
        ({"augment": {"crop_padding": -1}}, "data.augment.crop_padding"),
        ({"augment": {"crop_padding": 8}, "image_size": [8, 16]}, "data.augment.crop_padding"),
        ({"augment": {"vflip": True}}, "data.augment.vflip"),
    ],
)
def test_preprocessing_config_errors_name_the_key(data: dict, key: str) -> None:
    """Invalid values and combinations raise a one-line ConfigError naming the key."""
    from pipeline.config_load import parse_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config({"data": data})
    assert key in caught.value.one_line() and "\n" not in caught.value.one_line()
    assert caught.value.exit_code == 2


def test_preprocessing_config_defaults_and_round_trip() -> None:
    """Everything is off by default; a full data section survives the effective-config YAML."""
    import yaml

    from pipeline.config import dump_config
    from pipeline.config_load import parse_config

    default = DataConfig()
    assert default.image_size is None and default.channels is None and default.mean is None
    assert not default.augment.enabled
    raw = {
        "data": {
            "source": "digits",
            "image_size": [16, 12],
            "channels": 3,
            "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.2, 0.2],
            "augment": {"hflip": True, "crop_padding": 2, "brightness": 0.1},
        }
    }
    config = parse_config(raw)
    assert config.data.image_size == (16, 12) and config.data.augment.enabled
    assert parse_config(yaml.safe_load(dump_config(config))) == config


def test_image_size_resizes_arrays_with_pillow(digits_splits) -> None:
    """image_size applies to array sources too: each 8×8 digit is Pillow-bilinear resized; splits unchanged."""
    from PIL import Image

    splits = load_splits(DataConfig(source="digits", image_size=(16, 12)), seed=0)
    assert splits.input_shape == (1, 16, 12) and splits.resize == (16, 12)
    np.testing.assert_array_equal(splits.test.ids, digits_splits.test.ids)
    first = digits_splits.train.x[0, 0]
    expected = np.asarray(Image.fromarray(first).resize((12, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(splits.train.x[0, 0], expected)


def test_channels_convert_arrays(tmp_path: Path, digits_splits) -> None:
    """channels 3 replicates gray into RGB; channels 1 turns RGB arrays into Pillow luma."""
    from PIL import Image

    rgb = load_splits(DataConfig(source="digits", channels=3), seed=0)
    assert rgb.input_shape == (3, 8, 8) and rgb.channel_order == "RGB"
    for c in range(3):
        np.testing.assert_array_equal(rgb.train.x[:, c], digits_splits.train.x[:, 0])
    assert len(rgb.mean) == len(rgb.std) == 3
    x = np.random.default_rng(0).integers(0, 256, (20, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(20) % 2)
    gray = load_splits(DataConfig(source=str(tmp_path / "rgb.npz"), channels=1), seed=0)
    assert gray.channel_order == "gray"
    sample = gray.train.ids[0]
    np.testing.assert_array_equal(gray.train.x[0, 0], np.asarray(Image.fromarray(x[sample]).convert("L")))


def test_mean_std_given_or_computed(digits_splits) -> None:
    """Given mean/std are used as they are; otherwise they are computed on the training split."""
    given = load_splits(DataConfig(source="digits", mean=[0.5], std=[0.25]), seed=0)
    assert given.mean == [0.5] and given.std == [0.25] and given.stats_from == "config"
    np.testing.assert_allclose(given.normalize(np.array([[[[255, 0]]]], np.uint8)), [[[[2.0, -2.0]]]])
    assert digits_splits.stats_from == "train"
    pixels = digits_splits.train.x.astype(np.float64) / 255
    assert digits_splits.mean[0] == pytest.approx(pixels.mean(), abs=1e-6)
    assert digits_splits.std[0] == pytest.approx(pixels.std(), abs=1e-6)


def test_mean_length_must_match_native_channels() -> None:
    """Without data.channels, mean/std are checked against the images: a ConfigError naming both."""
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_splits(DataConfig(source="digits", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]), seed=0)
    assert "data.mean has 3 values" in str(caught.value) and "1 channel" in str(caught.value)


def test_augmentation_only_in_train_batches(digits_splits) -> None:
    """Augmentation changes nothing in train/val/test; only Splits.train_batch applies it, reproducibly."""
    augmented = load_splits(
        DataConfig(source="digits", augment={"hflip": True, "crop_padding": 2, "brightness": 0.3}), seed=0
    )
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(augmented, name).x, getattr(digits_splits, name).x)
    assert augmented.mean == digits_splits.mean and augmented.std == digits_splits.std
    index = np.arange(64)
    batch = augmented.train_batch(index, np.random.default_rng(0))
    assert batch.shape == (64, 1, 8, 8) and batch.dtype == np.uint8
    assert not np.array_equal(batch, digits_splits.train.x[index])
    np.testing.assert_array_equal(batch, augmented.train_batch(index, np.random.default_rng(0)))
    raw = digits_splits.train_batch(index, np.random.default_rng(0))
    np.testing.assert_array_equal(raw, digits_splits.train.x[index])


def test_old_manifest_preprocessing_still_loads() -> None:
    """A preprocessing record without the newer fields loads, its channel order derived from channels."""
    from pipeline.manifest import Preprocessing

    old = Preprocessing.model_validate({"mean": [0.1], "std": [0.3], "channels": 1, "height": 8, "width": 8})
    assert old.channel_order == "gray" and old.resize is None and old.stats_from == "train"
    rgb = Preprocessing.model_validate({"mean": [0.1] * 3, "std": [0.3] * 3, "channels": 3, "height": 8, "width": 8})
    assert rgb.channel_order == "RGB"
