"""TFLite targets in the finished run's records (fp16 holds float16, int8 states its int8 share); max-pooling with
padding (a float-min pad) ends within budget, or, unrepaired, says over budget. The files themselves (fp32 equal to
torch on NHWC input, fp16 float16, int8 full-integer) are unit-tested on a tiny inline module in
``test_targets_inline.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_tflite_fp16_record_holds_float16(manifest_json: dict) -> None:
    """The fp16 record counts float16 tensors and its file is clearly smaller than fp32's (the file's dtypes and
    logits are unit-tested in ``test_targets_inline.py``)."""
    artifacts = manifest_json["artifacts"]
    assert artifacts["tflite-fp16"]["info"]["tensor_dtypes"].get("float16", 0) > 0
    assert artifacts["tflite-fp16"]["bytes"] < 0.7 * artifacts["tflite-fp32"]["bytes"]


def test_tflite_int8_record_states_its_int8_share(manifest_json: dict) -> None:
    """The default student is all int8: every MAC and weight, no float layer, within budget."""
    info = manifest_json["artifacts"]["tflite-int8"]["info"]
    assert info["int8_share"]["macs"] == 1.0 and info["int8_share"]["weight_bytes"] == 1.0
    assert info["int8_share"]["total_macs"] > 0 and info["int8_share"]["float_layers"] == []
    assert info["over_budget"] is None and info["within_budget"] is True


# --- max-pooling with padding on signed activations (PINTO0309/onnx2tf#444) --------------------------------

MAXPOOL_PAD = """
from torch import nn


def make(in_channels, num_classes):
    \"\"\"Conv-BN (no ReLU: negatives reach the pool) then MaxPool(3, 2, padding=1), twice: onnx2tf pads with
    float32's minimum before MAX_POOL_2D.\"\"\"
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, 3, padding=1), nn.BatchNorm2d(24), nn.MaxPool2d(3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48), nn.MaxPool2d(3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes),
    )
"""


@pytest.fixture(scope="module")
def maxpool_run(tmp_path_factory: pytest.TempPathFactory, teacher_checkpoint: Path):
    """A distilled max-pool-with-padding student, normalized so that the int8 input's zero point is 0
    (``data: {mean: [0.502], std: [0.5]}``, where TensorFlow's quantization debugger used to crash)."""
    from pipeline.config_load import parse_config
    from pipeline.rundir import RunDir
    from pipeline.stages.calibrate import run_calibrate
    from pipeline.stages.distill import run_distill

    root = tmp_path_factory.mktemp("maxpool")
    (root / "maxpool_pad.py").write_text(MAXPOOL_PAD)
    raw = {
        "seed": 0,
        "data": {"source": "digits", "mean": [0.502], "std": [0.5]},
        "teacher": {"arch": "teacher-cnn", "checkpoint": str(teacher_checkpoint)},
        "distill": {"arch": f"{root / 'maxpool_pad.py'}:make", "epochs": 3, "batch_size": 32, "lr": 0.01},
        "quantize": {"qat": {"when": "never"}},
        "export": {"targets": []},
    }
    run = RunDir.create(root / "run", parse_config(raw))
    run_distill(run)
    run_calibrate(run)
    return run


def tflite_int8_record(run, force: bool = False):
    from pipeline.stages.export import run_export

    records = run_export(run, ["tflite-int8"], {"tflite-int8"} if force else None)
    return next(record for record in records if record.name == "tflite-int8")


@pytest.mark.slow  # ~1 min: onnx2tf and the search (the fixture distills a student)
def test_maxpool_padding_is_int8_within_budget(maxpool_run, tflite_invoke, onnx_invoke) -> None:
    """The pads' float-min ranges are repaired: all int8, within budget, agreeing with onnx-fp32 on test."""
    record = tflite_int8_record(maxpool_run)
    info = record.info
    assert [repair["op"] for repair in info["range_repairs"]] == ["PADV2", "PADV2"]
    assert info["within_budget"] is True and info["over_budget"] is None
    assert info["int8_share"]["macs"] == 1.0 and info["float_layers"] == []
    splits = maxpool_run.splits
    x = splits.normalize(splits.test.x)
    source = record.inputs[0]
    assert source.zero_point == 0
    feed = np.clip(np.round(x.transpose(0, 2, 3, 1) / source.scale), -128, 127).astype(np.int8)
    int8_logits = tflite_invoke(maxpool_run.path(record.path), np.ascontiguousarray(feed))
    fp32_logits = onnx_invoke(maxpool_run.path(maxpool_run.require("onnx-fp32").path), x)
    assert (int8_logits.argmax(1) == fp32_logits.argmax(1)).mean() >= 0.97


@pytest.mark.slow
def test_maxpool_padding_unrepaired_fails_loudly(maxpool_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the repair the file collapses; the fallback ranks the degenerate pads first (the debugger runs on
    the zero-point-0 input) and, as floating them cannot undo the scale the quantizer ties to them, the record
    says over budget, and why."""
    from targets import layer_errors

    monkeypatch.setattr(layer_errors, "_CALIBRATED", {})
    monkeypatch.setattr(layer_errors, "RANGE_KEEPING_OPS", frozenset())  # no op's range is repaired
    info = tflite_int8_record(maxpool_run, force=True).info
    assert info["range_repairs"] == []
    assert info["within_budget"] is False and info["over_budget"].startswith("validation top-1")
    worst = info["worst_layers"]
    assert [e["op"] for e in worst if e["degenerate"]] and worst[0]["degenerate"] and "float-max" in worst[0]["note"]
