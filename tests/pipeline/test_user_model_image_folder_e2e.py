"""End to end through `edgepipe run`: the user's own student factory file and an image-folder data set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

MY_MODELS = """
from torch import nn


def make_student(num_classes, in_channels, width=12):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
"""


def write_image_folder(root: Path, classes: int = 4) -> None:
    """scikit-learn digits 0..classes-1 as 8-bit gray PNGs in one folder per class (named, not numbered)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = ["zero", "one", "two", "three", "four"][:classes]
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        if label < classes:
            folder = root / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(image * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{index}.png")


def test_user_student_file_and_image_folder_through_run(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    (tmp_path / "my_models.py").write_text(MY_MODELS)
    config = {
        "data": {"source": str(tmp_path / "images"), "image_size": [12, 12]},
        "teacher": {"epochs": 2, "batch_size": 64},
        "distill": {
            "arch": f"{tmp_path / 'my_models.py'}:make_student",
            "arch_kwargs": {"width": 8},
            "epochs": 6,
            "batch_size": 32,
            "lr": 0.01,
        },
        "calibration": {"size": 64},
        "export": {"targets": ["onnx-fp32", "onnx-int8", "tflite-int8"]},
        "bench": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "batch_sizes": [1, 8]},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(tmp_path / "config.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and f"wrote {out / 'report.md'}" in done.stdout
    assert not list(out.rglob("*.tmp*")), "temp files left behind"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["classes"] == sorted(["zero", "one", "two", "three"])
    assert manifest["data"]["preprocessing"]["resize"] == [12, 12]
    student = manifest["artifacts"]["student"]["info"]
    assert student["arch"].endswith("my_models.py:make_student")
    assert student["arch_kwargs"] == {"width": 8}
    accuracy = {m["artifact"]: m["accuracy"] for m in manifest["measurements"]}
    assert set(accuracy) >= {"teacher", "student", "onnx-fp32", "onnx-int8", "tflite-int8"}
    assert accuracy["student"] > 60  # 4 classes: chance is 25 %
    assert abs(accuracy["onnx-fp32"] - accuracy["student"]) < 0.01
    assert (out / "report.md").read_text().count("| tflite-int8 | tflite (XNNPACK, ") == 1  # main table: one row
