"""Stage 4: accuracy, agreement with the teacher and latency of every model on every runtime (test split)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.distill import load_model, load_student, load_teacher
from pipeline.export import artifact_runner
from pipeline.manifest import Measurement, Skipped
from pipeline.progress import progress_bar
from pipeline.rundir import RunDir
from pipeline.runtimes import Runner, onnxruntime_providers, onnxruntime_runner, torch_runner
from pipeline.timing import measure_latency


def _runners(run: RunDir) -> list[tuple[str, str, Callable[[], Runner]]]:
    """(artifact name, runtime, runner factory) for the teacher, the student and every exported artifact."""
    threads = run.config.bench.threads
    plans = [
        ("teacher", "pytorch", lambda: torch_runner(load_teacher(run), threads)),
        ("student", "pytorch", lambda: torch_runner(load_student(run), threads)),
    ]
    if "baseline" in run.manifest.artifacts:
        plans.append(("baseline", "pytorch", lambda: torch_runner(load_model(run, "baseline"), threads)))
    for name, record in run.manifest.artifacts.items():
        if record.stage != "export" or (
            record.info.get("source", "student") != "student" and record.info["precision"] != "int8"
        ):
            continue  # a QAT-KD student's float files are only steps towards its int8 ones
        path = run.path(record.path)
        if record.info["format"] == "onnx":
            for provider in onnxruntime_providers():
                plans.append(
                    (name, f"onnxruntime {provider}", lambda p=path, pr=provider: onnxruntime_runner(p, pr, threads))
                )
        else:
            plans.append(
                (name, "tflite", lambda p=path, r=record: artifact_runner(p, "tflite", r.inputs, r.outputs, threads))
            )
    return plans


def _predict_all(runner: Runner, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runner.predict(x[i : i + batch]) for i in range(0, len(x), batch)])


def run_bench(run: RunDir) -> list[Measurement]:
    """Measure every model on the test split; a runtime that fails is recorded as skipped with its reason."""
    cfg = run.config.bench
    splits = run.splits
    x_test = splits.normalize(splits.test.x)
    teacher_top1 = None
    measurements, skipped = [], []
    plans = _runners(run)
    with progress_bar() as bar:
        task = bar.add_task("bench", total=len(plans), status="")
        for name, runtime, make_runner in plans:
            bar.update(task, status=name)
            try:
                runner = make_runner()
                top1 = _predict_all(runner, x_test, cfg.eval_batch).argmax(1)
            except Exception as e:
                skipped.append(Skipped(artifact=name, runtime=runtime, reason=str(e).strip().splitlines()[0]))
                bar.advance(task)
                continue
            if teacher_top1 is None:
                teacher_top1 = top1
            latency = measure_latency(runner.timed_call(x_test[:1]), 1, cfg.warmup, cfg.min_runs, cfg.min_seconds)
            batch = x_test[: cfg.throughput_batch]
            throughput = measure_latency(
                runner.timed_call(batch),
                len(batch),
                max(1, cfg.warmup // 5),
                max(5, cfg.min_runs // 10),
                cfg.min_seconds,
            )
            measurements.append(
                Measurement(
                    artifact=name,
                    runtime=runner.runtime,
                    provider=runner.provider,
                    threads=runner.threads,
                    accuracy=round(float((top1 == splits.test.y).mean() * 100), 2),
                    agreement=round(float((top1 == teacher_top1).mean() * 100), 2),
                    latency=latency,
                    throughput=throughput,
                    throughput_ips=round(len(batch) / (throughput.p50_ms / 1000), 1),
                )
            )
            bar.advance(task)
    if "CUDAExecutionProvider" not in onnxruntime_providers():
        skipped.append(
            Skipped(
                artifact="onnx-*",
                runtime="onnxruntime CUDAExecutionProvider",
                reason="the installed onnxruntime has no CUDA provider (install onnxruntime-gpu on a GPU machine)",
            )
        )
    run.manifest.measurements = measurements
    run.manifest.skipped = skipped
    run.save()
    return measurements
