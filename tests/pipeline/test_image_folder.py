"""Image folders: class sub-folders of real PNG/JPEG/… files, train/ + test/ layouts, conversion, resizing, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.config_load import parse_config
from pipeline.data.image_decode import decode_image
from pipeline.data.splits import load_splits, read_image_folder
from pipeline.errors import ConfigError, DataError
from pipeline.manifest import Manifest
from pipeline.rundir import RunDir

PER_CLASS = 6


def pixels(seed: int, size: tuple[int, int] = (6, 5), rgb: bool = False) -> np.ndarray:
    """A random uint8 H×W (or H×W×3) image."""
    shape = (*size, 3) if rgb else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write(path: Path, array: np.ndarray, **options) -> Path:
    """Save ``array`` as an image file whose format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def make_folder(root: Path, classes: list[str], suffix: str = ".png", rgb: bool = False, size=(6, 5), seed: int = 0):
    """PER_CLASS images per class folder; returns {class: [arrays in file-name order]}."""
    written = {}
    for c, name in enumerate(classes):
        written[name] = []
        for i in range(PER_CLASS):
            array = pixels(seed + 100 * c + i, size, rgb)
            jpeg = {"quality": 95, "subsampling": 0} if suffix in (".jpg", ".jpeg") else {}
            write(root / name / f"img{i:02d}{suffix}", array, **jpeg)
            written[name].append(array)
    return written


def test_class_folders_png_gray(tmp_path: Path) -> None:
    """Gray PNGs: labels follow sorted folder names, pixels come back exactly, ids follow class then file order."""
    written = make_folder(tmp_path / "data", ["zebra", "ant", "Mouse"])
    source = read_image_folder(tmp_path / "data")
    assert source.classes == sorted(["zebra", "ant", "Mouse"]) == ["Mouse", "ant", "zebra"]
    assert source.test is None and source.layout == "image-folder"
    assert source.train.x.shape == (3 * PER_CLASS, 1, 6, 5) and source.train.x.dtype == np.uint8
    np.testing.assert_array_equal(source.train.y, np.repeat([0, 1, 2], PER_CLASS))
    for label, name in enumerate(source.classes):
        for i, array in enumerate(written[name]):
            np.testing.assert_array_equal(source.train.x[label * PER_CLASS + i, 0], array)


def test_load_splits_from_folder(tmp_path: Path) -> None:
    """``data.source: PATH`` of class folders gives stratified train/val/test and the folder names as classes."""
    make_folder(tmp_path / "data", ["cat", "dog"])
    splits = load_splits(DataConfig(source=str(tmp_path / "data")), seed=0)
    assert splits.classes == ["cat", "dog"]
    assert splits.input_shape == (1, 6, 5)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 2 * PER_CLASS
    assert set(splits.test.y.tolist()) == {0, 1}
    assert splits.layout == "image-folder" and splits.resize is None and splits.channel_order == "gray"


def test_rgb_jpeg(tmp_path: Path) -> None:
    """RGB JPEGs become 3×H×W, equal to Pillow's own decoding and close to what was written."""
    written = make_folder(tmp_path / "data", ["a", "b"], suffix=".jpg", rgb=True, size=(16, 16))
    source = read_image_folder(tmp_path / "data")
    assert source.train.x.shape == (2 * PER_CLASS, 3, 16, 16)
    decoded = np.asarray(Image.open(tmp_path / "data" / "b" / "img03.jpg").convert("RGB"))
    np.testing.assert_array_equal(source.train.x[PER_CLASS + 3], decoded.transpose(2, 0, 1))
    error = np.abs(source.train.x[3].astype(int) - written["a"][3].transpose(2, 0, 1).astype(int)).mean()
    assert error < 8  # lossy, but the same picture


def test_every_format(tmp_path: Path) -> None:
    """png, jpg, jpeg, bmp, gif, webp, tif and tiff (any case) are read; other files and hidden entries are skipped."""
    root = tmp_path / "data"
    suffixes = [".png", ".jpg", ".JPEG", ".bmp", ".gif", ".webp", ".tif", ".tiff"]
    for name in ("x", "y"):
        for i, suffix in enumerate(suffixes):
            write(root / name / f"{i}{suffix}", pixels(i))
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".DS_Store").write_bytes(b"\x00\x01")
        write(root / name / ".thumbs" / "t.png", pixels(99, (3, 3)))  # hidden folder: skipped (else a size mismatch)
    (root / "README.md").write_text("top-level files are ignored")
    with pytest.raises(DataError, match="webp"):  # WebP has no gray mode: it decodes as RGB
        read_image_folder(root)
    source = read_image_folder(root, channels=1)
    assert source.classes == ["x", "y"]
    assert source.train.x.shape == (2 * len(suffixes), 1, 6, 5)
    np.testing.assert_array_equal(source.train.x[0, 0], pixels(0))  # 0.png, first in path order
    for i in (3, 6, 7):  # bmp, tif, tiff: lossless too
        np.testing.assert_array_equal(source.train.x[i, 0], pixels(i))


def test_nested_files_belong_to_their_class(tmp_path: Path) -> None:
    """Images in sub-folders of a class folder are that class's samples."""
    make_folder(tmp_path / "data", ["a", "b"])
    write(tmp_path / "data" / "a" / "more" / "deep.png", pixels(5))
    source = read_image_folder(tmp_path / "data")
    assert (source.train.y == 0).sum() == PER_CLASS + 1


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    """Images of different sizes: an error naming both files and data.image_size; with it, bilinear-resized."""
    root = tmp_path / "data"
    make_folder(root, ["a", "b"], size=(6, 5))
    odd = write(root / "b" / "zz-big.png", pixels(7, (12, 9)))
    with pytest.raises(DataError) as caught:
        load_splits(DataConfig(source=str(root)), seed=0)
    line = caught.value.one_line()
    assert "zz-big.png" in line and "12×9" in line and "6×5" in line and "data.image_size" in line
    assert "\n" not in line and caught.value.exit_code == 3
    splits = load_splits(DataConfig(source=str(root), image_size=(8, 7)), seed=0)
    assert splits.input_shape == (1, 8, 7)
    expected = np.asarray(Image.open(odd).resize((7, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decode_image(odd, None, (8, 7))[0][0], expected)
    all_x = np.concatenate([splits.train.x, splits.val.x, splits.test.x])
    assert any(np.array_equal(x[0], expected) for x in all_x)


def test_mixed_gray_and_colour_need_channels(tmp_path: Path) -> None:
    """Gray and RGB files together: an error naming data.channels; channels 1 or 3 converts them with Pillow."""
    root = tmp_path / "data"
    make_folder(root, ["a", "b"])
    colour = write(root / "a" / "colour.png", pixels(3, (6, 5), rgb=True))
    with pytest.raises(DataError) as caught:
        read_image_folder(root)
    assert "colour.png" in str(caught.value) and "data.channels" in caught.value.one_line()
    rgb = read_image_folder(root, channels=3)
    assert rgb.train.x.shape[1] == 3
    gray_rows = rgb.train.x[rgb.train.y == 1]
    np.testing.assert_array_equal(gray_rows[:, 0], gray_rows[:, 1])  # gray replicated into R, G, B
    gray = read_image_folder(root, channels=1)
    np.testing.assert_array_equal(gray.train.x[0, 0], np.asarray(Image.open(colour).convert("L")))


def test_rgba_and_16_bit(tmp_path: Path) -> None:
    """RGBA drops alpha; 16-bit gray is scaled to 8 bits (not clipped at 255)."""
    rgba = pixels(1, (4, 4), rgb=True)
    path = write(tmp_path / "rgba.png", np.dstack([rgba, np.full((4, 4), 7, np.uint8)]))
    chw, native = decode_image(path)
    assert native == 3
    np.testing.assert_array_equal(chw, rgba.transpose(2, 0, 1))
    wide = np.array([[0, 257, 1000], [30000, 65535, 128]], np.uint16)
    chw, native = decode_image(write(tmp_path / "wide.png", wide))
    assert native == 1
    np.testing.assert_array_equal(chw[0], np.rint(wide / 257).astype(np.uint8))


def test_train_test_layout(tmp_path: Path) -> None:
    """PATH/train + PATH/test: test is that folder, val is carved from train only."""
    root = tmp_path / "data"
    make_folder(root / "train", ["cat", "dog"], seed=0)
    make_folder(root / "test", ["cat", "dog"], seed=50)
    splits = load_splits(DataConfig(source=str(root)), seed=0)
    assert splits.classes == ["cat", "dog"]
    assert len(splits.test) == 2 * PER_CLASS
    assert len(splits.train) + len(splits.val) == 2 * PER_CLASS
    np.testing.assert_array_equal(splits.test.x[0, 0], pixels(50))
    assert splits.layout == "image-folder train/ + test/"


def test_train_test_class_mismatch(tmp_path: Path) -> None:
    """train/ and test/ naming different classes: one line naming the difference."""
    root = tmp_path / "data"
    make_folder(root / "train", ["cat", "dog"])
    make_folder(root / "test", ["cat", "dgo"])
    with pytest.raises(DataError) as caught:
        load_splits(DataConfig(source=str(root)), seed=0)
    line = caught.value.one_line()
    assert "'dog'" in line and "'dgo'" in line and "\n" not in line


def test_train_only_layout_and_stray_folder(tmp_path: Path) -> None:
    """PATH/train alone carves test from train; a third folder beside train/ and test/ is an error naming it."""
    root = tmp_path / "data"
    make_folder(root / "train", ["a", "b"])
    splits = load_splits(DataConfig(source=str(root)), seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 2 * PER_CLASS
    make_folder(root / "val", ["a", "b"])
    with pytest.raises(DataError, match="'val'"):
        load_splits(DataConfig(source=str(root)), seed=0)


def test_separate_test_folder(tmp_path: Path) -> None:
    """data.test may be a class-folder tree with the same classes; other classes are an error."""
    make_folder(tmp_path / "train", ["a", "b"])
    make_folder(tmp_path / "test", ["a", "b"], seed=9)
    make_folder(tmp_path / "other", ["a", "c"])
    splits = load_splits(DataConfig(source=str(tmp_path / "train"), test=str(tmp_path / "test")), seed=0)
    assert len(splits.test) == 2 * PER_CLASS
    with pytest.raises(DataError, match="'c'"):
        load_splits(DataConfig(source=str(tmp_path / "train"), test=str(tmp_path / "other")), seed=0)


def test_unreadable_image_names_file(tmp_path: Path) -> None:
    """A file with an image suffix that is not an image: DataError naming it, with a hint."""
    make_folder(tmp_path / "data", ["a", "b"])
    (tmp_path / "data" / "b" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError) as caught:
        load_splits(DataConfig(source=str(tmp_path / "data")), seed=0)
    assert "broken.jpg" in str(caught.value)
    assert caught.value.hint and "\n" not in caught.value.one_line()


def test_truncated_image_names_file(tmp_path: Path) -> None:
    """A PNG cut short is reported as unreadable, naming the file."""
    make_folder(tmp_path / "data", ["a", "b"], size=(32, 32))
    path = tmp_path / "data" / "a" / "img00.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match="img00.png"):
        read_image_folder(tmp_path / "data")


def test_empty_class_folder(tmp_path: Path) -> None:
    """A class folder without images is an error naming that folder."""
    make_folder(tmp_path / "data", ["a", "b"])
    (tmp_path / "data" / "empty").mkdir()
    (tmp_path / "data" / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty.*holds no images"):
        load_splits(DataConfig(source=str(tmp_path / "data")), seed=0)


@pytest.mark.parametrize("folders", [[], ["only"]])
def test_no_class_folders(tmp_path: Path, folders: list[str]) -> None:
    """A directory with no (or a single) class folder and no IDX files is an error with a layout hint."""
    root = tmp_path / "data"
    root.mkdir()
    write(root / "loose.png", pixels(0))
    for name in folders:
        write(root / name / "x.png", pixels(1))
    with pytest.raises(DataError, match="class sub-folder") as caught:
        load_splits(DataConfig(source=str(root)), seed=0)
    assert "PATH/<class>" in caught.value.hint


def test_crop_padding_must_fit_native_size(tmp_path: Path) -> None:
    """crop_padding as large as the native images is a ConfigError naming the key."""
    make_folder(tmp_path / "data", ["a", "b"])
    config = DataConfig(source=str(tmp_path / "data"), augment={"crop_padding": 5})
    with pytest.raises(ConfigError, match="data.augment.crop_padding"):
        load_splits(config, seed=0)


def test_manifest_records_preprocessing(tmp_path: Path) -> None:
    """RunDir.splits records resize, channel order, layout and where mean/std came from."""
    make_folder(tmp_path / "data", ["a", "b"], rgb=True)
    raw = {
        "data": {"source": str(tmp_path / "data"), "image_size": [4, 4], "channels": 1, "mean": [0.5], "std": [0.25]}
    }
    config = parse_config(raw)
    run = RunDir(tmp_path / "run", config, Manifest(edgepipe_version="test", config=config.model_dump(mode="json")))
    assert run.splits.input_shape == (1, 4, 4)
    record = Manifest.model_validate_json(run.manifest.model_dump_json()).data
    assert record.classes == ["a", "b"] and record.source_layout == "image-folder"
    prep = record.preprocessing
    assert (prep.channels, prep.height, prep.width) == (1, 4, 4)
    assert prep.channel_order == "gray" and prep.resize == [4, 4] and prep.resize_method == "pillow-bilinear"
    assert prep.mean == [0.5] and prep.std == [0.25] and prep.stats_from == "config"
    assert "pixel_scale" in prep.formula
