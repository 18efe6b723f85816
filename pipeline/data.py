"""Data sets: the embedded Fashion-MNIST and digits, IDX directories and .npz files; fixed-seed splits.

Images are kept as uint8 NCHW; models see ``(x / 255 - mean) / std`` with mean/std per channel from the
training split, recorded in the manifest as the preprocessing every artifact expects.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.registry import Registry

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]


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
    """Train/val/test splits plus what a consumer needs to feed any artifact."""

    train: Images
    val: Images
    test: Images
    classes: list[str]
    mean: list[float]
    std: list[float]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def normalize(self, x_uint8: np.ndarray) -> np.ndarray:
        """uint8 NCHW → float32 NCHW model input."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x_uint8.astype(np.float32) / 255.0) - mean) / std


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


def _from_path(path_text: str) -> tuple[Images, Images | None]:
    path = Path(path_text)
    if not path.exists():
        raise DataError(f"data path {path} does not exist", "give a built-in name (fashion-mnist, digits) or an existing path")
    if path.is_dir():
        return read_idx_dir(path)
    if path.suffix == ".npz":
        return read_npz(path), None
    raise DataError(f"{path} is neither an IDX directory nor an .npz file")


def _stratified_val(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        picked.append(rng.choice(members, size=max(1, round(len(members) * fraction)), replace=False))
    return np.sort(np.concatenate(picked))


def _split(images: Images, fraction: float, rng: np.random.Generator) -> tuple[Images, Images]:
    held = _stratified_val(images.y, fraction, rng)
    kept = np.setdiff1d(np.arange(len(images)), held)
    return images.take(kept), images.take(held)


def load_splits(config: DataConfig, seed: int) -> Splits:
    """Load the configured data and split it with ``seed``; val is carved from train, never from test."""
    if config.source in SOURCES:
        train, test, classes = SOURCES.get(config.source)(config)
    else:
        train, test = _from_path(config.source)
        classes = None
    if config.test is not None:
        test = _from_path(config.test)[0]
    rng = np.random.default_rng(seed)
    if test is None:
        train, test = _split(train, config.test_fraction, rng)
    train, val = _split(train, config.val_fraction, rng)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    classes = classes or [str(c) for c in range(num_classes)]
    if test.x.shape[1:] != train.x.shape[1:]:
        raise DataError(f"test images are {test.x.shape[1:]} but train images are {train.x.shape[1:]} (C,H,W)")
    if int(train.y.min()) < 0 or num_classes > len(classes):
        raise DataError(f"labels must lie in 0..{len(classes) - 1}; found {train.y.min()}..{num_classes - 1}")
    pixels = train.x.astype(np.float32) / 255.0
    mean = [round(float(v), 6) for v in pixels.mean(axis=(0, 2, 3))]
    std = [round(float(v), 6) for v in np.maximum(pixels.std(axis=(0, 2, 3)), 1e-3)]
    return Splits(train, val, test, classes, mean, std)
