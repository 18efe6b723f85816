"""Bench and report: one measurement per artifact × runtime, sane figures, one report row each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.manifest import Manifest
from pipeline.report import render_report
from pipeline.runtimes import onnxruntime_providers
from targets import TARGETS

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def manifest(finished_run: Path) -> Manifest:
    return Manifest.load(finished_run / "manifest.json")


def expected_pairs() -> set[tuple[str, str, str]]:
    """(artifact, runtime, provider) for the teacher, the student and each target on each runtime."""
    pairs = {("teacher", "pytorch", "CPU"), ("student", "pytorch", "CPU")}
    for name in TARGETS:
        if TARGETS.get(name).format == "onnx":
            pairs |= {(name, "onnxruntime", p.removesuffix("ExecutionProvider")) for p in onnxruntime_providers()}
        else:
            pairs.add((name, "tflite", "XNNPACK"))
    return pairs


def test_one_measurement_per_artifact_and_runtime(manifest: Manifest) -> None:
    """Every artifact × runtime is measured exactly once; nothing but an absent CUDA provider is skipped."""
    got = [(m.artifact, m.runtime, m.provider) for m in manifest.measurements]
    assert len(got) == len(set(got))
    assert set(got) == expected_pairs()
    unexpected = [s for s in manifest.skipped if "CUDA" not in s.runtime]
    assert unexpected == []


def test_measurement_figures_are_sane(manifest: Manifest) -> None:
    """Accuracy and agreement lie in [0, 100], percentiles are ordered, runs meet the configured minimum."""
    bench = manifest.config["bench"]
    for m in manifest.measurements:
        assert 0 <= m.accuracy <= 100 and 0 <= m.agreement <= 100
        for stats in (m.latency, m.throughput):
            assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms
            assert stats.mean_ms > 0 and stats.stdev_ms >= 0
        assert m.latency.batch == 1 and m.latency.runs >= bench["min_runs"]
        assert m.throughput.batch == bench["throughput_batch"]
        assert m.throughput_ips > 0 and m.threads >= 1


def test_teacher_agrees_with_itself(manifest: Manifest) -> None:
    """Agreement is measured against the teacher, so the teacher's own row is 100 %."""
    (teacher,) = [m for m in manifest.measurements if m.artifact == "teacher"]
    assert teacher.agreement == 100.0
    assert teacher.accuracy > 50


def test_float_artifacts_match_student_accuracy(manifest: Manifest) -> None:
    """Float exports score within one test sample of the student; int8 within 3 points."""
    test_size = manifest.data.test
    accuracy = {(m.artifact, m.provider): m.accuracy for m in manifest.measurements}
    student = accuracy[("student", "CPU")]
    for (name, _provider), value in accuracy.items():
        if name in TARGETS:
            slack = 3.0 if TARGETS.get(name).precision == "int8" else 100 / test_size + 0.01
            assert abs(value - student) <= slack, f"{name}: {value} vs student {student}"


def test_report_has_one_row_per_measurement(finished_run: Path, manifest: Manifest) -> None:
    """report.md is the manifest rendered: a table row for each measurement, nothing more."""
    text = (finished_run / "report.md").read_text()
    assert text == render_report(manifest)
    table = text[text.index("| artifact | runtime") :].split("\n\n")[0].splitlines()[2:]
    assert len(table) == len(manifest.measurements)
    for row, m in zip(table, manifest.measurements):
        assert row.startswith(f"| {m.artifact} | {m.runtime} ({m.provider},")
        assert f"| {m.accuracy:.2f} |" in row
    assert f"test {manifest.data.test}" in text


def test_report_int8_section(finished_run: Path, manifest: Manifest) -> None:
    """Each int8 artifact has a row naming its calibration method, its drop vs the fp32 student and its worst
    layers; the onnxruntime-defaults reference is compared with onnx-int8."""
    text = (finished_run / "report.md").read_text()
    section = text[text.index("## int8") :]
    int8 = [r for r in manifest.artifacts.values() if r.stage == "export" and r.info["precision"] == "int8"]
    assert {"onnx-int8", "tflite-int8", "onnx-int8-ort-defaults"} <= {r.name for r in int8}
    for record in int8:
        (row,) = [line for line in section.splitlines() if line.startswith(f"| {record.name} |")]
        if record.name != "onnx-int8-ort-defaults":
            assert f"| {record.info['calibration_method']} |" in row
            worst = record.info["worst_layers"][0]
            assert f"`{worst['node'].split(';')[0]}` ({worst['op']}) {worst['sqnr_db']:.1f} dB" in row
    assert "onnx-int8 vs onnxruntime `quantize_static` with its defaults" in section


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime has CUDA here, so nothing is skipped")
def test_report_mentions_skipped_cuda(finished_run: Path, manifest: Manifest) -> None:
    """Without CUDA in onnxruntime the run records and reports the CUDA provider as not measured."""
    (skip,) = [s for s in manifest.skipped if "CUDA" in s.runtime]
    assert skip.runtime == "onnxruntime CUDAExecutionProvider"
    text = (finished_run / "report.md").read_text()
    assert "Not measured:" in text
    assert "CUDAExecutionProvider" in text and "onnxruntime-gpu" in text


def test_report_without_measurements(manifest: Manifest) -> None:
    """A manifest with no bench results renders a report that says to run bench."""
    bare = manifest.model_copy(update={"measurements": [], "skipped": []})
    text = render_report(bare)
    assert "No measurements yet" in text
    assert "| artifact |" not in text


@pytest.mark.cuda
def test_cuda_session_runs(finished_run: Path, manifest: Manifest) -> None:
    """On a CUDA machine onnxruntime really runs onnx-fp32 on the GPU and matches the CPU result."""
    if not HAS_CUDA:
        pytest.skip(
            "CUDAExecutionProvider is not available in the installed onnxruntime "
            f"(providers: {ort.get_available_providers()}); install onnxruntime-gpu on a GPU machine"
        )
    path = str(finished_run / manifest.artifacts["onnx-fp32"].path)
    session = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    gpu = session.run(None, {session.get_inputs()[0].name: x})[0]
    cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(gpu, cpu, atol=1e-3, rtol=1e-3)
    assert any(m.provider == "CUDA" for m in manifest.measurements)
