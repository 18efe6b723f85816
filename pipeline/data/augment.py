"""Random augmentation of training images: random-resized-crop of each decoded image (``random_resized_crop``,
called by ``pipeline.data.image_decode.train_decoder_for``), then of uint8 NCHW batches: horizontal flip, padded random
crop, brightness.

Training batches only: val, test and calibration always see the raw pixels. Vectorised numpy, and a pure
function of its input and the generator's state, so a seeded run augments identically every time. An option
that is off draws nothing from the generator, so turning augmentation off leaves every other random choice
(e.g. the shuffle order drawn from the same generator) exactly as it was.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.config import AugmentConfig, RandomResizedCropConfig

if TYPE_CHECKING:
    from PIL import Image

CROP_ATTEMPTS = 10


def augment_batch(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Augment a uint8 NCHW batch; same shape and dtype. Returns ``x`` itself when every option is off.

    Applied per sample, in this order: left-right flip with probability 0.5 (``hflip``); zero-pad by
    ``crop_padding`` pixels on every side and crop back to H×W at a uniformly random offset; scale pixel values
    by a factor uniform in ``[1 - brightness, 1 + brightness]``, rounded and clipped to 0..255.
    """
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"augment_batch expects a uint8 NCHW batch; got {x.dtype} with shape {x.shape}")
    if not cfg.enabled or len(x) == 0:
        return x
    out = x
    if cfg.hflip:
        out = _hflip(out, rng)
    if cfg.crop_padding > 0:
        out = _random_crop(out, cfg.crop_padding, rng)
    if cfg.brightness > 0:
        out = _brightness(out, cfg.brightness, rng)
    return out


def _hflip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flip = rng.random(len(x)) < 0.5
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


def _random_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    n, _, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (height, width), axis=(2, 3))  # N, C, 2p+1, 2p+1, H, W (a view)
    top, left = rng.integers(0, 2 * padding + 1, size=(2, n))
    return np.ascontiguousarray(windows[np.arange(n), :, top, left])


def _brightness(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(1 - amount, 1 + amount, size=len(x)).astype(np.float32)
    scaled = np.rint(x.astype(np.float32) * factor[:, None, None, None])
    return np.clip(scaled, 0, 255).astype(np.uint8)


def crop_box(
    height: int, width: int, rng: np.random.Generator, cfg: RandomResizedCropConfig
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random-resized-crop of an H×W image: torchvision's rule.

    Up to 10 draws of an area share uniform in ``cfg.scale`` and an aspect ratio (width / height) log-uniform in
    ``cfg.ratio``; side = round(sqrt(area × ratio)) etc.; the first that fits is placed at a uniform offset. When
    none fits: the largest centered crop whose ratio lies in ``cfg.ratio``.
    """
    area = height * width
    log_low, log_high = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_w, crop_h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    crop_h, crop_w = height, width
    if width / height < cfg.ratio[0]:
        crop_h = round(width / cfg.ratio[0])
    elif width / height > cfg.ratio[1]:
        crop_w = round(height * cfg.ratio[1])
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(
    image: "Image.Image", rng: np.random.Generator, cfg: RandomResizedCropConfig, size: tuple[int, int]
) -> "Image.Image":
    """``image`` cropped at ``crop_box`` and resized to ``size`` ([H, W], Pillow bilinear)."""
    from PIL import Image

    top, left, crop_h, crop_w = crop_box(image.height, image.width, rng, cfg)
    crop = image.crop((left, top, left + crop_w, top + crop_h))
    return crop.resize((size[1], size[0]), Image.Resampling.BILINEAR)


def describe(cfg: AugmentConfig) -> str | None:
    """``cfg`` in words, for the manifest (training images only); None when every option is off."""
    crop = cfg.random_resized_crop
    parts = [
        f"random-resized-crop of the decoded image (torchvision rule, scale {list(crop.scale)}, ratio "
        f"{[round(r, 6) for r in crop.ratio]}), resized to the input size (Pillow bilinear)"
        if crop
        else "",
        "left-right flip with probability 0.5" if cfg.hflip else "",
        f"zero-pad {cfg.crop_padding} pixels and crop back at a random offset" if cfg.crop_padding else "",
        f"pixels scaled by a random factor in [{1 - cfg.brightness:g}, {1 + cfg.brightness:g}]"
        if cfg.brightness
        else "",
    ]
    return "; then ".join(part for part in parts if part) or None
