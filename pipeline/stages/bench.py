"""Stage 4: accuracy, agreement with the teacher (or, for a trained model shipped without one, with the model
itself), latency and footprint of every model on every runtime.

PyTorch runs the teacher and students; each exported file runs on its format's own runtime (``pipeline.formats``:
onnxruntime for ONNX files, CPU and CUDA when installed; the TFLite interpreter for TFLite files), and again through
its format's cross-check (each TFLite file on onnxruntime through tf2onnx, with its parity). Each row stands on its
own runtime: a TFLite file's parameters and MACs come from its own graph, so a file that tf2onnx
cannot convert loses only its tf2onnx row (skipped, with the reason)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline import progress as view
from pipeline.converter_log import captured_output
from pipeline.environment import TF2ONNX_TOOLS, tool_versions
from pipeline.errors import DataError, failure_reason
from pipeline.formats import FORMATS, all_formats, format_labelled
from pipeline.io import hash_json
from pipeline.manifest import PRUNED_STUDENT, ArtifactRecord, BenchLoad, Measurement, Skipped, is_baseline
from pipeline.measure.format_plan import format_plan, format_probe
from pipeline.measure.harness import Plan, measure_plan
from pipeline.measure.machine_load import load_snapshot, threads_warning
from pipeline.measure.memory_probe import ProbeSpec
from pipeline.measure.model_profile import onnx_profile, torch_profile
from pipeline.measure.runtimes import torch_runner, torch_threads_kept
from pipeline.measure.tflite_onnx import parity as tflite_parity
from pipeline.measure.tflite_onnx import tf2onnx_runner, tflite_to_onnx
from pipeline.rundir import RunDir
from pipeline.training.run_models import load_model

TF2ONNX_RUNTIME = "onnxruntime via tf2onnx"
SHIPPED_SOURCES = ("student", PRUNED_STUDENT)  # students whose float files ship (a QAT-KD student's do not)


def _torch_plan(run: RunDir, name: str) -> Plan:
    """A model of the run on PyTorch, loaded from its checkpoint by the first runner (that is the load time), and
    never timed at more threads than idle cores."""
    model = functools.cache(lambda: load_model(run, name))
    record = run.require(name)
    shape = tuple(run.splits.test.x.shape[1:])
    return Plan(
        artifact=name,
        runtime="pytorch",
        make_runner=lambda threads: torch_runner(model(), threads),
        file_bytes=lambda: record.bytes,
        profile=lambda: torch_profile(model(), shape),
        probe=ProbeSpec(kind="torch", input_shape=list(shape), run_dir=str(run.root.resolve()), name=name),
        idle_cores_only=True,
    )


def _teacher_file_plan(run: RunDir, shape: list[int]) -> Plan:
    """A teacher file of another framework on its own runtime, fed the run's test split through its own
    normalization; a file of a ``FORMATS`` format gets its parameter/MAC count and (when laid out as the format's
    runner feeds it) a memory probe, a Keras or SavedModel teacher neither."""
    teacher, record = load_model(run, "teacher"), run.require("teacher")
    interface, path = teacher.interface, run.path(record.path)
    fmt = format_labelled(interface.format)
    probe, profile = None, None
    if fmt is not None:
        profile = (lambda: fmt.profile(path)) if fmt.profile else None
        if interface.layout == fmt.layout:
            probe = format_probe(fmt, path, [interface.input], [interface.output], shape, fmt.cpu_provider)
    return Plan(
        artifact="teacher",
        runtime=interface.runtime,
        make_runner=teacher.runner,
        file_bytes=lambda: record.bytes,
        profile=profile,
        probe=probe,
    )


def _format_plans(run: RunDir, record: ArtifactRecord, shape: list[int]) -> list[Plan]:
    """An exported file on its format's runtime, one plan per provider, then the format's cross-check if any."""
    fmt = FORMATS.get(record.info["format"])
    path = run.path(record.path)
    plans = [
        format_plan(fmt, record.name, path, record.inputs, record.outputs, shape, provider, lambda: record.bytes)
        for provider in fmt.bench_providers()
    ]
    return plans + (CROSS_CHECKS[fmt.cross_check](run, record, shape) if fmt.cross_check else [])


def converted_path(run: RunDir, record: ArtifactRecord) -> Path:
    """Where the tf2onnx conversion of a TFLite artifact is cached: keyed by its content and tf2onnx's versions."""
    key = hash_json({"tflite": record.sha256, "tools": tool_versions(TF2ONNX_TOOLS)})
    return run.path(f"work/tf2onnx/{record.name}-{key}.onnx")


def converted_tflite(run: RunDir, record: ArtifactRecord) -> Path:
    """The tf2onnx conversion of a TFLite artifact, made once per file content."""
    path = converted_path(run, record)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tflite_to_onnx(run.path(record.path), path)
    return path


def _tf2onnx_plans(run: RunDir, record: ArtifactRecord, shape: list[int]) -> list[Plan]:
    """A TFLite artifact converted by tf2onnx, on onnxruntime's CPU provider (fed as the TFLite file is)."""
    specs = {"inputs": record.inputs, "outputs": record.outputs}

    def converted() -> Path:
        return converted_tflite(run, record)

    onnx = Plan(
        artifact=record.name,
        runtime=TF2ONNX_RUNTIME,
        make_runner=lambda threads: tf2onnx_runner(converted(), record.inputs, record.outputs, threads),
        file_bytes=lambda: converted().stat().st_size,
        profile=lambda: onnx_profile(converted()),
        probe=ProbeSpec(kind="tf2onnx", path=str(converted_path(run, record)), input_shape=shape, **specs),
    )
    return [onnx]


# Conversions bench measures a file through besides its own runtime, by name (``Format.cross_check``): each gives
# plans whose rows are renamed and get their parity with the file's first plan (see ``_converted``).
CROSS_CHECKS: dict[str, Callable[[RunDir, ArtifactRecord, list[int]], list[Plan]]] = {"tf2onnx": _tf2onnx_plans}


def _model_entry(run: RunDir, name: str, shape: list[int]) -> tuple[str, str, Callable[[], list[Plan]]]:
    """A model of the run on PyTorch, or a teacher file of another framework on its own runtime."""
    record = run.manifest.artifacts.get(name)
    if record is not None and record.info.get("kind") == "file":
        return name, record.info["interface"]["runtime"], lambda: [_teacher_file_plan(run, shape)]
    return name, "pytorch", lambda: [_torch_plan(run, name)]


def _reference_is_student(run: RunDir) -> bool:
    """The teacher record is the shipped student itself (``distill: null`` without a teacher): measured once.

    Raises:
        RunStateError: the run has no teacher yet (its hint names the command that makes it)."""
    return run.require("teacher").info.get("same_model_as") == "student"


def _plans(run: RunDir) -> list[tuple[str, str, Callable[[], list[Plan]]]]:
    """(artifact, runtime, plan factory) for the teacher, the students (every baseline among them) and every
    exported artifact."""
    shape = list(run.splits.test.x.shape[1:])
    names = ["teacher", "student"] + [name for name in run.manifest.artifacts if is_baseline(name)]
    if _reference_is_student(run):
        names.remove("teacher")  # the student's rows stand for it (see run_bench)
    if run.shipped_student() == PRUNED_STUDENT:
        names.insert(2, PRUNED_STUDENT)  # beside the unpruned student it came from
    plans = [_model_entry(run, name, shape) for name in names]
    for record in run.manifest.artifacts.values():
        if record.stage != "export" or (
            record.info.get("source", "student") not in SHIPPED_SOURCES and record.info["precision"] != "int8"
        ):
            continue  # a QAT-KD student's float files are only steps towards its int8 ones
        runtime = FORMATS.get(record.info["format"]).runtime
        plans.append((record.name, runtime, lambda r=record: _format_plans(run, r, shape)))
    return plans


def _converted(measurement: Measurement, interpreter_logits: np.ndarray | None, logits: np.ndarray) -> Measurement:
    """A tf2onnx row: named as such, with its parity against the interpreter when that row was measured."""
    label = f"{measurement.artifact} on the TFLite interpreter"
    parity = tflite_parity(interpreter_logits, logits, label) if interpreter_logits is not None else None
    return measurement.model_copy(update={"runtime": TF2ONNX_RUNTIME, "parity": parity})


@torch_threads_kept()  # a training later in this process keeps the thread count it had (its bytes depend on it)
def run_bench(run: RunDir) -> list[Measurement]:
    """Measure every model on the test split; a runtime that fails is recorded as skipped with its reason.

    When the reference is the student itself, its PyTorch row is measured once and recorded for both names.
    The machine's load before and after goes to the manifest's ``bench_load`` (with a warning for thread counts
    above the usable cores); the cores idle at the start cap the thread counts of PyTorch rows.

    Raises:
        DataError: a test image does not decode (the data's fault, not a row of any artifact: the stage ends).
    """
    cfg = run.config.bench
    self_reference = _reference_is_student(run)
    splits = run.splits
    x_test, y_test = splits.normalize(splits.test.x), splits.test.y
    teacher_top1 = None
    measurements, skipped = [], []
    groups = _plans(run)
    before = load_snapshot()  # its idle cores cap PyTorch's thread counts for the whole stage
    warning = threads_warning(cfg.thread_counts(), before.usable_cores)
    if warning:
        view.warn(f"edgepipe: warning: {warning}")
    # runtimes' first-use banners (TFLite's XNNPACK line) and converter chatter go to the run's log
    with view.task("bench", total=len(groups)) as bar, captured_output(run.path("logs/bench.log")):
        for name, runtime, make_plans in groups:
            bar.update(name)
            said = {id(row) for row in (*measurements, *skipped)}
            try:
                plans = make_plans()
            except DataError:
                raise
            except Exception as e:
                skipped.append(Skipped(artifact=name, runtime=runtime, reason=failure_reason(e)))
                bar.advance()
                _say_rows(said, [*measurements, *skipped])
                continue
            logits_of: dict[str, np.ndarray] = {}
            for plan in plans:
                bar.update(plan.label)
                try:
                    measurement, logits = measure_plan(plan, x_test, y_test, teacher_top1, cfg, before.idle_cores)
                except DataError:  # a test image that does not decode is the data's fault: it ends the stage
                    raise
                except Exception as e:
                    skipped.append(Skipped(artifact=plan.artifact, runtime=plan.runtime, reason=failure_reason(e)))
                    continue
                if teacher_top1 is None:
                    teacher_top1 = logits.argmax(1)
                    measurement = measurement.model_copy(update={"agreement": 100.0})
                if plan.runtime == TF2ONNX_RUNTIME:  # against the file's own runtime, its first plan
                    measurement = _converted(measurement, logits_of.get(plans[0].runtime), logits)
                measurement = measurement.model_copy(update={"sha256": run.manifest.artifacts[name].sha256})
                logits_of[plan.runtime] = logits
                measurements.append(measurement)
                if self_reference and name == "student":
                    measurements.insert(0, measurement.model_copy(update={"artifact": "teacher"}))
            bar.advance()
            _say_rows(said, [*measurements, *skipped])  # after the step, so its ETA counts this artifact as done
    skipped += _absent_providers()
    run.manifest.measurements = measurements
    run.manifest.skipped = skipped
    run.manifest.bench_load = BenchLoad(before=before, after=load_snapshot(), warnings=[warning] if warning else [])
    run.save()
    return measurements


def _absent_providers() -> list[Skipped]:
    """A skipped row ``<format>-*`` for each provider a format's runtime lacks on this machine (onnxruntime's CUDA)."""
    return [
        Skipped(artifact=f"{fmt.name}-*", runtime=fmt.plan_runtime(provider), reason=reason)
        for fmt in all_formats()
        if fmt.absent_providers
        for provider, reason in fmt.absent_providers().items()
    ]


def _say_rows(said: set[int], rows: list[Measurement | Skipped]) -> None:
    """One progress line per row not in ``said`` (ids of the rows there before): its top-1 and headline p50 (batch
    1, 1 thread), or why it was skipped."""
    for row in rows:
        if id(row) in said:
            continue
        if isinstance(row, Skipped):
            view.log(f"{row.artifact} on {row.runtime}: skipped ({row.reason})")
            continue
        p50 = next((t.latency.p50_ms for t in row.timings if t.latency.batch == 1 and t.threads == 1), None)
        latency = f", p50 {p50:.3g} ms (batch 1, 1 thread)" if p50 is not None else ""
        view.log(f"{row.artifact} on {row.runtime}: top-1 {row.accuracy:.2f} %{latency}")
