"""One image file → uint8 C×H×W pixels: the decode rules every data source and the release bundle's feeding code
share.

In this order (``manifest.Preprocessing.decode`` says the same in words, and the bundle README's ``load_pixels``
reproduces it):

1. EXIF orientation applied (``PIL.ImageOps.exif_transpose``).
2. The decoded pixels brought to Pillow ``L`` or ``RGB``: 16-bit gray (``I;16*``, ``I``) scaled by 1/257 and
   rounded to ``L``; palette (``P``, ``PA``) expanded to ``RGB``/``RGBA``; alpha dropped (not composited: the
   colour values are kept, as torchvision's and timm's ``convert("RGB")`` loaders do); ``1``/``LA`` → ``L``;
   CMYK, YCbCr and other colour modes → ``RGB`` by Pillow. 32-bit float images are refused.
3. Converted to ``data.channels`` by Pillow (RGB → L: (299 R + 587 G + 114 B) / 1000, rounded; L → RGB: copied).
4. Brought to ``data.image_size`` by ``data.resize`` (Pillow bilinear): ``stretch``, or ``center-crop``.
5. Reordered to ``data.channel_order`` (BGR: channels reversed).

Training images may instead get a random-resized-crop at step 4 (``train_decoder_for``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.augment import random_resized_crop
from pipeline.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

    from pipeline.config import DataConfig, RandomResizedCropConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
IDENTIFY_ONLY_FORMATS = {"MPEG"}  # Pillow opens these but decodes no pixels


@lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes (with the dot) of every format this Pillow decodes (.jfif, .tif, .webp …).

    Left out: Pillow's stub formats (identified, never decoded: HDF5, GRIB, BUFR, WMF off Windows), MPEG, and
    EPS/PS without Ghostscript.
    """
    from PIL import EpsImagePlugin, Image, ImageFile

    def decodable(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or fmt in IDENTIFY_ONLY_FORMATS:
            return False
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            return False
        return fmt != "EPS" or bool(EpsImagePlugin.gs_binary)

    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if decodable(fmt))


def native_channels(image: "Image.Image") -> int:
    """1 for grayscale Pillow images (gray modes, or a palette whose colours are all gray), else 3."""
    if image.mode in GRAY_MODES:
        return 1
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
        if len(palette) and (palette == palette[:, :1]).all():
            return 1
    return 3


def canonical(image: "Image.Image", where: str) -> "Image.Image":
    """A decoded Pillow image in ``L`` (gray content) or ``RGB``: rule 2 of the module docstring.

    Raises:
        DataError: 32-bit float pixels, or a mode Pillow cannot convert to RGB.
    """
    from PIL import Image

    if image.mode == "F":
        raise DataError(
            f"{where}: 32-bit float pixels are not supported", "save the image with 8 or 16 bits per channel"
        )
    if image.mode in SIXTEEN_BIT_MODES:  # Pillow's own conversion to L clips at 255; scale 0..65535 to 0..255
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8))
    if image.mode in ("P", "PA"):
        alpha = image.mode == "PA" or "transparency" in image.info
        expanded = image.convert("RGBA" if alpha else "RGB")
        return expanded.convert("L" if native_channels(image) == 1 else "RGB")
    if image.mode in ("L", "RGB"):
        return image
    try:
        return image.convert("L" if image.mode in GRAY_MODES else "RGB")
    except ValueError as e:
        raise DataError(f"{where}: Pillow cannot convert mode {image.mode} to RGB", "save it as RGB or gray") from e


def center_crop_geometry(
    height: int, width: int, size: tuple[int, int], crop_ratio: float
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized H, W), (top, left)) of ``resize: center-crop`` for an H×W image and a [H, W] ``size``.

    The image is scaled, keeping its aspect ratio, so it just covers [floor(H / crop_ratio), floor(W / crop_ratio)]:
    the side that limits gets its target exactly, the other target × side / limiting side, rounded down. The crop
    starts at round((resized - size) / 2) (Python round, halves to even). For a square ``size`` this is
    torchvision's ``Resize(floor(S / crop_ratio))`` + ``CenterCrop(S)`` on a PIL image (timm's eval transform).
    """
    cover_h, cover_w = math.floor(size[0] / crop_ratio), math.floor(size[1] / crop_ratio)
    if cover_h * width >= cover_w * height:  # the height limits: scale cover_h / height covers the width as well
        resized = (cover_h, cover_h * width // height)
    else:
        resized = (cover_w * height // width, cover_w)
    return resized, (round((resized[0] - size[0]) / 2), round((resized[1] - size[1]) / 2))


@contextmanager
def opened(path: Path) -> Iterator["Image.Image"]:
    """``path`` opened and decoded by Pillow, EXIF orientation applied (rule 1).

    Raises:
        DataError: the file cannot be decoded (its path and Pillow's reason in the message).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            yield image
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read image {path}: {reason}", "remove or replace the file") from e


@dataclass(frozen=True)
class DecodeRule:
    """Rules 2–5 with the ``data.*`` keys' values; calling it decodes one file into uint8 C×H×W.

    ``channels``/``size`` None keep the image's own. Picklable, so DataLoader workers can hold it.
    """

    channels: int | None = None
    size: tuple[int, int] | None = None
    resize: str = "stretch"
    crop_ratio: float = 0.875
    channel_order: str = "RGB"

    def __call__(self, path: Path) -> np.ndarray:
        """Decode ``path`` (uint8 C×H×W). Raises DataError when it cannot be decoded or reordered."""
        with opened(path) as image:
            return self.from_pil(image, str(path))

    def from_pil(self, image: "Image.Image", where: str) -> np.ndarray:
        """A decoded, oriented Pillow image → uint8 C×H×W (rules 2–5)."""
        return self.to_chw(self.resized(self.converted(image, where)), where)

    def converted(self, image: "Image.Image", where: str) -> "Image.Image":
        """Rules 2–3: ``L`` or ``RGB`` as ``channels`` says (the image's own content when None)."""
        image = canonical(image, where)
        mode = {1: "L", 3: "RGB"}.get(self.channels, image.mode)
        return image if image.mode == mode else image.convert(mode)

    def resized(self, image: "Image.Image") -> "Image.Image":
        """Rule 4: ``image`` brought to ``size`` by ``resize`` (unchanged without a size)."""
        from PIL import Image

        if self.size is None:
            return image
        if self.resize == "center-crop":
            (height, width), (top, left) = center_crop_geometry(image.height, image.width, self.size, self.crop_ratio)
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            return image.crop((left, top, left + self.size[1], top + self.size[0]))
        if (image.height, image.width) != tuple(self.size):
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        return image

    def to_chw(self, image: "Image.Image", where: str) -> np.ndarray:
        """Rule 5: an ``L``/``RGB`` image → uint8 C×H×W in ``channel_order``.

        Raises:
            DataError: BGR asked of a grayscale image.
        """
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            if self.channel_order == "BGR":
                raise DataError(
                    f"{where} is grayscale but data.channel_order is BGR", "set data.channels: 3 to convert it"
                )
            return pixels[None]
        chw = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(chw[::-1] if self.channel_order == "BGR" else chw)

    def conform_array(self, x: np.ndarray, where: str) -> np.ndarray:
        """Array images (uint8 N×C×H×W, taken as gray or RGB) decoded like files: ``x`` itself when nothing changes.

        Raises:
            DataError: a change is asked of images with other than 1 or 3 channels.
        """
        native = x.shape[1]
        if self.changes_nothing(native, x.shape[2:]):
            return x
        if native not in (1, 3):
            raise DataError(
                f"{where}: images with {native} channels cannot be converted, resized or reordered",
                "remove data.channels, data.image_size and data.channel_order, or give 1- or 3-channel images",
            )
        return np.stack([self.from_pil(_array_image(pixels), where) for pixels in x]) if len(x) else x

    def changes_nothing(self, channels: int, hw: tuple[int, int]) -> bool:
        """Whether images of ``channels`` × ``hw`` come out of ``from_pil`` exactly as they are."""
        same_size = self.size is None or (self.resize == "stretch" and tuple(hw) == tuple(self.size))
        return same_size and self.channels in (None, channels) and self.channel_order == "RGB"


@dataclass(frozen=True)
class TrainDecodeRule:
    """``rule`` with, when ``crop`` is set, a random-resized-crop of the converted image in place of its resize (to
    ``rule.size``, or the image's own size without one). ``rule(path, rng)`` → uint8 C×H×W."""

    rule: DecodeRule
    crop: "RandomResizedCropConfig | None" = None

    def __call__(self, path: Path, rng: np.random.Generator) -> np.ndarray:
        """Decode ``path`` for training; draws from ``rng`` only when ``crop`` is set."""
        if self.crop is None:
            return self.rule(path)
        with opened(path) as image:
            return self.from_pil(image, rng, str(path))

    def from_pil(self, image: "Image.Image", rng: np.random.Generator, where: str) -> np.ndarray:
        """A decoded, oriented Pillow image → uint8 C×H×W, randomly cropped when ``crop`` is set."""
        if self.crop is None:
            return self.rule.from_pil(image, where)
        image = self.rule.converted(image, where)
        cropped = random_resized_crop(image, rng, self.crop, self.rule.size or (image.height, image.width))
        return self.rule.to_chw(cropped, where)

    def array(self, pixels: np.ndarray, rng: np.random.Generator, where: str) -> np.ndarray:
        """One array image (uint8 C×H×W, 1 or 3 channels, taken as gray or RGB) → its training pixels."""
        return self.from_pil(_array_image(pixels), rng, where)


def _array_image(pixels: np.ndarray) -> "Image.Image":
    from PIL import Image

    return Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))


def rule_for(config: "DataConfig") -> DecodeRule:
    """The ``DecodeRule`` of the ``data.*`` keys."""
    size = tuple(config.image_size) if config.image_size else None
    return DecodeRule(config.channels, size, config.resize, config.crop_ratio, config.channel_order)


def decoder_for(config: "DataConfig") -> Callable[[Path], np.ndarray]:
    """The decode rule the ``data.*`` keys describe, as one function: image file path → uint8 C×H×W.

    For eval, validation, test and calibration images. Raises (from the returned function) DataError when the
    file cannot be decoded (its path in the message).
    """
    return rule_for(config)


def train_decoder_for(config: "DataConfig") -> Callable[[Path, np.random.Generator], np.ndarray]:
    """Training images: ``(path, rng)`` → uint8 C×H×W, random-resized-cropped when
    ``data.augment.random_resized_crop`` is set, else exactly ``decoder_for(config)`` (nothing drawn from ``rng``).
    The flip, padded crop and brightness of ``data.augment`` stay batch operations (``pipeline.data.augment``)."""
    return TrainDecodeRule(rule_for(config), config.augment.random_resized_crop)


def decode_image(
    path: Path, channels: int | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
    """Decode one image file into uint8 C×H×W (converted to ``channels``, stretched to ``size``; the image's own
    when None); also returns its native channel count."""
    with opened(path) as image:
        return DecodeRule(channels, tuple(size) if size else None).from_pil(image, str(path)), native_channels(image)
