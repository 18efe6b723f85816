"""Bench and report: one measurement per artifact × runtime, sane figures, one report row each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.config import BenchConfig
from pipeline.manifest import Manifest
from pipeline.measure.machine_load import usable_cores
from pipeline.measure.runtimes import onnxruntime_providers
from pipeline.report.markdown import render_report
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
            pairs |= {(name, "tflite", "XNNPACK"), (name, "onnxruntime via tf2onnx", "CPU")}
    return pairs


def test_one_measurement_per_artifact_and_runtime(manifest: Manifest) -> None:
    """Every artifact × runtime is measured exactly once; nothing but an absent CUDA provider is skipped."""
    got = [(m.artifact, m.runtime, m.provider) for m in manifest.measurements]
    assert len(got) == len(set(got))
    assert set(got) == expected_pairs()
    unexpected = [s for s in manifest.skipped if "CUDA" not in s.runtime]
    assert unexpected == []


def test_every_batch_and_thread_count_is_timed(manifest: Manifest) -> None:
    """Each row holds one timing per configured batch size × thread count (PyTorch's capped at the idle cores of
    bench start, saying so), timed in rounds whose p50s' median is the p50; percentiles ordered, runs at the
    configured minimum, throughput and GMAC/s derived from the p50; the headline is batch 1 at 1 thread."""
    bench = BenchConfig(**manifest.config["bench"])
    assert bench.thread_counts() == sorted({1, usable_cores()})
    idle = manifest.bench_load.before.idle_cores
    for m in manifest.measurements:
        assert 0 <= m.accuracy <= 100 and 0 <= m.agreement <= 100
        counts = {min(t, idle) for t in bench.thread_counts()} if m.runtime == "pytorch" else bench.thread_counts()
        grid = {(b, t) for b in bench.batches() for t in counts}
        assert {(t.latency.batch, t.threads) for t in m.timings} == grid and len(m.timings) == len(grid)
        capped = [t for t in bench.thread_counts() if t > idle] if m.runtime == "pytorch" else []
        assert (m.thread_cap.requested if m.thread_cap else []) == capped
        for t in m.timings:
            stats = t.latency
            assert 0 < stats.p50_ms <= stats.p99_ms and stats.p90_ms <= stats.p99_ms
            assert stats.mean_ms > 0 and stats.stdev_ms >= 0 and stats.runs >= bench.min_runs
            assert stats.rounds == bench.rounds == len(stats.round_p50_ms)
            assert stats.p50_ms == sorted(stats.round_p50_ms)[bench.rounds // 2]  # 5 rounds: the middle one
            assert stats.spread >= 0 and (stats.remeasured or not stats.noisy)
            assert t.throughput_ips == round(stats.batch * 1000 / stats.p50_ms, 1)
            assert t.gmac_per_s == pytest.approx(m.macs * stats.batch / stats.p50_ms / 1e6, rel=1e-2)
        assert m.latency.batch == 1 and m.threads == 1
        assert m.load_ms > 0 and m.first_call_ms > 0


def test_bench_load_is_recorded(manifest: Manifest) -> None:
    """The load facts before and after the bench, with the usable cores of this process."""
    load = manifest.bench_load
    assert load.before.usable_cores == load.after.usable_cores == usable_cores()
    assert 1 <= load.before.idle_cores <= load.before.usable_cores
    assert load.before.time <= load.after.time and load.warnings == []


def test_footprint(manifest: Manifest) -> None:
    """File size, parameters, MACs and memory of a fresh process are recorded for every row; the MACs of one
    network agree across its forms (PyTorch counts no bias adds, so within 2 %)."""
    rows = {(m.artifact, m.runtime): m for m in manifest.measurements}
    for m in manifest.measurements:
        assert m.file_bytes > 0 and m.params > 0 and m.macs > 0
        if m.runtime != "onnxruntime via tf2onnx":
            assert m.peak_rss_mib > m.runtime_rss_mib > 10
    fp32 = rows["onnx-fp32", "onnxruntime"]
    assert fp32.file_bytes == manifest.artifacts["onnx-fp32"].bytes
    for artifact, runtime in rows:
        if artifact != "teacher":
            assert rows[artifact, runtime].macs == pytest.approx(fp32.macs, rel=0.02), (artifact, runtime)
    assert rows["onnx-int8", "onnxruntime"].macs == fp32.macs
    for name in ("tflite-fp32", "tflite-fp16", "tflite-int8"):  # counted on the TFLite file's own graph
        assert rows[name, "tflite"].macs == fp32.macs, name
    assert all(m.unmeasured == {} for m in manifest.measurements)
    assert rows["teacher", "pytorch"].macs > 2 * rows["student", "pytorch"].macs


def test_tflite_on_onnxruntime_matches_the_interpreter(manifest: Manifest) -> None:
    """Each TFLite file converted by tf2onnx runs on onnxruntime with the interpreter's predictions."""
    converted = [m for m in manifest.measurements if m.runtime == "onnxruntime via tf2onnx"]
    assert {m.artifact for m in converted} == {n for n in TARGETS if TARGETS.get(n).format == "tflite"}
    for m in converted:
        assert "TFLite interpreter" in m.parity.reference
        assert m.parity.top1_agreement >= 99.0, m.artifact
        if TARGETS.get(m.artifact).precision != "int8":
            assert m.parity.max_abs_diff < 1e-3, m.artifact


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
    """Each int8 artifact has a row naming its calibration method and settings, its int8 share of MACs, its drop
    vs the fp32 student, whether it is within budget and its worst layers; the onnxruntime-defaults reference is
    compared with onnx-int8."""
    text = (finished_run / "report.md").read_text()
    section = text[text.index("## int8") : text.index("## Latency")]
    int8 = [r for r in manifest.artifacts.values() if r.stage == "export" and r.info["precision"] == "int8"]
    assert {"onnx-int8", "tflite-int8", "onnx-int8-ort-defaults"} <= {r.name for r in int8}
    for record in int8:
        (row,) = [line for line in section.splitlines() if line.startswith(f"| {record.name} |")]
        share = record.info["int8_share"]
        assert f"| {share['macs']:.0%} ({share['weight_bytes']:.0%}) |" in row
        if record.name != "onnx-int8-ort-defaults":
            assert f"| {record.info['calibration_method']}" in row
            assert ("| within |" in row) == (record.info["over_budget"] is None)
            for worst in record.info["worst_layers"][:1]:  # ranked only when the fallback ran
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


def _noisy_headline(m, spread: float = 0.4):
    """``m`` with its headline timing marked noisy at ``spread``."""
    headline = m.headline
    stats = headline.latency.model_copy(update={"noisy": True, "remeasured": True, "spread": spread})
    timings = [t.model_copy(update={"latency": stats}) if t is headline else t for t in m.timings]
    return m.model_copy(update={"timings": timings})


def test_report_marks_noisy_figures_and_the_load(manifest: Manifest) -> None:
    """A noisy headline p50 is marked in the main and latency tables and named in the load line; the caption says
    the headline is 1 thread and what noisy means; load and first call are in the footprint table."""
    from pipeline.report.sections import (
        FOOTPRINT_HEADER,
        MAIN_HEADER,
        TIMING_HEADER,
        bench_load_bullets,
        footprint_rows,
        main_caption,
        main_cells,
        timing_rows,
    )

    measurements = [_noisy_headline(m) if m.artifact == "onnx-int8" else m for m in manifest.measurements]
    noisy = manifest.model_copy(update={"measurements": measurements})
    (m,) = [m for m in measurements if m.artifact == "onnx-int8"]
    teacher = measurements[0]
    cells = dict(zip(MAIN_HEADER, main_cells(m, teacher, None)))
    assert cells["p50 ms"] == f"{m.latency.p50_ms:.3f} (noisy: spread 40 %)"
    assert cells["speed-up"] == f"{teacher.timing(1, 1).latency.p50_ms / m.latency.p50_ms:.2f}×"
    rows = [dict(zip(TIMING_HEADER, row)) for row in timing_rows([m])]
    assert rows[0]["p50 ms"].endswith("(noisy: spread 40 %)") and rows[0]["spread"] == "40 %"
    (load, *_) = bench_load_bullets(noisy)
    assert load.startswith("bench load: load average ") and "onnx-int8 on onnxruntime (batch 1, 1 thr)" in load
    caption = main_caption(noisy)
    assert "batch 1 at 1 thread" in caption and "noisy: the p50s of its timing rounds" in caption
    footprint = dict(zip(FOOTPRINT_HEADER, footprint_rows([m])[0]))
    assert footprint["load ms"] == f"{m.load_ms:.1f}" and footprint["first call ms"] == f"{m.first_call_ms:.2f}"


def test_capped_pytorch_rows_and_thread_warnings_are_reported(manifest: Manifest) -> None:
    from pipeline.manifest import ThreadCap
    from pipeline.report.sections import bench_load_bullets

    cap = ThreadCap(requested=[2], cap=1, reason="1 core(s) idle at bench start; pytorch: spins")
    measurements = [
        m.model_copy(update={"thread_cap": cap if m.runtime == "pytorch" else None}) for m in manifest.measurements
    ]
    load = manifest.bench_load.model_copy(update={"warnings": ["8 thread(s) exceed the 2 core(s)"]})
    bullets = bench_load_bullets(manifest.model_copy(update={"measurements": measurements, "bench_load": load}))
    assert bullets[1:] == [
        "teacher, student on pytorch: not timed at 2 thread(s): 1 core(s) idle at bench start; pytorch: spins",
        "warning: 8 thread(s) exceed the 2 core(s)",
    ]
    assert bench_load_bullets(manifest.model_copy(update={"bench_load": None})) == []
