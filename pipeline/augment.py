"""Random augmentation of uint8 NCHW training batches: horizontal flip, padded random crop, brightness.

Training batches only: val, test and calibration always see the raw pixels. Vectorised numpy, and a pure
function of its input and the generator's state, so a seeded run augments identically every time. An option
that is off draws nothing from the generator, so turning augmentation off leaves every other random choice
(e.g. the shuffle order drawn from the same generator) exactly as it was.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.config import AugmentConfig


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
