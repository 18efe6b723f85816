"""`edgepipe bench FILE --data …`: any ONNX or TFLite file measured through the same harness, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.manifest import Manifest, Measurement

QUICK = ["--data", "digits", "--threads", "1", "--batch", "1"]


@pytest.fixture(scope="module")
def manifest(finished_run: Path) -> Manifest:
    return Manifest.load(finished_run / "manifest.json")


def bench(path: Path, tmp_path: Path, *extra: str) -> tuple[object, Measurement | None]:
    out = tmp_path / "measurement.json"
    result = CliRunner().invoke(app, ["bench", str(path), *QUICK, "--json", str(out), *extra])
    measured = Measurement.model_validate_json(out.read_text()) if out.is_file() else None
    return result, measured


@pytest.mark.parametrize("artifact", ["onnx-fp32", "tflite-int8"])
def test_file_accuracy_equals_the_runs(finished_run: Path, manifest: Manifest, tmp_path: Path, artifact: str) -> None:
    """On the data the run used, a file benched on its own scores what the run measured for it."""
    record = manifest.artifacts[artifact]
    result, measured = bench(finished_run / record.path, tmp_path)
    assert result.exit_code == 0, result.output
    (row,) = [m for m in manifest.measurements if m.artifact == artifact and m.provider in ("CPU", "XNNPACK")][:1]
    assert measured.accuracy == row.accuracy
    assert measured.macs == row.macs and measured.file_bytes == record.bytes
    assert [(t.latency.batch, t.threads) for t in measured.timings] == [(1, 1)]
    assert measured.peak_rss_mib > measured.runtime_rss_mib > 0
    assert f"test top-1 {row.accuracy:.2f} %" in result.stdout and "| p50 ms |" in result.stdout


def test_nhwc_onnx_file(finished_run: Path, manifest: Manifest, tmp_path: Path) -> None:
    """An NHWC ONNX file (tf2onnx's conversion of tflite-fp32) is fed NHWC and scores like the TFLite file."""
    (converted,) = (finished_run / "work" / "tf2onnx").glob("tflite-fp32-*.onnx")
    result, measured = bench(converted, tmp_path)
    assert result.exit_code == 0, result.output
    (interpreter,) = [m for m in manifest.measurements if m.artifact == "tflite-fp32" and m.runtime == "tflite"]
    assert measured.accuracy == interpreter.accuracy


def test_bad_input_is_one_line_and_an_exit_code(finished_run: Path, manifest: Manifest, tmp_path: Path) -> None:
    cli = CliRunner()
    onnx_file = finished_run / manifest.artifacts["onnx-fp32"].path
    cases = [
        (["bench", str(tmp_path / "missing.onnx"), *QUICK], 4, "does not exist"),
        (["bench", str(finished_run / "manifest.json"), *QUICK], 4, "unknown model format"),
        (["bench", str(onnx_file)], 2, "needs --data"),
        (["bench", str(finished_run), "--data", "digits"], 2, "config.yaml"),
        (["bench", str(onnx_file), "--data", "digits", "--threads", "many"], 2, "threads"),
    ]
    twelve = tmp_path / "twelve.npz"
    rng = np.random.default_rng(0)
    np.savez(twelve, x=rng.integers(0, 255, (240, 8, 8), np.uint8), y=np.arange(240) % 12)
    cases.append((["bench", str(onnx_file), "--data", str(twelve)], 3, "outputs 10 classes but the data has 12"))
    for args, code, words in cases:
        result = cli.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("edgepipe: error:") and words in line, line
    assert not list(tmp_path.glob("*.json"))


def test_json_is_a_manifest_measurement(finished_run: Path, manifest: Manifest, tmp_path: Path) -> None:
    """--json writes the same Measurement record a run's manifest holds (parsed strictly above); no temp left."""
    _, measured = bench(finished_run / manifest.artifacts["onnx-int8"].path, tmp_path)
    assert json.loads((tmp_path / "measurement.json").read_text())["artifact"] == "student-onnx-int8.onnx"
    assert measured.runtime == "onnxruntime" and [p.name for p in tmp_path.iterdir()] == ["measurement.json"]
