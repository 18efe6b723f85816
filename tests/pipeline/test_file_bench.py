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


def test_json_is_a_manifest_measurement(finished_run: Path, manifest: Manifest, tmp_path: Path) -> None:
    """--json writes the same Measurement record a run's manifest holds (parsed strictly above); no temp left."""
    _, measured = bench(finished_run / manifest.artifacts["onnx-int8"].path, tmp_path)
    assert json.loads((tmp_path / "measurement.json").read_text())["artifact"] == "student-onnx-int8.onnx"
    assert measured.runtime == "onnxruntime" and [p.name for p in tmp_path.iterdir()] == ["measurement.json"]


# --- tiny inline models: fixed batch sizes, data of another size, recorded normalization, thread counts ---------

FAST = {"warmup": 0, "min_runs": 2, "min_seconds": 0, "rounds": 1, "memory": False}


def _cnn(size: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    flat = nn.Linear(4 * size * size, 10)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), flat).eval()


def _onnx(path: Path, size: int, batch: int | None) -> Path:
    """The same seeded CNN on 1×size×size input, its batch dimension fixed at ``batch`` (None: dynamic)."""
    import torch

    axes = {} if batch else {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}}
    x = torch.zeros(batch or 2, 1, size, size)
    torch.onnx.export(_cnn(size), (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False, **axes)
    return path


def _tflite(path: Path, batch: int | None) -> Path:
    """A seeded NHWC 8×8 CNN as TFLite; with ``batch`` its input and a Reshape are fixed at that size (a file the
    interpreter cannot resize to other batches)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(3, 3, 1, 4)).astype(np.float32))
    dense = tf.constant(rng.normal(size=(256, 10)).astype(np.float32) / 16)

    @tf.function(input_signature=[tf.TensorSpec([batch, 8, 8, 1], tf.float32)])
    def model(x):
        x = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        return tf.matmul(tf.reshape(x, [batch or -1, 256]), dense)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name, size, batch in [("dynamic", 8, None), ("b1", 8, 1), ("b7", 8, 7), ("fashion", 28, None)]:
        _onnx(folder / f"{name}.onnx", size, batch)
    return folder


def _bench_file(path: Path, resize: bool = False, **data):
    from pipeline.config import BenchConfig, DataConfig
    from pipeline.measure.file_bench import bench_file

    bench = BenchConfig(**FAST, batch_sizes=[1, 8], threads=[1])
    return bench_file(path, DataConfig(source="digits", **data), bench, resize=resize)


@pytest.mark.parametrize("name", ["b1", "b7"])
def test_fixed_batch_onnx_is_fed_at_its_own_size(models: Path, name: str) -> None:
    """A static batch of 1 or 7 (359 test images: the last chunk padded) scores what the dynamic file scores; only
    its own batch size is timed, and the asked-for others are one warning."""
    dynamic, fixed = _bench_file(models / "dynamic.onnx"), _bench_file(models / f"{name}.onnx")
    size = int(name[1:])
    assert fixed.measurement.accuracy == dynamic.measurement.accuracy
    assert fixed.fixed_batch == size and dynamic.fixed_batch is None
    assert {t.latency.batch for t in fixed.measurement.timings} == {size}
    assert {t.latency.batch for t in dynamic.measurement.timings} == {1, 8}
    (warning,) = fixed.warnings
    assert f"takes batches of exactly {size}" in warning and "--batch" in warning


def test_fixed_batch_tflite_is_fed_at_its_own_size(tmp_path: Path) -> None:
    """A TFLite file fixed at batch 1 (a Reshape to [1, 256]: the interpreter cannot take 256 at once) is measured
    one image at a time and scores like its dynamic twin."""
    dynamic = _bench_file(_tflite(tmp_path / "dynamic.tflite", None))
    fixed = _bench_file(_tflite(tmp_path / "b1.tflite", 1))
    assert fixed.measurement.accuracy == dynamic.measurement.accuracy
    assert [t.latency.batch for t in fixed.measurement.timings] == [1]


def test_data_of_another_size_is_refused_unless_resize(models: Path) -> None:
    """digits (1×8×8) on a 1×28×28 model: one line naming both shapes and --resize, exit 3; with --resize it is
    measured and the summary says the images were brought there."""
    from pipeline.errors import DataError
    from pipeline.measure.file_bench import render_measurement

    with pytest.raises(DataError, match=r"1×8×8 \(C×H×W\) but fashion.onnx takes 1×28×28") as refused:
        _bench_file(models / "fashion.onnx")
    assert "--resize" in refused.value.hint
    resized = _bench_file(models / "fashion.onnx", resize=True)
    assert resized.splits.input_shape == (1, 28, 28)
    assert "brought there by --resize (stretch)" in render_measurement(resized)
    result = CliRunner().invoke(app, ["bench", str(models / "fashion.onnx"), *QUICK])
    assert result.exit_code == 3
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("edgepipe: error: digits images are 1×8×8") and "--resize" in line


def test_recorded_normalization_is_used_and_said(models: Path, tmp_path: Path) -> None:
    """A file with a run's manifest.json beside it is normalized with the recorded mean/std (said, with where from);
    --mean/--std override it; without a record the data's training split gives them."""
    import json
    import shutil

    from pipeline.io import sha256_file
    from pipeline.measure.file_bench import render_measurement

    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    model = shutil.copy(models / "dynamic.onnx", run / "artifacts" / "student-onnx-fp32.onnx")
    recorded = {"mean": [0.5], "std": [0.25], "channels": 1, "height": 8, "width": 8, "resize": None}
    manifest = {"artifacts": {"onnx-fp32": {"sha256": sha256_file(model)}}, "data": {"preprocessing": recorded}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    fed = _bench_file(model)
    assert (fed.splits.mean, fed.splits.std) == ([0.5], [0.25])
    said = f"mean/std as recorded for the file: {run / 'manifest.json'} (lists the file's sha256)"
    assert said in render_measurement(fed)
    given = _bench_file(model, mean=[0.3], std=[0.2])
    assert given.splits.mean == [0.3] and "mean/std from --mean/--std" in render_measurement(given)
    own = _bench_file(models / "dynamic.onnx")
    assert "mean/std from the training split of digits" in render_measurement(own)


def test_thread_counts_follow_the_usable_cores(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'all' is the cores this process may use; a count above them is measured with a one-line warning."""
    from pipeline.config import BenchConfig, DataConfig
    from pipeline.measure import machine_load
    from pipeline.measure.file_bench import bench_file

    monkeypatch.setattr(machine_load, "usable_cores", lambda: 1)
    every = bench_file(models / "dynamic.onnx", DataConfig(source="digits"), BenchConfig(**FAST, threads=["all"]))
    assert {t.threads for t in every.measurement.timings} == {1} and not every.warnings
    over = bench_file(models / "dynamic.onnx", DataConfig(source="digits"), BenchConfig(**FAST, threads=[2]))
    (warning,) = over.warnings
    assert "2 thread(s) exceed the 1 core(s) this process may use" in warning


def test_render_shows_load_and_first_call_beside_the_warm_p50(models: Path) -> None:
    from pipeline.measure.file_bench import render_measurement

    fed = _bench_file(models / "b1.onnx")
    m = fed.measurement
    line = render_measurement(fed).splitlines()[3]
    assert line.startswith(f"warm p50 {m.timings[0].latency.p50_ms:.3f} ms (batch 1, 1 thread); load ")
    assert "first call" in line and line.endswith("the file fixes the batch at 1")
