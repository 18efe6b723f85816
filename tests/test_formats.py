"""The formats table: ONNX and TFLite are entries of ``FORMATS``, and a new format plus a target that writes it is
added from test code alone. A toy "npz-linear" format (a linear model's weights in an .npz file, run with numpy)
and a target exporting a linear student to it go through the export stage's verification, the bench harness,
`edgepipe bench FILE`, the gate's native-runtime choice and a release bundle, with nothing outside this file
changed; both are removed again after each test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError, ModelError
from pipeline.formats import FORMATS, Format, format_for_suffix, format_labelled, format_of, runtime_format
from pipeline.manifest import TensorSpec
from pipeline.measure.model_profile import ModelProfile
from pipeline.measure.runtimes import Runner
from targets import TARGETS, ExportInputs, ExportResult, Target, register_target

TOY = "npz-linear"
TOY_TARGET = "npz-linear-fp32"
META = "meta:"  # npz keys holding embedded metadata entries

# --- the toy format: everything it needs lives here -----------------------------------------------------------


def _write_npz(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(dest, "wb") as file:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(file, **arrays)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as loaded:
        return {key: loaded[key] for key in loaded.files}


def _describe(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    arrays = _arrays(path)
    c, h, w = (int(d) for d in arrays["input_chw"])
    inputs = [TensorSpec(name="x", shape=["batch", c, h, w], dtype="float32", layout="NCHW")]
    return inputs, [TensorSpec(name="logits", shape=["batch", len(arrays["bias"])], dtype="float32")]


def _runner(path: Path, inputs, outputs, threads, provider: str) -> Runner:
    arrays = _arrays(path)
    weight, bias = arrays["weight"], arrays["bias"]

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32).reshape(len(x), -1) @ weight.T + bias

    return Runner("numpy", provider, 1, predict, lambda x: lambda: predict(x))


def _profile(path: Path) -> ModelProfile:
    arrays = _arrays(path)
    return ModelProfile(params=arrays["weight"].size + arrays["bias"].size, macs=arrays["weight"].size)


def _embed(source: Path, dest: Path, entries: dict[str, str]) -> None:
    _write_npz(dest, _arrays(source) | {META + key: np.array(text) for key, text in entries.items()})


def _read(path: Path) -> dict[str, str]:
    return {key.removeprefix(META): str(value) for key, value in _arrays(path).items() if key.startswith(META)}


SNIPPET = """\
weights = np.load(entry["file"])
scores = model_input(np.stack([load_pixels(path) for path in paths])).reshape(len(paths), -1) @ weights["weight"].T
"""

TOY_FORMAT = Format(
    name=TOY,
    label="NPZ-linear",
    suffixes=(".npz",),
    runtime="numpy",
    runtime_label="numpy matmul",
    layout="NCHW",
    layouts=("NCHW",),
    quantized_input=False,
    runner=_runner,
    cpu_provider="CPU",
    describe=_describe,
    profile=_profile,
    probe_import=None,
    embed_metadata=_embed,
    read_metadata=_read,
    metadata_where="as meta: arrays of the archive",
    readme_heading="NPZ-linear files with numpy",
    feeding_snippet=SNIPPET,
    tools=("numpy",),
    marker="P",
)


class NpzLinear(Target):
    """A linear student (Flatten + Linear) written as its weight and bias."""

    name = TOY_TARGET
    description = "a linear student as numpy weights (test only)"
    format = TOY
    precision = "fp32"
    suffix = ".npz"
    parent = "student"
    max_abs_diff = 1e-4
    default = False

    def export(self, inputs: ExportInputs) -> ExportResult:
        from torch import nn

        linear = next(m for m in inputs.model.modules() if isinstance(m, nn.Linear))
        pre = inputs.preprocessing
        arrays = {
            "weight": linear.weight.detach().numpy().astype(np.float32),
            "bias": linear.bias.detach().numpy().astype(np.float32),
            "input_chw": np.array([pre.channels, pre.height, pre.width]),
        }
        _write_npz(inputs.output_path, arrays)
        specs = _describe(inputs.output_path)
        return ExportResult(inputs=specs[0], outputs=specs[1], info={"writer": "numpy.savez"})


LINEAR_FACTORY = """\
from torch import nn


def linear(in_channels, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))
"""


@pytest.fixture
def toy_format():
    """The toy format and target, registered for one test and removed after it."""
    before = (FORMATS.names(), TARGETS.names())
    with FORMATS.registered(TOY, TOY_FORMAT):
        register_target(NpzLinear)
        try:
            yield TOY_FORMAT
        finally:
            TARGETS.unregister(TOY_TARGET)
    assert (FORMATS.names(), TARGETS.names()) == before


@pytest.fixture
def linear_run(tmp_path: Path, tiny_config_dict: dict):
    """A run on digits whose student is a linear model (checkpoint written here, no training)."""
    import torch

    from pipeline.config_load import parse_config
    from pipeline.rundir import RunDir
    from pipeline.training.models import build_model, save_checkpoint

    factory = tmp_path / "linear_student.py"
    factory.write_text(LINEAR_FACTORY)
    run = RunDir.create(tmp_path / "run", parse_config(tiny_config_dict))
    torch.manual_seed(0)
    meta = {"arch": f"{factory}:linear", "in_channels": 1, "num_classes": 10}
    model = build_model(meta["arch"], 1, 10)
    path = run.path("student.pt")
    save_checkpoint(model, path, meta)
    run.record("student", "distill", "linear-student", path, info=meta)
    return run


def _quick_bench():
    from pipeline.config import BenchConfig

    return BenchConfig(warmup=1, min_runs=3, min_seconds=0, rounds=1, batch_sizes=[1], threads=[1], memory=False)


# --- the tests ------------------------------------------------------------------------------------------------


def test_the_table_holds_onnx_and_tflite() -> None:
    """Suffix, label and native-runtime lookups answer from the table; an unknown suffix lists the valid ones."""
    assert FORMATS.names()[:2] == ["onnx", "tflite"]
    assert format_for_suffix(".tflite").name == "tflite" and format_for_suffix(".pt") is None
    assert format_labelled("ONNX").name == "onnx" and format_labelled("Keras") is None
    assert runtime_format("onnxruntime").name == "onnx" and runtime_format("onnxruntime via tf2onnx") is None
    assert FORMATS.get("tflite").plan_runtime("XNNPACK") == "tflite"
    assert FORMATS.get("onnx").plan_runtime("CPUExecutionProvider") == "onnxruntime CPUExecutionProvider"
    with pytest.raises(ConfigError, match="valid: onnx, tflite"):
        FORMATS.get("coreml")


def test_unknown_suffix_names_the_valid_ones(tmp_path: Path) -> None:
    model = tmp_path / "model.mlmodel"
    model.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"unknown model format '\.mlmodel'; valid: \.onnx \(ONNX\), \.tflite"):
        format_of(model)
    with pytest.raises(ModelError, match="does not exist"):
        format_of(tmp_path / "missing.onnx")


def test_every_format_runtime_version_is_recorded() -> None:
    """The manifest's package versions include each format's runtime, a format registered in a test too."""
    from dataclasses import replace
    from importlib import metadata

    from pipeline.environment import package_versions

    assert "PyYAML" not in package_versions()
    assert package_versions()["onnxruntime"] and package_versions()["ai-edge-litert"]
    with FORMATS.registered("yaml-toy", replace(TOY_FORMAT, name="yaml-toy", suffixes=(".ytoy",), tools=("PyYAML",))):
        assert package_versions()["PyYAML"] == metadata.version("PyYAML")
    assert "PyYAML" not in package_versions()


def test_importing_the_table_loads_no_runtime() -> None:
    """The entries' callables import their libraries; the module itself imports none of them."""
    code = (
        "import sys, pipeline.formats; "
        "print([m for m in ('onnx', 'onnxruntime', 'tensorflow', 'torch', 'ai_edge_litert', 'targets') "
        "if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_toy_format_is_exported_verified_and_benched(toy_format: Format, linear_run, tmp_path: Path) -> None:
    """The export stage builds and verifies the toy target through the table's runner; the bench stage's plans and
    the harness measure it on its own runtime; `edgepipe bench FILE` reads, feeds and profiles it by suffix."""
    from pipeline.config import DataConfig
    from pipeline.measure.file_bench import bench_file
    from pipeline.measure.harness import measure_plan
    from pipeline.stages.bench import _format_plans
    from pipeline.stages.export import Exporter, artifact_runner

    record = Exporter(linear_run, set(), "student").build(TOY_TARGET)
    assert record.path.endswith(".npz") and record.info["format"] == TOY
    verification = record.info["verification"]
    assert verification["max_abs_diff_vs_student"] < 1e-4 and verification["top1_agreement_vs_student"] == 100
    path = linear_run.path(record.path)
    assert format_of(path) is toy_format
    assert artifact_runner(path, TOY, record.inputs, record.outputs, 1).runtime == "numpy"

    splits = linear_run.splits
    x, y = splits.normalize(splits.test.x), splits.test.y
    (plan,) = _format_plans(linear_run, record, list(splits.input_shape))
    assert plan.runtime == "numpy" and plan.probe is None
    measurement, logits = measure_plan(plan, x, y, None, _quick_bench())
    assert (measurement.runtime, measurement.provider) == ("numpy", "CPU")
    assert measurement.params == 650 and measurement.macs == 640 and measurement.file_bytes == record.bytes
    assert logits.shape == (len(x), 10)

    result = bench_file(path, DataConfig(source="digits"), _quick_bench())
    assert result.measurement.runtime == "numpy" and result.measurement.accuracy == measurement.accuracy
    assert "manifest.json" in result.preprocessing  # the run's manifest lists the file's sha256


def test_a_toy_format_is_gated_and_released(toy_format: Format, linear_run, tmp_path: Path) -> None:
    """The gate checks the toy file's row on its own runtime only; a release embeds its entry as the format keeps
    metadata, reads it back, and its README feeds it with the format's snippet."""
    from pipeline.config import GateConfig
    from pipeline.measure.harness import measure_plan
    from pipeline.report.gate import evaluate_gate
    from pipeline.stages.bench import _format_plans
    from pipeline.stages.export import Exporter
    from pipeline.stages.release import build_release
    from pipeline.training.teacher_files import recorded_preprocessing

    record = Exporter(linear_run, set(), "student").build(TOY_TARGET)
    splits = linear_run.splits
    (plan,) = _format_plans(linear_run, record, list(splits.input_shape))
    measured, _ = measure_plan(plan, splits.normalize(splits.test.x), splits.test.y, None, _quick_bench())
    measured = measured.model_copy(update={"sha256": record.sha256})
    converted = measured.model_copy(update={"runtime": "numpy via a converter"})
    teacher = measured.model_copy(update={"artifact": "teacher", "runtime": "pytorch"})
    linear_run.manifest.measurements = [teacher, measured, converted]

    gate = evaluate_gate(linear_run.manifest, GateConfig(max_p50_ms=1e6))
    assert [(c.artifact, c.runtime) for c in gate.checks] == [(TOY_TARGET, "numpy (CPU)")]

    out = tmp_path / "bundle"
    release = build_release(linear_run, [TOY_TARGET], out)
    entry = release.artifacts[TOY_TARGET]
    assert entry.format == TOY and [m.runtime for m in entry.measurements] == ["numpy"]
    bundled = out / entry.file
    assert set(_read(bundled)) == {"edgepipe", "labels"}
    assert recorded_preprocessing(bundled)[1] == "metadata embedded in the file"
    readme = (out / "README.md").read_text()
    assert "### NPZ-linear files with numpy" in readme and SNIPPET.splitlines()[0] in readme
    assert "NPZ-linear as meta: arrays of the archive" in readme
    assert "### ONNX files" not in readme and "### TFLite files" not in readme
