"""Built-in architectures: a teacher CNN and a ≥5× smaller, quantization-friendly student (ReLU, small pools)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ModelError
from pipeline.io import atomic_path
from pipeline.registry import Registry

ARCHITECTURES: Registry = Registry("architecture")


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@ARCHITECTURES.register("teacher-cnn")
def teacher_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """VGG-style CNN, ~240k parameters."""
    return nn.Sequential(
        *_conv(in_channels, 32), nn.MaxPool2d(2),
        *_conv(32, 64), nn.MaxPool2d(2),
        *_conv(64, 128), *_conv(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, num_classes),
    )


@ARCHITECTURES.register("student-cnn")
def student_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """Three-conv CNN, ~39k parameters (6× fewer than the teacher): ReLU and 2×2 pools only, so int8 keeps
    its accuracy."""
    return nn.Sequential(
        *_conv(in_channels, 24), nn.MaxPool2d(2),
        *_conv(24, 48), nn.MaxPool2d(2),
        *_conv(48, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def build_model(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    """Instantiate a registered architecture."""
    return ARCHITECTURES.get(arch)(in_channels, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    """Write ``{state_dict, meta}`` atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)


def load_checkpoint(path: Path, arch: str, in_channels: int, num_classes: int) -> nn.Module:
    """Load a state_dict checkpoint (``weights_only=True``) into ``arch``; mismatches name the first bad keys."""
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ModelError(f"checkpoint {path} is unreadable or corrupt: {str(e).splitlines()[0]}",
                         "re-create it with torch.save(model.state_dict(), path)") from e
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds no state_dict")
    model = build_model(arch, in_channels, num_classes)
    _check_state(model.state_dict(), state, path, arch)
    model.load_state_dict(state)
    return model.eval()


def _check_state(expected: dict, found: dict, path: Path, arch: str) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {path} does not fit {arch}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
        )
    for key, tensor in expected.items():
        if tuple(found[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"checkpoint {path} does not fit {arch}: {key} is {tuple(found[key].shape)} in the file, "
                f"{tuple(tensor.shape)} in the model",
                "check the class count and input channels",
            )
