"""Data sets: the embedded Fashion-MNIST and digits, IDX directories, .npz files and image folders; fixed-seed splits.

Images are kept as uint8 NCHW. Every source goes through the same preprocessing: converted to ``data.channels``
(Pillow ``L`` or ``RGB``) and resized to ``data.image_size`` (Pillow bilinear) when those are set. Models see
``(x / 255 - mean) / std`` with mean/std per channel from the config or, by default, from the training split; the
manifest records all of it as the preprocessing every artifact expects. Augmentation (``pipeline.augment``) is
applied to training batches only, through ``Splits.train_batch``; ``Splits.train``/``val``/``test`` stay raw.
"""

from __future__ import annotations

import gzip
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.augment import augment_batch
from pipeline.config import AugmentConfig, DataConfig
from pipeline.errors import ConfigError, DataError
from pipeline.image_decode import IMAGE_SUFFIXES, decode_image, pil_to_chw
from pipeline.registry import Registry

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
PROGRESS_MIN_FILES = 2000
DECODE_CHUNK = 256


@dataclass(frozen=True)
class Images:
    """A labelled image set: uint8 NCHW pixels, int64 labels and stable sample ids."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> "Images":
        return Images(self.x[index], self.y[index], self.ids[index])


@dataclass(frozen=True)
class Splits:
    """Train/val/test splits plus what a consumer needs to feed any artifact.

    ``train``, ``val`` and ``test`` hold the preprocessed but never augmented pixels; ``train_batch`` is the
    one place augmentation happens.
    """

    train: Images
    val: Images
    test: Images
    classes: list[str]
    mean: list[float]
    std: list[float]
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    resize: tuple[int, int] | None = None
    stats_from: str = "train"
    layout: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def channel_order(self) -> str | None:
        """``gray`` for one channel, ``RGB`` for three, None for other channel counts (npz arrays kept as given)."""
        return {1: "gray", 3: "RGB"}.get(self.input_shape[0])

    def normalize(self, x_uint8: np.ndarray) -> np.ndarray:
        """uint8 NCHW → float32 NCHW model input."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x_uint8.astype(np.float32) / 255.0) - mean) / std

    def train_batch(self, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 NCHW training rows ``index``, augmented as ``data.augment`` says (unchanged when it is off)."""
        return augment_batch(self.train.x[index], rng, self.augment)


@dataclass(frozen=True)
class Source:
    """What one data source yields before preprocessing and splitting."""

    train: Images
    test: Images | None
    classes: list[str] | None
    layout: str


SourceLoader = Callable[[DataConfig], "tuple[Images, Images | None, list[str]]"]
SOURCES: Registry[SourceLoader] = Registry("data source")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip'd) into a numpy array."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] not in dtypes:
                raise DataError(f"{path} is not an IDX file (bad magic number)")
            ndim = header[3]
            dims = f.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise DataError(f"{path} is truncated: its header names {ndim} dimensions")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            data = np.frombuffer(f.read(), dtype=dtypes[header[2]])
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx_dir(directory: Path) -> tuple[Images, Images | None]:
    """Read ``train-images-idx3-ubyte[.gz]`` and friends; the t10k files, when present, are the test split."""
    pairs = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            pairs[split] = _images(read_idx(images)[:, None], read_idx(labels), str(images))
    if "train" not in pairs:
        raise DataError(
            f"{directory} holds no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz] pair",
            "point data.source at a directory of IDX files",
        )
    return pairs["train"], pairs.get("test")


def read_npz(path: Path) -> Images:
    """Read an .npz with ``x`` (N,H,W | N,H,W,C | N,C,H,W, uint8 or float in [0,1]) and ``y`` (N,)."""
    try:
        with np.load(path) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataError(f"{path} must hold arrays 'x' and 'y'; found {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if x.size == 0:
        raise DataError(f"{path} holds no samples")
    if x.dtype != np.uint8:
        if not np.isfinite(x).all():  # NaN slips past the range check below and casts to 0
            raise DataError(f"{path}: x holds NaN or infinite values", "give finite pixels: uint8, or floats in [0, 1]")
        if x.min() < 0 or x.max() > 1:
            raise DataError(f"{path}: float images must lie in [0, 1]; found [{x.min():.3g}, {x.max():.3g}]")
        x = np.round(x * 255).astype(np.uint8)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataError(f"{path}: x must be N×H×W or N×H×W×C or N×C×H×W; got shape {x.shape}")
    return _images(x, y, str(path))


def _images(x: np.ndarray, y: np.ndarray, where: str) -> Images:
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{where} holds no samples")
    return Images(np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64), np.arange(len(y)))


# --- image folders -------------------------------------------------------------------------------------------


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), in sorted path order."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def _class_folders(root: Path) -> tuple[list[str], list[list[Path]]]:
    folders = _visible_dirs(root)
    if len(folders) < 2:
        raise DataError(
            f"{root} holds {len(folders)} class sub-folder(s); an image folder needs one sub-folder per class "
            "(at least 2)",
            "lay it out as PATH/<class>/<image> or PATH/train/<class>/<image> + PATH/test/<class>/<image>, "
            "or give a directory of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte)",
        )
    files = []
    for folder in folders:
        found = _image_files(folder)
        if not found:
            raise DataError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                "add images or remove the folder",
            )
        files.append(found)
    return [folder.name for folder in folders], files


def _decode_all(paths: list[Path], channels: int | None, size: tuple[int, int] | None, root: Path) -> np.ndarray:
    """Decode ``paths`` in order into one uint8 N×C×H×W array (threads: Pillow decodes without the GIL).

    Without ``channels``/``size`` every image must match the first one; the error names both files.
    """

    def decode(path: Path) -> tuple[np.ndarray, int]:
        return decode_image(path, channels, size)

    out = np.empty(0, np.uint8)
    first_path, first_native = paths[0], 0
    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool,
        _progress(f"reading {root}", len(paths)) as advance,
    ):
        warnings.simplefilter("ignore", UserWarning)  # Pillow: palette transparency, corrupt EXIF
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = paths[start : start + DECODE_CHUNK]
            for i, (path, (pixels, native)) in enumerate(zip(chunk, pool.map(decode, chunk)), start):
                if i == 0:
                    out, first_native = np.empty((len(paths), *pixels.shape), np.uint8), native
                elif channels is None and native != first_native:
                    gray, colour = (first_path, path) if first_native == 1 else (path, first_path)
                    raise DataError(
                        f"{root} mixes grayscale ({gray}) and colour ({colour}) images",
                        "set data.channels to 1 or 3 to convert every image",
                    )
                elif pixels.shape[1:] != out.shape[2:]:
                    raise DataError(
                        f"{root} mixes image sizes: {first_path} is {out.shape[2]}×{out.shape[3]} (H×W), "
                        f"{path} is {pixels.shape[1]}×{pixels.shape[2]}",
                        "set data.image_size: [H, W] to resize every image",
                    )
                out[i] = pixels
            advance(len(chunk))
    return out


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` of a progress bar, shown only for folders of PROGRESS_MIN_FILES images or more."""
    if total < PROGRESS_MIN_FILES:
        yield lambda n: None
        return
    from pipeline.progress import progress_bar

    with progress_bar() as bar:
        task = bar.add_task(label, total=total, status="")
        yield lambda n: bar.update(task, advance=n)


def _read_class_folders(root: Path, channels: int | None, size: tuple[int, int] | None) -> tuple[Images, list[str]]:
    classes, files = _class_folders(root)
    paths = [path for found in files for path in found]
    labels = np.concatenate([np.full(len(found), label) for label, found in enumerate(files)])
    return _images(_decode_all(paths, channels, size, root), labels, str(root)), classes


def _is_split_layout(root: Path) -> bool:
    return (root / "train").is_dir() and bool(_visible_dirs(root / "train"))


def read_image_folder(root: Path, channels: int | None = None, size: tuple[int, int] | None = None) -> Source:
    """Read ``root/<class>/*`` (or ``root/train/<class>/*`` + ``root/test/<class>/*``).

    Labels index the class names sorted by name; samples are ordered by class, then by path, and their ids are
    positions in that order. Images are converted to ``channels`` and resized to ``size`` when given; without
    them every image must already share one channel count and size.
    """
    if not _is_split_layout(root):
        train, classes = _read_class_folders(root, channels, size)
        return Source(train, None, classes, "image-folder")
    others = [d.name for d in _visible_dirs(root) if d.name not in ("train", "test")]
    if others:
        raise DataError(
            f"{root} holds {others} beside train/ and test/",
            "move them out, or point data.test at a separate test folder",
        )
    train, classes = _read_class_folders(root / "train", channels, size)
    if not (root / "test").is_dir():
        return Source(train, None, classes, "image-folder train/")
    test, test_classes = _read_class_folders(root / "test", channels, size)
    _same_classes(classes, test_classes, f"{root / 'train'}", f"{root / 'test'}")
    return Source(train, test, classes, "image-folder train/ + test/")


def _same_classes(classes: list[str], other: list[str], where: str, other_where: str) -> None:
    if classes != other:
        only, other_only = sorted(set(classes) - set(other)), sorted(set(other) - set(classes))
        raise DataError(f"class folders differ: only in {where}: {only}; only in {other_where}: {other_only}")


# --- sources -------------------------------------------------------------------------------------------------


@SOURCES.register("fashion-mnist")
def _fashion_mnist(config: DataConfig) -> tuple[Images, Images | None, list[str]]:
    if _find_idx(FASHION_MNIST_DIR, "train-images-idx3-ubyte") is None:
        raise DataError(
            f"Fashion-MNIST not found under {FASHION_MNIST_DIR}",
            "install it with `apt-get install dataset-fashion-mnist`, or use --data digits",
        )
    train, test = read_idx_dir(FASHION_MNIST_DIR)
    return train, test, FASHION_MNIST_CLASSES


@SOURCES.register("digits")
def _digits(config: DataConfig) -> tuple[Images, Images | None, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    return _images(x, bunch.target, "digits"), None, [str(d) for d in range(10)]


def _from_path(path_text: str, config: DataConfig) -> Source:
    path = Path(path_text)
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist", "give a built-in name (fashion-mnist, digits) or an existing path"
        )
    if path.is_dir():
        if _find_idx(path, "train-images-idx3-ubyte") or _find_idx(path, "train-labels-idx1-ubyte"):
            train, test = read_idx_dir(path)
            return Source(train, test, None, "idx")
        return read_image_folder(path, config.channels, config.image_size)
    if path.suffix == ".npz":
        return Source(read_npz(path), None, None, "npz")
    raise DataError(f"{path} is neither an IDX directory, an image folder nor an .npz file")


def _load_source(config: DataConfig) -> Source:
    if config.source in SOURCES:
        train, test, classes = SOURCES.get(config.source)(config)
        return Source(train, test, classes, "built-in")
    return _from_path(config.source, config)


def _load_test(config: DataConfig, source: Source) -> tuple[Images, str]:
    """The separate test set of ``data.test``: its (train) images; an image folder must name the same classes."""
    extra = _from_path(config.test, config)
    if extra.test is not None and extra.layout.startswith("image-folder"):
        raise DataError(
            f"data.test {config.test} holds train/ and test/ folders",
            f"point data.test at {Path(config.test) / 'test'}",
        )
    if extra.classes is not None:
        if source.classes is None:
            raise DataError(
                f"data.test {config.test} is an image folder but data.source {config.source} has numeric labels",
                "give both as image folders, or both as labelled arrays",
            )
        _same_classes(source.classes, extra.classes, f"data.source {config.source}", f"data.test {config.test}")
    return extra.train, extra.layout


def conform(images: Images, channels: int | None, size: tuple[int, int] | None, where: str) -> Images:
    """Convert array images to ``channels`` and resize them to ``size`` exactly as image files are (Pillow)."""
    from PIL import Image

    n, native, height, width = images.x.shape
    target = (channels or native, *(tuple(size) if size else (height, width)))
    if target == (native, height, width):
        return images
    if native not in (1, 3):
        raise DataError(
            f"{where}: images with {native} channels cannot be converted or resized",
            "remove data.channels and data.image_size, or give 1- or 3-channel images",
        )
    out = np.empty((n, *target), np.uint8)
    for i, pixels in enumerate(images.x):
        image = Image.fromarray(pixels[0] if native == 1 else pixels.transpose(1, 2, 0))
        out[i] = pil_to_chw(image, channels, size, where)
    return Images(out, images.y, images.ids)


def _pixel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x / 255`` from exact integer sums (no float copy of the whole set)."""
    total = np.zeros(x.shape[1], np.int64)
    squares = np.zeros(x.shape[1], np.int64)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.int64)
        total += part.sum(axis=(0, 2, 3))
        squares += (part * part).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0)) / 255
    return ([round(float(v), 6) for v in mean / 255], [round(float(v), 6) for v in np.maximum(std, 1e-3)])


def _check_per_channel(config: DataConfig, channels: int) -> None:
    for key in ("mean", "std"):
        values = getattr(config, key)
        if values is not None and len(values) != channels:
            raise ConfigError(
                f"data.{key} has {len(values)} values but the images have {channels} channel(s)",
                f"give one value per channel, or set data.channels to {len(values)}",
            )


def load_splits(config: DataConfig, seed: int) -> Splits:
    """Load the configured data, preprocess and split it with ``seed``; val is carved from train, never from test."""
    source = _load_source(config)
    test, layout = source.test, source.layout
    if config.test is not None:
        test, test_layout = _load_test(config, source)
        layout = f"{layout}; test: {test_layout}"
    train = conform(source.train, config.channels, config.image_size, config.source)
    if test is not None:
        test = conform(test, config.channels, config.image_size, config.test or config.source)
    rng = np.random.default_rng(seed)
    if test is None:
        train, test = _split(train, config.test_fraction, rng, config.source)
    train, val = _split(train, config.val_fraction, rng, config.source)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    classes = source.classes or [str(c) for c in range(num_classes)]
    if test.x.shape[1:] != train.x.shape[1:]:
        raise DataError(
            f"test images are {test.x.shape[1:]} but train images are {train.x.shape[1:]} (C,H,W)",
            "set data.image_size: [H, W] and data.channels to bring both to one shape",
        )
    if int(train.y.min()) < 0 or num_classes > len(classes):
        raise DataError(f"labels must lie in 0..{len(classes) - 1}; found {train.y.min()}..{num_classes - 1}")
    _check_per_channel(config, train.x.shape[1])
    height, width = train.x.shape[2:]
    if config.augment.crop_padding >= min(height, width):
        raise ConfigError(
            f"data.augment.crop_padding ({config.augment.crop_padding}) must be smaller than the "
            f"images ({height}×{width} H×W)",
            "lower it, or set data.image_size",
        )
    if config.mean is not None and config.std is not None:
        mean, std, stats_from = list(config.mean), list(config.std), "config"
    else:
        (mean, std), stats_from = _pixel_stats(train.x), "train"
    resize = tuple(config.image_size) if config.image_size else None
    return Splits(train, val, test, classes, mean, std, config.augment, resize, stats_from, layout)


def _stratified_val(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        picked.append(rng.choice(members, size=max(1, round(len(members) * fraction)), replace=False))
    return np.sort(np.concatenate(picked))


def _split(images: Images, fraction: float, rng: np.random.Generator, where: str) -> tuple[Images, Images]:
    held = _stratified_val(images.y, fraction, rng)
    kept = np.setdiff1d(np.arange(len(images)), held)
    if len(kept) == 0:
        raise DataError(
            f"{where}: {len(images)} samples are too few to split into train, validation and test",
            "give several samples per class (each split takes at least one of every class)",
        )
    return images.take(kept), images.take(held)
