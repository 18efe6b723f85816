"""Decode rules of one image file (pipeline/data/image_decode.py): EXIF, 16-bit, palette, alpha, CMYK, resize modes,
channel order, random-resized-crop, and the config keys that choose them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig, RandomResizedCropConfig
from pipeline.config_load import parse_config
from pipeline.data.augment import crop_box
from pipeline.data.image_decode import center_crop_geometry, decoder_for, image_suffixes, train_decoder_for
from pipeline.errors import ConfigError, DataError
from pipeline.manifest import Preprocessing

ORIENTATION = 0x0112


def rgb(seed: int, size: tuple[int, int] = (20, 30)) -> np.ndarray:
    """A smooth-ish random RGB image (H, W, 3), so JPEG keeps it recognisable."""
    coarse = np.random.default_rng(seed).integers(0, 256, (size[0] // 5 + 1, size[1] // 5 + 1, 3), np.uint8)
    return np.ascontiguousarray(coarse.repeat(5, 0).repeat(5, 1)[: size[0], : size[1]])


def config(**data) -> DataConfig:
    return DataConfig(source="unused", **data)


def test_image_suffixes_cover_what_pillow_decodes() -> None:
    suffixes = image_suffixes()
    assert {".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm"} <= set(suffixes)
    assert not {".h5", ".grib", ".bufr", ".mpeg", ".wmf"} & set(suffixes)  # identified by Pillow, never decoded
    assert all(s == s.lower() and s.startswith(".") for s in suffixes)


def test_exif_orientation_applied_first(tmp_path: Path) -> None:
    """A JPEG with Orientation=6 (rotate 90° clockwise to display) is decoded upright, before any resize."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(rgb(0)).save(path, exif=exif, quality=95)
    stored = np.asarray(Image.open(path).convert("RGB"))  # 20×30 as stored, orientation ignored
    upright = decoder_for(config(channels=3))(path)
    assert upright.shape == (3, 30, 20)
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1).transpose(2, 0, 1))
    resized = decoder_for(config(channels=3, image_size=(15, 10)))(path)
    expected = Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).resize((10, 15), Image.BILINEAR)
    np.testing.assert_array_equal(resized, np.asarray(expected).transpose(2, 0, 1))


def test_sixteen_bit_to_rgb_and_resized(tmp_path: Path) -> None:
    """16-bit gray: / 257 rounded (not clipped at 255), then copied into R, G, B and resized."""
    wide = (np.arange(600, dtype=np.uint32).reshape(20, 30) * 109).astype(np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    eight = np.rint(wide / 257).astype(np.uint8)
    chw = decoder_for(config(channels=3))(path)
    np.testing.assert_array_equal(chw, np.stack([eight] * 3))
    small = decoder_for(config(image_size=(10, 15)))(path)
    np.testing.assert_array_equal(small[0], np.asarray(Image.fromarray(eight).resize((15, 10), Image.BILINEAR)))


def test_palette_and_alpha_dropped(tmp_path: Path) -> None:
    """Palette images decode to their palette colours; transparency and alpha are dropped, colours kept."""
    colours = rgb(1)
    palette = Image.fromarray(colours).quantize(8)
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)
    looked_up = np.asarray(palette.getpalette("RGB"), np.uint8).reshape(-1, 3)[np.asarray(palette)]
    np.testing.assert_array_equal(decoder_for(config())(path), looked_up.transpose(2, 0, 1))
    rgba = np.dstack([colours, np.zeros((20, 30), np.uint8)])  # fully transparent: colour values still kept
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(decoder_for(config())(tmp_path / "rgba.png"), colours.transpose(2, 0, 1))
    gray = np.asarray(Image.fromarray(colours).convert("L"))
    np.testing.assert_array_equal(decoder_for(config(channels=1))(tmp_path / "rgba.png")[0], gray)


def test_cmyk_jpeg_converted_by_pillow(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb(2)).convert("CMYK").save(path, quality=95)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(decoder_for(config())(path), expected.transpose(2, 0, 1))


def test_float_images_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.zeros((4, 4), np.float32)).save(path)
    with pytest.raises(DataError, match="32-bit float"):
        decoder_for(config())(path)


@pytest.mark.parametrize(
    ("image_hw", "size", "ratio", "resized", "offset"),
    [
        ((480, 640), (224, 224), 0.875, (256, 341), (16, 58)),  # 58.5 rounds to 58, as torchvision's CenterCrop
        ((640, 480), (224, 224), 0.875, (341, 256), (58, 16)),
        ((20, 30), (8, 8), 0.875, (9, 13), (0, 2)),
        ((20, 20), (8, 16), 0.875, (18, 18), (5, 1)),  # non-square crop: the wider target limits
        ((300, 300), (224, 224), 1.0, (224, 224), (0, 0)),
    ],
)
def test_center_crop_geometry(image_hw, size, ratio, resized, offset) -> None:
    assert center_crop_geometry(*image_hw, size, ratio) == (resized, offset)


def test_center_crop_pixels(tmp_path: Path) -> None:
    """center-crop: Pillow bilinear to the covering size, then the centered window; the rest of the rule unchanged."""
    path = tmp_path / "wide.png"
    Image.fromarray(rgb(3)).save(path)
    chw = decoder_for(config(image_size=(8, 8), resize="center-crop"))(path)
    expected = Image.fromarray(rgb(3)).resize((13, 9), Image.BILINEAR).crop((2, 0, 10, 8))
    np.testing.assert_array_equal(chw, np.asarray(expected).transpose(2, 0, 1))


def test_bgr_reverses_channels(tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    Image.fromarray(rgb(4)).save(path)
    as_rgb = decoder_for(config(image_size=(10, 10)))(path)
    as_bgr = decoder_for(config(image_size=(10, 10), channel_order="BGR"))(path)
    np.testing.assert_array_equal(as_bgr, as_rgb[::-1])
    Image.fromarray(rgb(4)[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(DataError, match="grayscale but data.channel_order is BGR"):
        decoder_for(config(channel_order="BGR"))(tmp_path / "gray.png")
    np.testing.assert_array_equal(
        decoder_for(config(channels=3, channel_order="BGR"))(tmp_path / "gray.png")[0], rgb(4)[..., 0]
    )


def test_arrays_conform_like_files() -> None:
    """Array sources (taken as RGB) go through the same rule; nothing to change returns the array itself."""
    x = np.stack([rgb(5).transpose(2, 0, 1), rgb(6).transpose(2, 0, 1)])
    assert decoder_for(config()).conform_array(x, "arrays") is x
    bgr = decoder_for(config(channel_order="BGR", image_size=(8, 8), resize="center-crop")).conform_array(x, "arrays")
    expected = Image.fromarray(rgb(6)).resize((13, 9), Image.BILINEAR).crop((2, 0, 10, 8))
    np.testing.assert_array_equal(bgr[1], np.asarray(expected).transpose(2, 0, 1)[::-1])


def test_train_decoder_without_crop_is_the_eval_decoder(tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    Image.fromarray(rgb(7)).save(path)
    cfg = config(image_size=(12, 12), augment={"hflip": True})
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(train_decoder_for(cfg)(path, rng), decoder_for(cfg)(path))
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn


def test_random_resized_crop(tmp_path: Path) -> None:
    """The crop is drawn from the decoded (oriented) original and resized to image_size; seeded, repeatable."""
    path = tmp_path / "colour.png"
    Image.fromarray(rgb(8)).save(path)
    cfg = config(image_size=(12, 12), augment={"random_resized_crop": {"scale": [0.2, 0.6]}})
    decode = train_decoder_for(cfg)
    first = decode(path, np.random.default_rng(3))
    np.testing.assert_array_equal(first, decode(path, np.random.default_rng(3)))
    top, left, height, width = crop_box(20, 30, np.random.default_rng(3), cfg.augment.random_resized_crop)
    assert 0.2 * 600 * 0.9 <= height * width <= 0.6 * 600 * 1.1
    expected = Image.fromarray(rgb(8)).crop((left, top, left + width, top + height)).resize((12, 12), Image.BILINEAR)
    np.testing.assert_array_equal(first, np.asarray(expected).transpose(2, 0, 1))
    assert not np.array_equal(first, decode(path, np.random.default_rng(4)))


def test_crop_box_fallback_is_centered() -> None:
    """When no draw fits (ratio 2 of a 30 × 30 image at full area), the largest centered crop of that ratio."""
    cfg = RandomResizedCropConfig(scale=(1.0, 1.0), ratio=(2.0, 2.0))
    assert crop_box(30, 30, np.random.default_rng(0), cfg) == (7, 0, 15, 30)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"resize": "center-crop"}, "needs data.image_size"),
        ({"image_size": [8, 8], "crop_ratio": 0.9}, "center-crop only"),
        ({"channels": 1, "channel_order": "BGR"}, "BGR needs 3-channel"),
        ({"augment": {"random_resized_crop": {"scale": [0.5, 0.1]}}}, "0 < min <= max"),
        ({"augment": {"random_resized_crop": {"scale": [0.5, 2]}}}, "at most 1"),
    ],
)
def test_bad_decode_keys(data: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config({"data": data})


def test_old_preprocessing_records_load() -> None:
    """A record written before these fields: stretch, no EXIF rule, its own decode text kept."""
    old = Preprocessing.model_validate(
        {"mean": [0.5], "std": [0.5], "channels": 1, "height": 8, "width": 8, "decode": "old words"}
    )
    assert (old.resize_mode, old.crop_ratio, old.exif_transpose, old.decode) == ("stretch", None, False, "old words")
    assert old.channel_order == "gray" and old.training_only is None


def test_array_source_rule_recorded(tmp_path: Path) -> None:
    """digits (arrays) through center-crop, RGB and BGR: pixels as the rule says, and the manifest records the rule."""
    from pipeline.data.splits import load_splits
    from pipeline.manifest import Manifest
    from pipeline.rundir import RunDir

    data = {"source": "digits", "channels": 3, "image_size": [6, 6], "resize": "center-crop", "crop_ratio": 0.5}
    data["channel_order"] = "BGR"
    raw = {"data": {**data, "augment": {"random_resized_crop": {}, "hflip": True}}}
    config = parse_config(raw)
    run = RunDir(tmp_path / "run", config, Manifest(edgepipe_version="test", config=config.model_dump(mode="json")))
    splits = run.splits
    assert splits.input_shape == (3, 6, 6)
    rgb_splits = load_splits(config.data.model_copy(update={"channel_order": "RGB"}), seed=0)
    np.testing.assert_array_equal(splits.test.x[:5], rgb_splits.test.x[:5, ::-1])
    gray = load_splits(DataConfig(source="digits"), seed=0).test.x[0, 0]
    covering = Image.fromarray(gray).convert("RGB").resize((12, 12), Image.BILINEAR)  # 6 / 0.5, crop at (12 - 6) / 2
    expected = np.asarray(covering.crop((3, 3, 9, 9)))
    np.testing.assert_array_equal(rgb_splits.test.x[0], expected.transpose(2, 0, 1))
    record = run.preprocessing
    assert (record.channel_order, record.resize_mode, record.crop_ratio, record.exif_transpose) == (
        "BGR",
        "center-crop",
        0.5,
        True,
    )
    assert "random-resized-crop" in record.training_only and "flip" in record.training_only
