"""What the prune stage measures of a student variant: the file it exports to through the real targets, the gzip'd
size of that file (what an app download sees), its validation accuracy on the target's runtime, and its p50."""

from __future__ import annotations

import gzip
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from pipeline.config import PruneMeasureConfig, RunConfig
from pipeline.formats import FORMATS
from pipeline.manifest import Preprocessing, TensorSpec
from pipeline.measure.harness import batch_of, predict_all
from pipeline.measure.runtimes import Runner
from pipeline.measure.timing import measure_latency
from targets import TARGETS, ExportInputs


@dataclass(frozen=True)
class BuiltFile:
    """One exported file of a student variant and how to feed it."""

    target: str
    path: Path
    format: str  # a FORMATS name
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def runner(self, threads: int) -> Runner:
        """A CPU runner on the format's own runtime (onnxruntime for ONNX files, XNNPACK for TFLite files)."""
        return FORMATS.get(self.format).cpu_runner(self.path, self.inputs, self.outputs, threads)


@dataclass(frozen=True)
class ExportContext:
    """What the targets need besides the model: the run's config, preprocessing, calibration and validation."""

    config: RunConfig
    preprocessing: Preprocessing
    calibration: object | None  # calibration.sampling.CalibrationSet, for int8 targets
    validation: tuple[np.ndarray, np.ndarray]


def export_chain(model: nn.Module, target: str, context: ExportContext, out_dir: Path) -> dict[str, BuiltFile]:
    """Export ``model`` to ``target`` through the target registry, building the targets it derives from first
    (e.g. onnx-fp32 before onnx-int8) into ``out_dir``; returns every file built, by target name."""
    chain = [target]
    while TARGETS.get(chain[-1]).parent != "student":
        chain.append(TARGETS.get(chain[-1]).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, BuiltFile] = {}
    parent_path = None
    for name in reversed(chain):
        spec = TARGETS.get(name)()
        path = out_dir / f"{name}{spec.suffix}"
        work_dir = out_dir / f"work-{name}"
        work_dir.mkdir(exist_ok=True)
        result = spec.export(
            ExportInputs(
                parent_path=parent_path or path,
                parent_sha256="",
                output_path=path,
                work_dir=work_dir,
                config=context.config,
                preprocessing=context.preprocessing,
                calibration=context.calibration if spec.needs_calibration else None,
                validation=context.validation if spec.needs_calibration else None,
                model=model if spec.parent == "student" else None,
            )
        )
        shutil.rmtree(work_dir, ignore_errors=True)
        built[name] = BuiltFile(name, path, spec.format, result.inputs, result.outputs)
        parent_path = path
    return built


def gzip_bytes(path: Path) -> int:
    """Size of the file gzip'd at level 9 (no name or time in the header): what a download of it costs."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def val_top1(built: BuiltFile, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 (percent) of the file on its own runtime over the validation split."""
    logits = predict_all(built.runner(1), x, 256)
    return round(float((logits.argmax(1) == y).mean() * 100), 2)


def p50_ms(runners: dict[str, Runner], x: np.ndarray, cfg: PruneMeasureConfig) -> dict[str, float]:
    """p50 latency (ms) of each runner on one pre-built batch of ``cfg.batch``; the runners take turns for
    ``cfg.rounds`` rounds and each gets the median of its rounds' p50s (load on the machine hits all alike)."""
    batch = batch_of(x, cfg.batch)
    calls: dict[str, Callable[[], object]] = {name: runner.timed_call(batch) for name, runner in runners.items()}
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(cfg.rounds):
        for name, call in calls.items():
            stats = measure_latency(call, cfg.batch, cfg.warmup, cfg.min_runs, cfg.min_seconds)
            rounds[name].append(stats.p50_ms)
    return {name: round(statistics.median(values), 4) for name, values in rounds.items()}
