"""Feed each artifact as an outside consumer would: raw pixels + manifest.json only, runtimes directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from targets import TARGETS


def consumer_input(manifest: dict, pixels: np.ndarray) -> np.ndarray:
    """Raw uint8 NCHW pixels → float model input with the manifest's preprocessing."""
    prep = manifest["data"]["preprocessing"]
    mean = np.asarray(prep["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(prep["std"], np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) * np.float32(prep["pixel_scale"])) - mean) / std


def consumer_logits(
    root: Path, manifest: dict, name: str, pixels: np.ndarray, onnx_invoke, tflite_invoke
) -> np.ndarray:
    """Logits of artifact ``name`` computed from its manifest record alone (layout, dtype, scale, zero point)."""
    record = manifest["artifacts"][name]
    spec, out_spec = record["inputs"][0], record["outputs"][0]
    x = consumer_input(manifest, pixels)
    if spec["layout"] == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    else:
        assert spec["layout"] == "NCHW"
    if spec["scale"] is not None:
        info = np.iinfo(spec["dtype"])
        x = np.clip(np.round(x / spec["scale"]) + spec["zero_point"], info.min, info.max).astype(spec["dtype"])
    x = np.ascontiguousarray(x, dtype=spec["dtype"])
    path = root / record["path"]
    out = onnx_invoke(path, x) if path.suffix == ".onnx" else tflite_invoke(path, x)
    assert out.dtype == np.dtype(out_spec["dtype"])
    if out_spec["scale"] is not None:
        out = (out.astype(np.float32) - out_spec["zero_point"]) * out_spec["scale"]
    return out


@pytest.fixture(scope="module")
def student_top1(digits_splits, manifest_json, student_model) -> np.ndarray:
    with torch.no_grad():
        return student_model(torch.from_numpy(consumer_input(manifest_json, digits_splits.test.x))).numpy().argmax(1)


def test_consumer_preprocessing_matches_pipeline(digits_splits, manifest_json) -> None:
    """The manifest's formula reproduces the pipeline's own normalization."""
    x = digits_splits.test.x
    np.testing.assert_allclose(consumer_input(manifest_json, x), digits_splits.normalize(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TARGETS.names())
def test_artifact_agrees_with_student(
    finished_run, manifest_json, digits_splits, student_top1, name, onnx_invoke, tflite_invoke
) -> None:
    """Every artifact, fed from the manifest alone, agrees with the student's top-1 on ≥ 90 % of test samples."""
    logits = consumer_logits(finished_run, manifest_json, name, digits_splits.test.x, onnx_invoke, tflite_invoke)
    assert logits.shape == (len(digits_splits.test), 10)
    agreement = (logits.argmax(1) == student_top1).mean() * 100
    floor = 90 if TARGETS.get(name).precision == "int8" else 99
    assert agreement >= floor, f"{name}: {agreement:.1f}% top-1 agreement with the student"


def test_tflite_int8_input_range_covers_data(manifest_json, digits_splits) -> None:
    """The recorded input scale/zero point represent the test pixels without clipping (error ≤ scale/2)."""
    spec = manifest_json["artifacts"]["tflite-int8"]["inputs"][0]
    x = consumer_input(manifest_json, digits_splits.test.x)
    q = np.clip(np.round(x / spec["scale"]) + spec["zero_point"], -128, 127)
    error = np.abs((q - spec["zero_point"]) * spec["scale"] - x)
    assert (error <= spec["scale"] / 2 + 1e-6).mean() > 0.99
    assert len(np.unique(q)) > 10
