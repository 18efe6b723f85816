"""Augmentation: identity when off, shape and dtype kept, real flips, crops and brightness, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import AugmentConfig
from pipeline.data.augment import augment_batch


def batch(n: int = 64, channels: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    """Random uint8 NCHW images (asymmetric, so a flip or a shift always shows)."""
    return np.random.default_rng(seed).integers(1, 200, (n, channels, size, size), dtype=np.uint8)


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` (C,H,W) moved down by dy and right by dx, zeros filling the gap."""
    _, height, width = image.shape
    pad = max(abs(dy), abs(dx))
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
    return padded[:, pad - dy : pad - dy + height, pad - dx : pad - dx + width]


def test_identity_when_off() -> None:
    """All options off: the very same array comes back and the generator is not touched."""
    x = batch()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert augment_batch(x, rng, AugmentConfig()) is x
    assert rng.bit_generator.state == state


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(hflip=True),
        AugmentConfig(crop_padding=2),
        AugmentConfig(brightness=0.3),
        AugmentConfig(hflip=True, crop_padding=3, brightness=0.5),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_and_dtype_kept(cfg: AugmentConfig, channels: int) -> None:
    """Every option keeps N×C×H×W, uint8, and leaves the input array unchanged."""
    x = batch(channels=channels)
    before = x.copy()
    out = augment_batch(x, np.random.default_rng(1), cfg)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(x, before)


def test_hflip_really_flips() -> None:
    """Each sample is either itself or its left-right mirror, and both happen."""
    x = batch()
    out = augment_batch(x, np.random.default_rng(0), AugmentConfig(hflip=True))
    flipped = np.array([np.array_equal(o, s[..., ::-1]) for o, s in zip(out, x)])
    kept = np.array([np.array_equal(o, s) for o, s in zip(out, x)])
    assert np.all(flipped | kept)
    assert flipped.any() and kept.any()


def test_crop_shifts_content() -> None:
    """Each sample is the input shifted by at most crop_padding pixels with zero fill; some shift is non-zero."""
    padding = 2
    x = batch(n=32)
    out = augment_batch(x, np.random.default_rng(0), AugmentConfig(crop_padding=padding))
    offsets = []
    for o, s in zip(out, x):
        matches = [
            (dy, dx)
            for dy in range(-padding, padding + 1)
            for dx in range(-padding, padding + 1)
            if np.array_equal(o, shifted(s, dy, dx))
        ]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert any(offset != (0, 0) for offset in offsets)
    assert len(set(offsets)) > 1


def test_brightness_scales_each_image() -> None:
    """Brightness multiplies each image by one factor within [1-b, 1+b] (rounded, clipped to 255)."""
    amount = 0.4
    x = np.full((50, 1, 4, 4), 100, np.uint8)
    out = augment_batch(x, np.random.default_rng(0), AugmentConfig(brightness=amount))
    assert np.all(out == out[:, :1, :1, :1])  # one factor per image
    assert np.all(out >= 60) and np.all(out <= 140)
    assert len(np.unique(out)) > 5
    bright = augment_batch(
        np.full((50, 1, 2, 2), 250, np.uint8), np.random.default_rng(0), AugmentConfig(brightness=0.4)
    )
    assert bright.max() == 255  # clipped, not wrapped


def test_deterministic_for_seeded_rng() -> None:
    """The same seed gives the same batch; another seed a different one."""
    cfg = AugmentConfig(hflip=True, crop_padding=2, brightness=0.2)
    x = batch()
    first = augment_batch(x, np.random.default_rng(7), cfg)
    np.testing.assert_array_equal(first, augment_batch(x, np.random.default_rng(7), cfg))
    assert not np.array_equal(first, augment_batch(x, np.random.default_rng(8), cfg))


def test_empty_batch_and_bad_input() -> None:
    """An empty batch passes through; a non-uint8 or non-4-D array is a programming error (ValueError)."""
    empty = np.zeros((0, 1, 4, 4), np.uint8)
    assert augment_batch(empty, np.random.default_rng(0), AugmentConfig(hflip=True)).shape == empty.shape
    with pytest.raises(ValueError, match="uint8 NCHW"):
        augment_batch(np.zeros((2, 1, 4, 4), np.float32), np.random.default_rng(0), AugmentConfig(hflip=True))
    with pytest.raises(ValueError, match="uint8 NCHW"):
        augment_batch(np.zeros((2, 4, 4), np.uint8), np.random.default_rng(0), AugmentConfig(hflip=True))
