"""One image file → uint8 C×H×W pixels: the decode rules every data source and the release bundle's feeding code
share (16-bit scaling, channel conversion, resizing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def native_channels(image) -> int:
    """1 for grayscale Pillow images (gray modes, or a palette whose colours are all gray), else 3."""
    if image.mode in GRAY_MODES:
        return 1
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
        if len(palette) and (palette == palette[:, :1]).all():
            return 1
    return 3


def pil_to_chw(image, channels: int | None, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """A Pillow image → uint8 C×H×W: converted to ``channels`` (default: its own), then resized to ``size``."""
    from PIL import Image

    native = native_channels(image)
    if image.mode == "F":
        raise DataError(
            f"{where}: 32-bit float pixels are not supported", "save the image with 8 or 16 bits per channel"
        )
    if image.mode in SIXTEEN_BIT_MODES:  # Pillow's own conversion to L clips at 255; scale 0..65535 to 0..255
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8))
    target = channels or native
    mode = "L" if target == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def decode_image(
    path: Path, channels: int | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
    """Decode one image file into uint8 C×H×W (see ``pil_to_chw``); also returns its native channel count."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_chw(image, channels, size, str(path)), native_channels(image)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read image {path}: {reason}", "remove or replace the file") from e


def decoder_for(config: "DataConfig") -> Callable[[Path], np.ndarray]:
    """The decode rule the ``data.*`` keys describe, as one function: image file path → uint8 C×H×W.

    Raises (from the returned function):
        DataError: the file cannot be decoded (its path in the message).
    """
    channels, size = config.channels, tuple(config.image_size) if config.image_size else None
    return lambda path: decode_image(path, channels, size)[0]
