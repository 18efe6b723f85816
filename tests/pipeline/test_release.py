"""`edgepipe release`: a bundle fed from its own manifest reproduces the run's accuracy; metadata embedded without
changing inference; one-line errors; nothing half-written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tflite
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import DataConfig
from pipeline.data.splits import load_splits
from pipeline.io import sha256_file
from pipeline.manifest import Manifest
from pipeline.model_metadata import read_onnx_metadata, read_tflite_metadata

SHIPPED = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]


def release_args(run: Path, out: Path, *names: str) -> list[str]:
    return ["release", str(run), *[arg for name in names for arg in ("--target", name)], "--out", str(out)]


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgepipe: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def bundle(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("release") / "bundle"
    result = CliRunner().invoke(app, release_args(finished_run, out, *SHIPPED))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def test_pixels() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The run's raw uint8 test images as a consumer holds them (N, H, W, C), their labels and class names."""
    splits = load_splits(DataConfig(source="digits"), seed=0)
    return splits.test.x.transpose(0, 2, 3, 1), splits.test.y, splits.classes


def run_file(path: Path, feed: np.ndarray) -> np.ndarray:
    """The raw output of an ONNX (onnxruntime) or TFLite (LiteRT) file on one batch."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: feed})[0]
    return run_tflite(path, feed)


def feed_from_manifest(entry: dict, pixels: np.ndarray) -> np.ndarray:
    """uint8 NHWC pixels → model input, from the bundle entry's fields only (float32, as the run measured)."""
    pre, spec = entry["preprocessing"], entry["input"]
    x = (pixels.astype(np.float32) / np.float32(1 / pre["pixel_scale"]) - np.float32(pre["mean"])) / np.float32(
        pre["std"]
    )
    if spec["layout"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if spec["scale"] is not None:
        x = np.clip(np.round(x / spec["scale"]) + spec["zero_point"], -128, 127)
    return np.ascontiguousarray(x, dtype=spec["dtype"])


@pytest.mark.parametrize("name", SHIPPED)
def test_bundle_alone_reproduces_reported_accuracy(bundle: Path, test_pixels, name: str) -> None:
    """Done when: each bundled file, fed on raw test pixels from manifest.json alone (formula, layout, int8 scale and
    zero point, labels), scores exactly the top-1 the bundle reports."""
    pixels, y, classes = test_pixels
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["artifacts"][name]
    raw = run_file(bundle / entry["file"], feed_from_manifest(entry, pixels))
    out = entry["output"]
    logits = (raw.astype(np.float32) - out["zero_point"]) * out["scale"] if out["scale"] is not None else raw
    predicted = [manifest["labels"][i] for i in logits.argmax(1)]
    accuracy = round(float(np.mean([p == classes[t] for p, t in zip(predicted, y)]) * 100), 2)
    assert [m["accuracy"] for m in entry["measurements"] if m["provider"] != "CUDA"] == [accuracy]
    assert entry["output_meaning"]["softmax_applied"] is False
    assert (bundle / "labels.txt").read_text().splitlines() == manifest["labels"] == classes


@pytest.mark.parametrize("name", ["onnx-int8", "tflite-int8"])
def test_readme_code_runs(
    bundle: Path, test_pixels, name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's code blocks, run as written from the bundle directory on the test images saved as PNG files,
    give the reported accuracy."""
    from PIL import Image

    pixels, y, classes = test_pixels
    paths = [tmp_path / f"{i}.png" for i in range(len(pixels))]
    for path, image in zip(paths, pixels):
        Image.fromarray(image[..., 0]).save(path)
    blocks = re.findall(r"```python\n(.*?)```", (bundle / "README.md").read_text(), re.S)
    runtime = "onnxruntime" if name.startswith("onnx") else "ai_edge_litert"
    prepare, run = blocks[0], next(block for block in blocks[1:] if runtime in block)
    monkeypatch.chdir(bundle)
    namespace = {"paths": paths}
    exec(re.sub(r'name = "[^"]+"', f'name = "{name}"', prepare) + run, namespace)
    accuracy = round(float(np.mean([p == classes[t] for p, t in zip(namespace["classes"], y)]) * 100), 2)
    assert accuracy == namespace["entry"]["measurements"][0]["accuracy"]


@pytest.mark.parametrize("name", SHIPPED)
def test_bundled_file_computes_what_the_run_artifact_does(bundle: Path, finished_run: Path, test_pixels, name) -> None:
    """Embedding metadata changes no output: bundled file and run artifact agree bit for bit; hashes recorded."""
    entry = json.loads((bundle / "manifest.json").read_text())["artifacts"][name]
    record = Manifest.load(finished_run / "manifest.json").artifacts[name]
    feed = feed_from_manifest(entry, test_pixels[0])
    np.testing.assert_array_equal(run_file(bundle / entry["file"], feed), run_file(finished_run / record.path, feed))
    assert entry["sha256"] == sha256_file(bundle / entry["file"]) != record.sha256
    assert entry["source_sha256"] == record.sha256
    assert entry["bytes"] == (bundle / entry["file"]).stat().st_size


def embedded_entry(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key not in ("bytes", "sha256")}


def test_onnx_metadata_props(bundle: Path) -> None:
    """ONNX files carry their entry (key edgepipe) and the labels in metadata_props, readable by onnxruntime."""
    import onnxruntime as ort

    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("onnx-fp32", "onnx-int8"):
        entry = manifest["artifacts"][name]
        props = ort.InferenceSession(str(bundle / entry["file"])).get_modelmeta().custom_metadata_map
        assert props == read_onnx_metadata(bundle / entry["file"])
        assert json.loads(props["edgepipe"]) == embedded_entry(entry)
        assert props["labels"] == (bundle / "labels.txt").read_text()


def test_tflite_metadata(bundle: Path) -> None:
    """TFLite files carry the same entries in the flatbuffer's metadata, read back with TensorFlow's own copy of
    the schema; the converter's entries are kept."""
    from tensorflow.lite.python import schema_py_generated as tf_schema

    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("tflite-fp32", "tflite-int8"):
        entry = manifest["artifacts"][name]
        model = tf_schema.Model.GetRootAs((bundle / entry["file"]).read_bytes(), 0)
        rows = [model.Metadata(i) for i in range(model.MetadataLength())]
        entries = {row.Name().decode(): model.Buffers(row.Buffer()).DataAsNumpy().tobytes() for row in rows}
        assert entries == read_tflite_metadata(bundle / entry["file"])
        assert {"min_runtime_version", "edgepipe", "labels"} <= entries.keys()
        assert json.loads(entries["edgepipe"]) == embedded_entry(entry)
        assert entries["labels"].decode() == (bundle / "labels.txt").read_text()


def test_bundle_entries_describe_the_run(bundle: Path, finished_run: Path) -> None:
    """Each entry takes its tensors, preprocessing, measurements (own runtime only) and versions from the run."""
    run = Manifest.load(finished_run / "manifest.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == set(SHIPPED)
    for name, entry in manifest["artifacts"].items():
        record = run.artifacts[name]
        assert [entry["input"]] == [spec.model_dump() for spec in record.inputs]
        assert entry["input"]["layout"] == ("NCHW" if entry["format"] == "onnx" else "NHWC")
        assert entry["preprocessing"] == run.data.preprocessing.model_dump()
        assert {m["runtime"] for m in entry["measurements"]} == {"onnxruntime" if name.startswith("onnx") else "tflite"}
        assert entry["versions"]["onnxruntime"] == run.environment["packages"]["onnxruntime"]
        assert entry["versions"]["ai-edge-litert"] == run.environment["packages"]["ai-edge-litert"]
    assert manifest["artifacts"]["tflite-int8"]["input"]["scale"] is not None


def test_target_not_exported(run_copy: Path, tmp_path: Path) -> None:
    """A known target the run did not export exits 6 and says how to export it."""
    manifest = Manifest.load(run_copy / "manifest.json")
    del manifest.artifacts["tflite-fp16"]
    manifest.save(run_copy / "manifest.json")
    result = CliRunner().invoke(app, release_args(run_copy, tmp_path / "out", "tflite-fp16"))
    assert result.exit_code == 6
    assert "edgepipe export" in one_error_line(result)


def test_run_without_bench(run_copy: Path, tmp_path: Path) -> None:
    """No measurements: exit 6 saying to run `edgepipe bench`; nothing written."""
    manifest = Manifest.load(run_copy / "manifest.json")
    manifest.measurements = []
    manifest.save(run_copy / "manifest.json")
    result = CliRunner().invoke(app, release_args(run_copy, tmp_path / "out", "onnx-int8"))
    assert result.exit_code == 6
    assert f"edgepipe bench {run_copy}" in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_figures_of_another_file_are_refused(run_copy: Path, tmp_path: Path) -> None:
    """Every measurement names the sha256 of the file it measured; figures of another file than the artifact's
    (bench ran before the artifact was rebuilt) are not shipped with it."""
    manifest = Manifest.load(run_copy / "manifest.json")
    sha256 = manifest.artifacts["onnx-int8"].sha256
    rows = [m for m in manifest.measurements if m.artifact == "onnx-int8"]
    assert rows and all(m.sha256 == sha256 for m in rows)
    manifest.measurements = [
        m.model_copy(update={"sha256": "f" * 64}) if m.artifact == "onnx-int8" else m for m in manifest.measurements
    ]
    manifest.save(run_copy / "manifest.json")
    result = CliRunner().invoke(app, release_args(run_copy, tmp_path / "out", "onnx-int8"))
    assert result.exit_code == 6
    line = one_error_line(result)
    assert "the figures of onnx-int8 were measured on another file" in line and f"edgepipe bench {run_copy}" in line
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_force(finished_run: Path, tmp_path: Path) -> None:
    """A non-empty --out is refused; with --force it is replaced whole, and no temp directory stays."""
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    refused = CliRunner().invoke(app, release_args(finished_run, out, "onnx-int8"))
    assert refused.exit_code == 2 and "--force" in one_error_line(refused)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    forced = CliRunner().invoke(app, [*release_args(finished_run, out, "onnx-int8"), "--force"])
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "labels.txt",
        "manifest.json",
        "student-onnx-int8.onnx",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


@pytest.mark.parametrize("existing", [False, True])
def test_failure_leaves_nothing(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """A failure while the bundle is written removes the staged directory and keeps an old --out as it was."""
    from pipeline.stages import release

    out = tmp_path / "bundle"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old")

    def fail(manifest):
        raise RuntimeError("disk full")

    monkeypatch.setattr(release, "render_readme", fail)
    result = CliRunner().invoke(app, [*release_args(finished_run, out, "tflite-int8"), "--force"])
    assert isinstance(result.exception, RuntimeError)
    assert [p.name for p in tmp_path.iterdir()] == (["bundle"] if existing else [])
    assert not existing or [p.name for p in out.iterdir()] == ["old.txt"]
