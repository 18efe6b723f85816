"""Data sources and splits, image decoding and training-time augmentation."""
