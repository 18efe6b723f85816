"""The release bundle's feeding code (README `load_pixels` + `model_input`), run as written, decodes every image kind
exactly as the run did, and on a real run's image folder reproduces the accuracy the bundle reports."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG
from PIL import Image

from pipeline.config_load import parse_config
from pipeline.data.image_decode import decoder_for
from pipeline.manifest import Manifest
from pipeline.report.release_readme import PREPARE
from pipeline.rundir import RunDir

ORIENTATION = 0x0112


def smooth_rgb(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    coarse = rng.integers(0, 256, (size[0] // 4 + 1, size[1] // 4 + 1, 3), np.uint8)
    return np.ascontiguousarray(coarse.repeat(4, 0).repeat(4, 1)[: size[0], : size[1]])


def write_kinds(folder: Path, seed: int, size: tuple[int, int] = (20, 30)) -> list[Path]:
    """One tiny file of each kind real folders hold, all H×W ``size`` as displayed."""
    rng = np.random.default_rng(seed)
    colour = smooth_rgb(rng, size)
    gray = colour[..., 1]
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored rotated 90° counter-clockwise; displayed (and decoded) upright
    stored_sideways = Image.fromarray(np.ascontiguousarray(np.rot90(colour)))
    palette = Image.fromarray(colour).quantize(12)
    wide = np.minimum(gray.astype(np.int64) * 257 + rng.integers(0, 200, size), 65535).astype(
        np.uint16
    )  # not multiples of 257
    writes = {
        "gray16.png": lambda p: Image.fromarray(wide).save(p),
        "gray16.tif": lambda p: Image.fromarray(gray.astype(np.uint16) * 250).save(p),
        "gray8.png": lambda p: Image.fromarray(gray).save(p),
        "bilevel.png": lambda p: Image.fromarray(gray > 127).save(p),
        "gray_alpha.png": lambda p: Image.fromarray(np.dstack([gray, gray[::-1]])).save(p),
        "palette.png": lambda p: palette.save(p),
        "palette_transparent.png": lambda p: palette.save(p, transparency=3),
        "palette.gif": lambda p: palette.save(p),
        "rgba.png": lambda p: Image.fromarray(np.dstack([colour, gray])).save(p),
        "rotated.jpg": lambda p: stored_sideways.save(p, exif=exif, quality=90),
        "photo.jfif": lambda p: Image.fromarray(colour).save(p, format="JPEG", quality=90),
        "cmyk.jpg": lambda p: Image.fromarray(colour).convert("CMYK").save(p, quality=90),
        "lossless.webp": lambda p: Image.fromarray(colour).save(p, lossless=True),
        "colour.bmp": lambda p: Image.fromarray(colour).save(p),
    }
    paths = []
    for name, write in writes.items():
        write(folder / name)
        paths.append(folder / name)
    return paths


def readme_load_pixels(bundle_dir: Path, preprocessing: dict, monkeypatch: pytest.MonkeyPatch):
    """The README's first code block, run as written in a bundle directory whose manifest holds ``preprocessing``."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    entry = {"preprocessing": preprocessing, "input": {}, "output": {}}
    (bundle_dir / "manifest.json").write_text(json.dumps({"artifacts": {"model": entry}}))
    monkeypatch.chdir(bundle_dir)
    namespace: dict = {}
    exec(PREPARE.format(name="model"), namespace)
    return namespace["load_pixels"]


@pytest.fixture(scope="module")
def kinds_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kinds") / "data"
    for label, seed in (("a", 0), ("b", 1)):
        write_kinds(root / label, seed)
        write_kinds(root / label / "more", seed + 10)
    return root


@pytest.mark.parametrize(
    "data",
    [
        {"channels": 1, "image_size": [12, 12]},
        {"channels": 3, "image_size": [16, 16], "resize": "center-crop"},
        {"channels": 3, "image_size": [10, 14], "resize": "center-crop", "crop_ratio": 0.6, "channel_order": "BGR"},
        {"channels": 3, "image_size": [20, 30], "channel_order": "BGR"},
        {"channels": 1, "image_size": [16, 16], "resize": "center-crop", "crop_ratio": 0.9},
    ],
    ids=["gray-stretch", "rgb-center-crop", "bgr-center-crop-nonsquare", "bgr-stretch", "gray-center-crop"],
)
def test_load_pixels_equals_the_run_decoder(
    kinds_folder: Path, tmp_path: Path, data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each image kind (16-bit PNG/TIFF, 1-bit, gray+alpha, palette with and without transparency, GIF, RGBA,
    EXIF-rotated JPEG, .jfif, CMYK JPEG, WebP, BMP), decoded by the README's load_pixels from the run's manifest
    record, gives exactly the pixels the run decoded."""
    stats = {"mean": [0.5] * data["channels"], "std": [0.25] * data["channels"]}
    config = parse_config({"data": {"source": str(kinds_folder), **data, **stats}})
    run = RunDir(tmp_path / "run", config, Manifest(edgepipe_version="test", config=config.model_dump(mode="json")))
    record = run.preprocessing.model_dump(mode="json")
    assert record["exif_transpose"] is True and record["resize_mode"] == data.get("resize", "stretch")
    load_pixels = readme_load_pixels(tmp_path / "bundle", record, monkeypatch)
    decode = decoder_for(config.data)
    files = sorted(path for path in kinds_folder.rglob("*") if path.is_file())
    assert len(files) == 56
    for path in files:
        expected = decode(path).transpose(1, 2, 0)
        assert expected.shape == (*data["image_size"], data["channels"])
        np.testing.assert_array_equal(load_pixels(path), expected, err_msg=str(path))


def test_load_pixels_native_size(kinds_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a resize each file keeps its displayed size: the EXIF-rotated JPEG comes out 20×30, not 30×20."""
    record = {"channels": 3, "resize": None, "channel_order": "RGB", "exif_transpose": True}
    load_pixels = readme_load_pixels(tmp_path / "bundle", record, monkeypatch)
    decode = decoder_for(parse_config({"data": {"source": "digits", "channels": 3}}).data)
    for path in sorted((kinds_folder / "a").glob("*.*")):
        assert load_pixels(path).shape == (20, 30, 3)
        np.testing.assert_array_equal(load_pixels(path), decode(path).transpose(1, 2, 0), err_msg=str(path))


def write_digits(root: Path) -> list[Path]:
    """digits (8×8) as a train/ + test/ folder: training images 16-bit gray PNGs (the issue's pattern), test images
    of several kinds; returns the test files."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    test_files = []
    for i, (image, label) in enumerate(zip(pixels[:900], bunch.target[:900])):
        split = "test" if i % 5 == 0 else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        if split == "train":
            Image.fromarray(image.astype(np.uint16) * 257).save(folder / f"{i}.png")
            continue
        kind = (i // 5) % 4
        if kind == 0:
            path = folder / f"{i}.png"
            Image.fromarray(image.astype(np.uint16) * 257).save(path)
        elif kind == 1:
            path = folder / f"{i}.png"
            Image.fromarray(image).convert("P").save(path)
        elif kind == 2:
            path = folder / f"{i}.png"
            Image.fromarray(np.dstack([image, image, image, np.full_like(image, 90)])).save(path)
        else:
            path = folder / f"{i}.tif"
            Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(path, exif=exif)
        test_files.append(path)
    return sorted(test_files, key=lambda p: (int(p.parent.name), p.name))


@pytest.mark.usefixtures("one_thread")
def test_bundle_code_reproduces_accuracy_on_an_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run on an image folder (16-bit PNG training images; 16-bit, palette, RGBA and EXIF-rotated TIFF test
    images): the README's code, fed the test files, scores exactly the top-1 the bundle reports."""
    from pipeline.stages.bench import run_bench
    from pipeline.stages.calibrate import run_calibrate
    from pipeline.stages.distill import run_distill
    from pipeline.stages.export import run_export
    from pipeline.stages.release import build_release

    test_files = write_digits(tmp_path / "digits")
    raw = copy.deepcopy(TINY_CONFIG)
    raw["data"] = {"source": str(tmp_path / "digits"), "channels": 1, "mean": [0.3], "std": [0.4]}
    raw["export"] = {"targets": ["onnx-fp32"]}
    raw["teacher"], raw["distill"] = {"epochs": 1, "batch_size": 64}, {"epochs": 1, "batch_size": 64}
    raw["bench"] = {**raw["bench"], "batch_sizes": [1], "threads": [1], "memory": False}
    run = RunDir.create(tmp_path / "run", parse_config(raw))
    run_distill(run)
    run_calibrate(run)
    run_export(run, ["onnx-fp32"])
    run_bench(run)
    bundle = tmp_path / "bundle"
    manifest = build_release(run, ["onnx-fp32"], bundle)
    reported = manifest.artifacts["onnx-fp32"].measurements[0].accuracy
    assert reported > 30 and len(test_files) == run.manifest.data.test

    blocks = re.findall(r"```python\n(.*?)```", (bundle / "README.md").read_text(), re.S)
    monkeypatch.chdir(bundle)
    namespace: dict = {"paths": test_files}
    exec(blocks[0] + next(block for block in blocks[1:] if "onnxruntime" in block), namespace)
    labels = [path.parent.name for path in test_files]
    accuracy = round(float(np.mean([p == t for p, t in zip(namespace["classes"], labels)]) * 100), 2)
    assert accuracy == reported

    # `edgepipe bench FILE --data`: fed as the file's embedded entry says (mean 0.3 / std 0.4, not the folder's own
    # statistics), it scores the reported figure too
    from typer.testing import CliRunner

    from pipeline.cli import app

    args = ["bench", str(bundle / "student-onnx-fp32.onnx"), "--data", str(tmp_path / "digits"), "--batch", "1"]
    result = CliRunner().invoke(app, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert f"test top-1 {reported:.2f} %" in result.output and "metadata embedded in the file" in result.output
