"""Data sets: the embedded Fashion-MNIST and digits, IDX directories, .npz files and image folders; fixed-seed splits.

Images are uint8 NCHW. Built-in, IDX and npz sources are plain arrays in memory. Image folders are lazy: listing
them gives paths and labels, and pixels are decoded (``pipeline.data.image_decode.decoder_for``) only when rows are
asked for — ``Images.x`` is then a ``LazyPixels`` whose slices and index arrays decode in threads (Pillow decodes
without the GIL), so memory does not grow with the folder. Every source goes through the same preprocessing:
converted to ``data.channels`` and brought to ``data.image_size`` when those are set. Models see
``(x / 255 - mean) / std`` with mean/std per channel from the config or, by default, from the training split (for a
lazy folder: a seeded sample of at most ``STATS_SAMPLES`` training images); the manifest records all of it as the
preprocessing every artifact expects. Augmentation (``pipeline.data.augment``) is applied to training batches only,
through ``Splits.train_batch``; ``Splits.train``/``val``/``test`` stay raw.

Image folders: files with an extension Pillow can open (``image_suffixes``, any case) are images; other files are
skipped and listed (``Splits.skipped``); hidden files and folders are ignored; symbolic links to files and folders
are followed, but each real folder is walked once and each real file listed once across all classes: a link that
leads to another class folder, the data root or above is not followed, and a file met again is skipped — both
noted (``Splits.notes``, ``Splits.duplicates``). Each class must have at least one image in every split
(``data.small_classes``).
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

from pipeline.config import AugmentConfig, DataConfig
from pipeline.data.augment import augment_batch, random_resized_crop
from pipeline.data.image_decode import decoder_for, image_suffixes, native_channels, rule_for, train_decoder_for
from pipeline.errors import ConfigError, DataError
from pipeline.measure.machine_load import usable_cores
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
DECODE_THREADS = min(8, usable_cores())
STATS_SAMPLES = 2000  # lazy folders: mean/std from a seeded sample of at most this many training images
LOADER_WORKERS = min(4, usable_cores())  # DataLoader processes decoding a lazy folder's training batches
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap height and width


class LazyPixels:
    """uint8 N×C×H×W pixels of image files, decoded on demand.

    ``x[i]``, ``x[i:j]``, ``x[index_array]``, ``x[bool_mask]``, ``x[rows, ...]`` and ``np.asarray(x)`` decode just
    those rows (in threads); ``shape``, ``len`` and ``take`` decode nothing. Every file must decode to
    ``sample_shape`` (C, H, W).

    Raises (when rows are decoded):
        DataError: a file cannot be decoded, or decodes to another shape (its path in the message).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self,
        paths: np.ndarray,
        sample_shape: tuple[int, int, int],
        decode: Callable[[Path], np.ndarray],
        train_decode: Callable[[Path, np.random.Generator], np.ndarray] | None = None,
    ) -> None:
        self.paths = paths  # str, one per row
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.decode = decode
        self.train_decode = train_decode

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), *self.sample_shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, index: np.ndarray) -> "LazyPixels":
        """The rows ``index`` as another lazy array (nothing decoded)."""
        return LazyPixels(self.paths[index], self.sample_shape, self.decode, self.train_decode)

    def rows(self, index: np.ndarray, threads: int = DECODE_THREADS) -> np.ndarray:
        """Decode rows ``index`` (int array) into one uint8 array."""
        paths = self.paths[index]
        return self._decoded([lambda path=path: self.decode(Path(path)) for path in paths], paths, threads)

    def train_rows(self, index: np.ndarray, rng: np.random.Generator, threads: int = DECODE_THREADS) -> np.ndarray:
        """Decode rows ``index`` for training: each file through the training decoder (random-resized-crop when
        configured) with its own generator seeded from ``rng``, so the result does not depend on thread order."""
        if self.train_decode is None:
            return self.rows(index, threads)
        paths = self.paths[index]
        seeds = rng.integers(0, 2**63, size=len(paths))
        calls = [
            lambda path=path, seed=seed: self.train_decode(Path(path), np.random.default_rng(seed))  # type: ignore[misc]
            for path, seed in zip(paths, seeds)
        ]
        return self._decoded(calls, paths, threads)

    def _decoded(self, calls: list[Callable[[], np.ndarray]], paths: np.ndarray, threads: int) -> np.ndarray:
        out = np.empty((len(calls), *self.sample_shape), np.uint8)

        def fill(i: int) -> None:
            pixels = calls[i]()
            if pixels.shape != self.sample_shape:
                raise DataError(
                    f"{paths[i]} decodes to {'×'.join(map(str, pixels.shape))} (C×H×W), the folder's images to "
                    f"{'×'.join(map(str, self.sample_shape))}",
                    "set data.channels and data.image_size to bring every image to one shape",
                )
            out[i] = pixels

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow: palette transparency, corrupt EXIF
            if threads <= 1 or len(calls) < 2:
                for i in range(len(calls)):
                    fill(i)
            else:
                with ThreadPoolExecutor(min(threads, len(calls))) as pool:
                    list(pool.map(fill, range(len(calls))))
        return out

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        index = np.arange(len(self))[rows]
        pixels = self.rows(np.atleast_1d(index))
        if np.ndim(index) == 0:
            pixels = pixels[0]
        return pixels[(slice(None), *rest) if np.ndim(index) else rest] if rest else pixels

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        pixels = self.rows(np.arange(len(self)))
        return pixels if dtype is None else pixels.astype(dtype)


class NormalizedView:
    """Float32 model input of lazily decoded pixels: ``x[i:j]``, ``x[index_array]`` (and ``np.asarray``) decode
    and normalize just those rows, so a whole split is never held as float."""

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, pixels: LazyPixels, normalize: Callable[[np.ndarray], np.ndarray]) -> None:
        self.pixels = pixels
        self.normalize = normalize

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.pixels.shape

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, key) -> np.ndarray:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        index = np.arange(len(self))[rows]
        x = self.normalize(self.pixels.rows(np.atleast_1d(index)))
        if np.ndim(index) == 0:
            x = x[0]
        return x[(slice(None), *rest) if np.ndim(index) else rest] if rest else x

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = self[:]
        return x if dtype is None else x.astype(dtype)


Pixels = np.ndarray | LazyPixels


@dataclass(frozen=True)
class Images:
    """A labelled image set: uint8 NCHW pixels (an array, or ``LazyPixels`` for image folders), int64 labels and
    stable sample ids."""

    x: Pixels
    y: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @property
    def lazy(self) -> bool:
        """Whether the pixels are decoded on demand (an image folder)."""
        return isinstance(self.x, LazyPixels)

    def take(self, index: np.ndarray) -> "Images":
        x = self.x.take(index) if isinstance(self.x, LazyPixels) else self.x[index]
        return Images(x, self.y[index], self.ids[index])


@dataclass(frozen=True)
class Splits:
    """Train/val/test splits plus what a consumer needs to feed any artifact.

    ``train``, ``val`` and ``test`` hold the preprocessed but never augmented pixels; ``train_batch`` is the
    one place augmentation happens. ``skipped`` lists the files of an image folder that are not images;
    ``stats_samples`` is how many training images mean/std came from (None: given in the config); ``workers`` how
    many DataLoader processes decode training batches (0: in this process); ``notes`` the data warnings (links
    not followed, files met twice, small classes kept by ``data.small_classes: warn``); ``duplicates`` the files
    skipped because their real file is listed already (each with the path it is listed as).
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
    skipped: tuple[str, ...] = ()
    stats_samples: int | None = None
    workers: int = 0
    notes: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def channel_order(self) -> str | None:
        """``gray`` for one channel, ``RGB`` for three, None for other channel counts (npz arrays kept as given)."""
        return {1: "gray", 3: "RGB"}.get(self.input_shape[0])

    @property
    def lazy(self) -> bool:
        """Whether pixels are decoded on demand (image folders): consumers stream them in batches."""
        return self.train.lazy

    @property
    def fixed_train_inputs(self) -> bool:
        """Whether every epoch feeds the same training inputs (no augmentation) held in memory: only then may a
        teacher's logits over the training split be computed once before training (for a lazy folder that pass
        would decode the whole split before the first step)."""
        return not self.augment.enabled and not self.lazy

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split: {split: {class: count}}."""
        return {
            name: {c: int(n) for c, n in zip(self.classes, np.bincount(images.y, minlength=len(self.classes)))}
            for name, images in (("train", self.train), ("val", self.val), ("test", self.test))
        }

    def normalize(self, x_uint8: Pixels) -> np.ndarray | NormalizedView:
        """uint8 NCHW → float32 NCHW model input; lazy pixels give a ``NormalizedView`` that decodes and normalizes
        on demand (slice it, or use ``batches``)."""
        if isinstance(x_uint8, LazyPixels):
            return NormalizedView(x_uint8, self.normalize)
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        x = x_uint8.astype(np.float32)  # in place from here: one float copy of the batch, not four
        x /= np.float32(255.0)
        x -= mean
        x /= std
        return x

    def batches(self, images: Images, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(float32 N×C×H×W normalized, int64 labels) of ``images`` in order, ``batch_size`` at a time; a lazy set's
        next batch is decoded while the caller works on the current one."""
        starts = range(0, len(images), batch_size)

        def load(start: int) -> tuple[np.ndarray, np.ndarray]:
            return self.normalize(images.x[start : start + batch_size]), images.y[start : start + batch_size]

        if not images.lazy:
            yield from (load(start) for start in starts)
            return
        with ThreadPoolExecutor(1) as pool:
            pending = [pool.submit(load, start) for start in starts[:1]]
            for start in starts[1:]:
                pending.append(pool.submit(load, start))
                yield pending.pop(0).result()
            yield from (future.result() for future in pending)

    def train_batch(self, index: np.ndarray, rng: np.random.Generator, threads: int = DECODE_THREADS) -> np.ndarray:
        """uint8 NCHW training rows ``index``, augmented as ``data.augment`` says (unchanged when it is off); a lazy
        folder's rows are decoded by the training decoder first (``threads`` at a time)."""
        x, crop = self.train.x, self.augment.random_resized_crop
        if isinstance(x, LazyPixels):
            pixels = x.train_rows(index, rng, threads)
        else:
            pixels = x[index] if crop is None else _cropped_arrays(x[index], rng, crop)
        return augment_batch(pixels, rng, self.augment)


def _cropped_arrays(x: np.ndarray, rng: np.random.Generator, crop) -> np.ndarray:
    """Random-resized-crop of each uint8 C×H×W row (1 or 3 channels) back to H×W, drawn from ``rng`` in order."""
    from PIL import Image

    out = np.empty_like(x)
    for i, pixels in enumerate(x):
        image = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
        cropped = np.asarray(random_resized_crop(image, rng, crop, x.shape[2:]))
        out[i] = cropped[None] if cropped.ndim == 2 else cropped.transpose(2, 0, 1)
    return out


@dataclass(frozen=True)
class Source:
    """What one data source yields before preprocessing and splitting (``skipped``: files that are not images;
    ``notes``: listing warnings, such as links not followed; ``duplicates``: files skipped as listed already)."""

    train: Images
    test: Images | None
    classes: list[str] | None
    layout: str
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()


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


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class _Seen:
    """What listing one image folder has met so far, so that each real folder is walked once and each real file
    listed once across all its classes (and across train/ and test/).

    ``classes`` maps the real path of every class folder to its path, ``walked`` each real folder walked to the
    path it was walked as, ``files`` each real image file listed to its listed path; ``notes`` are the data
    warnings (links not followed, duplicates skipped) and ``duplicates`` the files skipped as already listed."""

    data_root: str
    classes: dict[str, str] = field(default_factory=dict)
    walked: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def register(self, folders: list[Path]) -> None:
        """Take ``folders`` as class folders (no link elsewhere may lead into them).

        Raises:
            DataError: two class folders are one real folder.
        """
        for folder in folders:
            real, path = os.path.realpath(folder), os.fspath(folder)
            if self.classes.get(real, path) != path:
                raise DataError(
                    f"class folders {self.classes[real]} and {folder} are the same folder ({real})",
                    "remove one of them (a link), or give each class its own folder",
                )
            self.classes[real] = path

    def owner(self, real: str) -> tuple[str, str] | None:
        """(real path, path) of the class folder that real path ``real`` is or lies under, if any."""
        path = real
        while path not in self.classes:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
        return path, self.classes[path]

    def enter(self, folder: str, real: str, own_class: str) -> bool:
        """Whether to walk ``folder`` (real path ``real``) met while listing class folder ``own_class``: not when it
        leads into another class folder, to the data root or to a folder holding either, nor to a real folder
        walked already (noted, except a link back up its own tree: a loop adds nothing)."""
        owner = self.owner(real)
        if owner is not None and owner[1] != own_class:
            where = "is" if real == owner[0] else "lies inside"
            return self._not_followed(folder, real, f"which {where} the class folder {owner[1]}")
        if owner is None:
            if _inside(self.data_root, real):
                return self._not_followed(
                    folder, real, f"which {'is' if real == self.data_root else 'holds'} the data root"
                )
            held = next((path for key, path in self.classes.items() if _inside(key, real)), None)
            if held is not None:
                return self._not_followed(folder, real, f"which holds the class folder {held}")
        if real in self.walked:
            if not _inside(os.path.realpath(os.path.dirname(folder)), real):
                self._not_followed(folder, real, f"already listed as {self.walked[real]}")
            return False
        self.walked[real] = folder
        return True

    def _not_followed(self, folder: str, real: str, why: str) -> bool:
        self.notes.append(f"{folder} leads to {real}, {why}; not followed")
        return False

    def first_listing(self, images: list[tuple[str, str]], folder: Path) -> list[str]:
        """The paths of ``images`` ((path, real path), in sorted order) whose real file is not listed yet; the others
        are skipped: each in ``duplicates``, one note for the class folder."""
        kept, repeated = [], []
        for path, real in images:
            if real in self.files:
                repeated.append(f"{path} (the same file as {self.files[real]})")
            else:
                self.files[real] = path
                kept.append(path)
        if repeated:
            self.duplicates += repeated
            self.notes.append(
                f"{len(repeated)} file(s) under {folder} are files listed already, skipped (first: {repeated[0]})"
            )
        return kept


def _list_files(folder: Path, seen: _Seen) -> tuple[list[str], list[str]]:
    """Image files under class folder ``folder`` in sorted path order (part by part, as ``Path`` sorts), and the
    other files (not images, broken links).

    Recursive; hidden entries are ignored; links to files and folders are followed, but each real folder is walked
    once and each real file listed once across the whole listing (``seen``): a link to another class folder, the
    data root or above is not followed, a file met again is skipped (both noted in ``seen``). Paths stay strings:
    50,000 ``Path`` objects take seconds to sort."""
    suffixes = image_suffixes()
    top = os.fspath(folder)
    images, others = [], []
    seen.walked.setdefault(os.path.realpath(top), top)
    stack = [top]
    while stack:  # depth first, sub-folders in sorted order: the first path met to a folder is the first sorted
        parent = stack.pop()
        real = os.path.realpath(parent)
        if parent != top and not seen.enter(parent, real, top):
            continue
        subfolders = []
        try:
            with os.scandir(parent) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        subfolders.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in suffixes and entry.is_file():  # a broken link isn't
                        target = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
                        images.append((entry.path, target))
                    else:
                        others.append(entry.path)
        except OSError:  # an unreadable folder is passed over, as os.walk does
            continue
        stack += sorted(subfolders, reverse=True)
    images.sort(key=lambda item: _path_parts(item[0]))
    return seen.first_listing(images, folder), sorted(others, key=_path_parts)


def _path_parts(path: str) -> list[str]:
    return path.split(os.sep)


@dataclass(frozen=True)
class _Listing:
    """An image folder listed: class names, one path and label per image, and the files skipped (not images)."""

    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    skipped: list[str]


def _list_class_folders(root: Path, seen: _Seen) -> _Listing:
    """Every class folder of ``root`` listed (``_list_files``), sharing ``seen`` for links and duplicates.

    Raises:
        DataError: fewer than 2 class folders, two class folders that are one real folder, or a class folder
            without images.
    """
    folders = _visible_dirs(root)
    if len(folders) < 2:
        raise DataError(
            f"{root} holds {len(folders)} class sub-folder(s); an image folder needs one sub-folder per class "
            "(at least 2)",
            "lay it out as PATH/<class>/<image> or PATH/train/<class>/<image> + PATH/test/<class>/<image>, "
            "or give a directory of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte)",
        )
    seen.register(folders)
    paths, labels, skipped = [], [], []
    for label, folder in enumerate(folders):
        images, others = _list_files(folder, seen)
        if not images:
            raise DataError(
                f"class folder {folder} holds no images (files Pillow opens: .png, .jpg, .jfif, .webp, .tif, …)",
                "add images or remove the folder",
            )
        paths += images
        labels += [label] * len(images)
        skipped += others
    return _Listing([folder.name for folder in folders], paths, np.asarray(labels, np.int64), skipped)


def _header(path: str) -> tuple[int, int, int]:
    """(native channels, height, width) of an image file as it decodes (EXIF rotation applied), from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            height, width = image.height, image.width
            if image.format in ("JPEG", "MPO", "TIFF", "WEBP"):  # EXIF read with the header (a PNG's may need a load)
                if image.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSED_ORIENTATIONS:
                    height, width = width, height
            return native_channels(image), height, width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read image {path}: {reason}", "remove or replace the file") from e


def _check_headers(paths: list[str], channels: int | None, size: tuple[int, int] | None, root: Path) -> None:
    """Without ``channels`` every image must have the first one's channel count, without ``size`` its size: read
    from the files' headers only (threads), in path order; the error names both files."""
    if channels is not None and size is not None:
        return
    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(DECODE_THREADS) as pool,
        _progress(f"checking {root}", len(paths)) as advance,
    ):
        warnings.simplefilter("ignore", UserWarning)  # Pillow: palette transparency, corrupt EXIF
        first = None
        for i, (path, (native, height, width)) in enumerate(zip(paths, pool.map(_header, paths, chunksize=64))):
            if first is None:
                first = (path, native, height, width)
            elif channels is None and native != first[1]:
                gray, colour = (first[0], path) if first[1] == 1 else (path, first[0])
                raise DataError(
                    f"{root} mixes grayscale ({gray}) and colour ({colour}) images",
                    "set data.channels to 1 or 3 to convert every image",
                )
            elif size is None and (height, width) != first[2:]:
                raise DataError(
                    f"{root} mixes image sizes: {first[0]} is {first[2]}×{first[3]} (H×W), {path} is {height}×{width}",
                    "set data.image_size: [H, W] to resize every image",
                )
            if i % 256 == 255:
                advance(256)


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` of a progress bar, shown only for folders of PROGRESS_MIN_FILES images or more."""
    if total < PROGRESS_MIN_FILES:
        yield lambda n: None
        return
    from pipeline import progress

    with progress.task(label, total=total) as bar:
        yield bar.advance


def _decoders(config: DataConfig) -> tuple[Callable, Callable | None]:
    """The eval decoder of ``config`` and its training decoder (None without random-resized-crop: training images
    then decode as the others)."""
    crops = config.augment.random_resized_crop is not None
    return decoder_for(config), (train_decoder_for(config) if crops else None)


def _read_class_folders(root: Path, config: DataConfig, seen: _Seen) -> tuple[Images, list[str], list[str]]:
    """A class-folder tree as lazy images: listed (``seen``: what the listing met before), headers checked where the
    config leaves channels or size open, the first image decoded for the sample shape."""
    listing = _list_class_folders(root, seen)
    _check_headers(listing.paths, config.channels, config.image_size, root)
    decode, train_decode = _decoders(config)
    sample_shape = decode(Path(listing.paths[0])).shape
    pixels = LazyPixels(np.asarray(listing.paths, dtype=object), sample_shape, decode, train_decode)
    return Images(pixels, listing.labels, np.arange(len(listing.labels))), listing.classes, listing.skipped


def _is_split_layout(root: Path) -> bool:
    return (root / "train").is_dir() and bool(_visible_dirs(root / "train"))


def read_image_folder(
    root: Path, channels: int | None = None, size: tuple[int, int] | None = None, config: DataConfig | None = None
) -> Source:
    """List ``root/<class>/*`` (or ``root/train/<class>/*`` + ``root/test/<class>/*``) as lazy images.

    Labels index the class names sorted by name; samples are ordered by class, then by path, and their ids are
    positions in that order. Images decode as ``config`` says (``decoder_for``; default: converted to
    ``channels`` and resized to ``size`` when given); without channels or size every image must share the first
    one's (checked from the headers). Files that are not images are listed in ``Source.skipped``; links not
    followed and files met twice (each real file is listed once, where it is met first) in ``Source.notes`` and
    ``Source.duplicates``.

    Raises:
        DataError: the layout is wrong, a class folder holds no images, a file is unreadable, or images differ in
            channels or size where the config leaves them open.
    """
    config = config or DataConfig(source=str(root), channels=channels, image_size=size)
    seen = _Seen(os.path.realpath(root))
    if not _is_split_layout(root):
        train, classes, skipped = _read_class_folders(root, config, seen)
        return _folder_source(train, None, classes, "image-folder", skipped, seen)
    others = [d.name for d in _visible_dirs(root) if d.name not in ("train", "test")]
    if others:
        raise DataError(
            f"{root} holds {others} beside train/ and test/",
            "move them out, or point data.test at a separate test folder",
        )
    if (root / "test").is_dir():
        seen.register(_visible_dirs(root / "test"))  # a link under train/ must not lead into a test class folder
    train, classes, skipped = _read_class_folders(root / "train", config, seen)
    if not (root / "test").is_dir():
        return _folder_source(train, None, classes, "image-folder train/", skipped, seen)
    test, test_classes, test_skipped = _read_class_folders(root / "test", config, seen)
    _same_classes(classes, test_classes, f"{root / 'train'}", f"{root / 'test'}")
    return _folder_source(train, test, classes, "image-folder train/ + test/", skipped + test_skipped, seen)


def _folder_source(
    train: Images, test: Images | None, classes: list[str], layout: str, skipped: list[str], seen: _Seen
) -> Source:
    return Source(train, test, classes, layout, tuple(skipped), tuple(seen.notes), tuple(seen.duplicates))


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
        return read_image_folder(path, config=config)
    if path.suffix == ".npz":
        return Source(read_npz(path), None, None, "npz")
    raise DataError(f"{path} is neither an IDX directory, an image folder nor an .npz file")


def _load_source(config: DataConfig) -> Source:
    if config.source in SOURCES:
        train, test, classes = SOURCES.get(config.source)(config)
        return Source(train, test, classes, "built-in")
    return _from_path(config.source, config)


def _load_test(config: DataConfig, source: Source) -> Source:
    """The separate test set of ``data.test`` (its ``train`` images); an image folder must name the same classes."""
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
    return extra


def conform(images: Images, config: DataConfig, where: str) -> Images:
    """Array images decoded like image files (``rule_for(config).conform_array``: channels, size, resize mode and
    channel order; arrays are taken as gray or RGB)."""
    if images.lazy:  # image files decode to the configured channels and size themselves
        return images
    return Images(rule_for(config).conform_array(images.x, where), images.y, images.ids)


def _pixel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x / 255`` from exact integer sums (no float copy of the whole set)."""
    total = np.zeros(x.shape[1], np.int64)
    squares = np.zeros(x.shape[1], np.int64)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.int64)
        total += part.sum(axis=(0, 2, 3))
        squares += (part * part).sum(axis=(0, 2, 3))
    return _stats_of(total, squares, x.shape[0] * x.shape[2] * x.shape[3])


def _stats_of(total: np.ndarray, squares: np.ndarray, count: int) -> tuple[list[float], list[float]]:
    """mean and std of ``pixel / 255`` per channel from the sums of pixels and of their squares over ``count``."""
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


def _sample_stats(x: LazyPixels, rng: np.random.Generator) -> tuple[tuple[list[float], list[float]], int]:
    """mean/std (as ``_pixel_stats``) of a seeded sample of at most STATS_SAMPLES rows, and the sample's size."""
    count = min(STATS_SAMPLES, len(x))
    picked = np.sort(rng.choice(len(x), size=count, replace=False))
    total = np.zeros(x.shape[1], np.int64)
    squares = np.zeros(x.shape[1], np.int64)
    for start in range(0, count, 64):  # uint8 rows; squares fit uint16 (255² < 2¹⁶): no int64 copy of a chunk
        part = x.rows(picked[start : start + 64])
        total += part.sum(axis=(0, 2, 3), dtype=np.int64)
        squares += np.square(part, dtype=np.uint16).sum(axis=(0, 2, 3), dtype=np.int64)
    return _stats_of(total, squares, count * x.shape[2] * x.shape[3]), count


def load_splits(config: DataConfig, seed: int) -> Splits:
    """Load the configured data, preprocess and split it with ``seed``; val is carved from train, never from test.

    Raises:
        DataError: the data is missing or inconsistent, or a class has too few images for every split (unless
            ``data.small_classes: warn``).
        ConfigError: data.mean/std or data.augment do not fit the images.
    """
    source = _load_source(config)
    test, layout, skipped = source.test, source.layout, source.skipped
    listing_notes, duplicates = source.notes, source.duplicates
    if config.test is not None:
        extra = _load_test(config, source)
        test, layout, skipped = extra.train, f"{layout}; test: {extra.layout}", skipped + extra.skipped
        listing_notes, duplicates = listing_notes + extra.notes, duplicates + extra.duplicates
    train = conform(source.train, config, config.source)
    if test is not None:
        test = conform(test, config, config.test or config.source)
    rng = np.random.default_rng(seed)
    if test is None:
        train, test = _split(train, config.test_fraction, rng)
    train, val = _split(train, config.val_fraction, rng)
    labels = np.concatenate([train.y, val.y, test.y])
    num_classes = int(labels.max()) + 1
    classes = source.classes or [str(c) for c in range(num_classes)]
    if test.x.shape[1:] != train.x.shape[1:]:
        raise DataError(
            f"test images are {test.x.shape[1:]} but train images are {train.x.shape[1:]} (C,H,W)",
            "set data.image_size: [H, W] and data.channels to bring both to one shape",
        )
    if int(labels.min()) < 0 or num_classes > len(classes):
        raise DataError(f"labels must lie in 0..{len(classes) - 1}; found {labels.min()}..{num_classes - 1}")
    notes = listing_notes + _small_classes(
        config, classes, (train, val, test), carved=source.test is None and config.test is None
    )
    empty = [name for name, images in (("train", train), ("validation", val), ("test", test)) if len(images) == 0]
    if empty:
        raise DataError(
            f"{config.source}: {len(labels)} samples are too few to split into train, validation and test "
            f"({', '.join(empty)} would be empty)",
            "give several samples per class (each split takes at least one of every class)",
        )
    _check_per_channel(config, train.x.shape[1])
    height, width = train.x.shape[2:]
    if config.augment.crop_padding >= min(height, width):
        raise ConfigError(
            f"data.augment.crop_padding ({config.augment.crop_padding}) must be smaller than the "
            f"images ({height}×{width} H×W)",
            "lower it, or set data.image_size",
        )
    stats_samples = None
    if config.mean is not None and config.std is not None:
        mean, std, stats_from = list(config.mean), list(config.std), "config"
    elif isinstance(train.x, LazyPixels):
        (mean, std), stats_samples = _sample_stats(train.x, np.random.default_rng([seed, len(train)]))
        stats_from = "train-sample"
    else:
        (mean, std), stats_from, stats_samples = _pixel_stats(train.x), "train", len(train)
    resize = tuple(config.image_size) if config.image_size else None
    workers = (LOADER_WORKERS if config.workers is None else config.workers) if train.lazy else 0
    return Splits(
        train,
        val,
        test,
        classes,
        mean,
        std,
        config.augment,
        resize,
        stats_from,
        layout,
        skipped,
        stats_samples,
        workers,
        notes,
        duplicates,
    )


def _small_classes(
    config: DataConfig, classes: list[str], splits: tuple[Images, Images, Images], carved: bool
) -> tuple[str, ...]:
    """Every class with images must have one in train, val and test: else a DataError naming each such class and
    its counts; with ``data.small_classes: warn`` the warning line instead (such a class keeps its images for
    training, see ``_stratified_val``)."""
    counts = np.stack([np.bincount(images.y, minlength=len(classes)) for images in splits])  # split × class
    short = [c for c in range(len(classes)) if counts[:, c].sum() > 0 and counts[:, c].min() == 0]
    if not short:
        return ()
    details = "; ".join(
        f"{classes[c]!r} has {counts[:, c].sum()} image(s) (train {counts[0, c]}, val {counts[1, c]}, "
        f"test {counts[2, c]})"
        for c in short
    )
    message = f"class(es) too small to put an image in train, validation and test: {details}"
    if config.small_classes == "warn":
        return (f"{message}; kept as data.small_classes: warn says",)
    raise DataError(
        message,
        f"give each class at least {3 if carved else 2} images{'' if carved else ' (and 1 in the test set)'}, remove "
        "those classes, or set data.small_classes: warn to train on them without validation/test images",
    )


def _stratified_val(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Rows held out: ``fraction`` of each class (at least one), but never a class's last image (it stays for
    training; ``_small_classes`` reports the split it leaves empty)."""
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        size = min(max(1, round(len(members) * fraction)), len(members) - 1)
        picked.append(rng.choice(members, size=size, replace=False))
    return np.sort(np.concatenate(picked))


def _split(images: Images, fraction: float, rng: np.random.Generator) -> tuple[Images, Images]:
    held = _stratified_val(images.y, fraction, rng)
    kept = np.setdiff1d(np.arange(len(images)), held)
    return images.take(kept), images.take(held)
