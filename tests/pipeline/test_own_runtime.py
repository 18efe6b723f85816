"""Measurements stand on their own runtime: a TFLite file that tf2onnx cannot convert (hardsigmoid → RELU_0_TO_1)
is still measured on the interpreter with its parameters and MACs, released, and benched as a file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import BenchConfig
from pipeline.manifest import Manifest, Measurement
from pipeline.measure.harness import Plan, measure_plan
from pipeline.measure.runtimes import Runner
from pipeline.report.sections import unmeasured_bullets

SE_STUDENT = """
from torch import nn


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.fc2(nn.functional.relu6(self.fc1(s))))


class Net(nn.Module):
    def __init__(self, cin, n):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.se = SE(16)
        self.head = nn.Linear(16, n)

    def forward(self, x):
        return self.head(self.se(self.dw(self.stem(x))).mean((2, 3)))


def make(in_channels, num_classes):
    return Net(in_channels, num_classes)
"""
TF2ONNX = "onnxruntime via tf2onnx"


@pytest.fixture(scope="module")
def se_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run of the hardsigmoid-SE student through the TFLite targets, a small bench grid."""
    import yaml
    from conftest import TINY_CONFIG

    root = tmp_path_factory.mktemp("se")
    (root / "se.py").write_text(SE_STUDENT)
    raw = copy.deepcopy(TINY_CONFIG)
    raw["teacher"]["epochs"] = 1
    raw["distill"].update(arch=f"{root / 'se.py'}:make", epochs=1)
    raw["export"]["targets"] = ["onnx-fp32", "tflite-fp32", "tflite-int8"]
    raw["bench"].update(batch_sizes=[1], threads=[1], memory=False)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(root / "run")])
    assert (root / "run" / "report.md").is_file(), result.output
    return root / "run"


def test_interpreter_rows_measured_without_tf2onnx(se_run: Path) -> None:
    """Every TFLite file has its interpreter row with parameters and the ONNX file's MACs (convolution, depthwise,
    1×1 and dense layers counted on the TFLite graph); only its tf2onnx row is skipped, with tf2onnx's reason and a
    hint that the file itself is sound."""
    manifest = Manifest.load(se_run / "manifest.json")
    rows = {(m.artifact, m.runtime): m for m in manifest.measurements}
    fp32_macs = rows["onnx-fp32", "onnxruntime"].macs
    for name in ("tflite-fp32", "tflite-int8"):
        interpreter = rows[name, "tflite"]
        assert interpreter.params > 0 and interpreter.macs == fp32_macs and interpreter.unmeasured == {}
        assert (name, TF2ONNX) not in rows
        (skipped,) = [s for s in manifest.skipped if s.artifact == name and s.runtime == TF2ONNX]
        assert "tf2onnx could not convert" in skipped.reason and "RELU_0_TO_1" in skipped.reason
        assert "the file itself is sound, the TFLite interpreter loads it" in skipped.reason
    assert "Not measured" in (se_run / "report.md").read_text()


def test_release_and_bench_file(se_run: Path, tmp_path: Path) -> None:
    """`release --target tflite-int8` ships the file with its interpreter figures; `bench FILE` measures it."""
    manifest = Manifest.load(se_run / "manifest.json")
    args = ["release", str(se_run), "--target", "tflite-int8", "--out", str(tmp_path / "bundle")]
    if manifest.artifacts["tflite-int8"].info.get("over_budget"):
        args.append("--allow-over-budget")  # this test is about measurements, not the accuracy budget
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bundled = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["artifacts"]["tflite-int8"]
    assert [m["runtime"] for m in bundled["measurements"]] == ["tflite"] and bundled["measurements"][0]["macs"] > 0
    path = se_run / manifest.artifacts["tflite-int8"].path
    result = CliRunner().invoke(app, ["bench", str(path), "--data", "digits", "--batch", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "check that the file is a complete" not in result.output and "test top-1" in result.output
    assert "Fields left empty" not in result.output  # parameters, MACs and memory all measured


def _runner(threads: int) -> Runner:
    logits = np.eye(3, dtype=np.float32)
    return Runner("fake", "CPU", threads, lambda x: logits[: len(x)], lambda x: lambda: None)


def test_failed_profile_and_probe_leave_fields_empty_with_reasons() -> None:
    """A failing MAC counter or memory probe empties only its fields, each with the reason; the row stands."""
    from pipeline.measure.memory_probe import ProbeSpec

    def broken_profile():
        raise RuntimeError("counter exploded\nsecond line")

    plan = Plan(
        artifact="a",
        runtime="fake",
        make_runner=_runner,
        file_bytes=lambda: 10,
        profile=broken_profile,
        probe=ProbeSpec(kind="onnx", path="/nonexistent.onnx", input_shape=[1, 2, 2]),
    )
    cfg = BenchConfig(warmup=0, min_runs=1, min_seconds=0, batch_sizes=[1], threads=[1])
    measurement, _ = measure_plan(plan, np.zeros((3, 1, 2, 2), np.float32), np.arange(3), None, cfg)
    assert measurement.accuracy == 100.0 and measurement.file_bytes == 10
    assert measurement.params is None and measurement.macs is None and measurement.peak_rss_mib is None
    assert measurement.unmeasured["macs"] == measurement.unmeasured["params"] == "counter exploded"
    assert measurement.unmeasured["peak_rss_mib"].startswith("memory probe failed")
    bullets = unmeasured_bullets([measurement])
    assert bullets[0] == "a on fake: no params, macs: counter exploded" and len(bullets) == 2


def test_old_measurements_load_without_unmeasured() -> None:
    """Manifests written before `unmeasured` existed still load (the field defaults to empty)."""
    row = {"artifact": "a", "runtime": "r", "provider": "CPU", "accuracy": 1.0, "timings": []}
    assert Measurement.model_validate(row).unmeasured == {}
