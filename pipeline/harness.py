"""One model on one runtime, measured: accuracy over a labelled set, latency at every configured batch size ×
thread count, and footprint (file size, parameters, MACs, peak memory of a fresh process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.config import BenchConfig
from pipeline.errors import EdgepipeError
from pipeline.manifest import Measurement, Timing
from pipeline.memory_probe import MemoryUse, ProbeSpec, probe_memory
from pipeline.model_profile import ModelProfile
from pipeline.runtimes import Runner
from pipeline.timing import measure_latency


@dataclass
class Plan:
    """How to measure one artifact on one runtime. ``make_runner`` builds a runner for a thread count."""

    artifact: str
    runtime: str
    make_runner: Callable[[int], Runner]
    file_bytes: Callable[[], int] | None = None
    profile: Callable[[], ModelProfile] | None = None
    probe: ProbeSpec | None = None

    @property
    def label(self) -> str:
        return f"{self.artifact} on {self.runtime}"


def predict_all(runner: Runner, x: np.ndarray, batch: int) -> np.ndarray:
    """Logits of every sample, ``batch`` at a time."""
    return np.concatenate([runner.predict(x[i : i + batch]) for i in range(0, len(x), batch)])


def batch_of(x: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` samples, repeated when there are fewer."""
    return np.resize(x, (size, *x.shape[1:])) if len(x) < size else x[:size]


def time_runner(runner: Runner, x: np.ndarray, cfg: BenchConfig, macs: int | None) -> list[Timing]:
    """Latency of ``runner`` at every configured batch size (inputs built before timing)."""
    timings = []
    for batch in cfg.batches():
        stats = measure_latency(runner.timed_call(batch_of(x, batch)), batch, cfg.warmup, cfg.min_runs, cfg.min_seconds)
        seconds = stats.p50_ms / 1000
        timings.append(
            Timing(
                threads=runner.threads,
                latency=stats,
                throughput_ips=round(batch / seconds, 1),
                gmac_per_s=float(f"{macs * batch / seconds / 1e9:.4g}") if macs else None,
            )
        )
    return timings


def first_line(error: Exception) -> str:
    """Why a measurement failed, one line: the first line of the message (its type name when empty), and the hint
    of an edgepipe error."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    hint = error.hint if isinstance(error, EdgepipeError) else None
    return f"{line} (hint: {hint})" if hint else line


def _profile(plan: Plan, unmeasured: dict[str, str]) -> ModelProfile | None:
    """Parameters and MACs of ``plan``; None (each field's reason in ``unmeasured``) when they cannot be counted."""
    if plan.profile is None:
        reason = f"no parameter or MAC counter for {plan.runtime}"
        unmeasured.update(params=reason, macs=reason)
        return None
    try:
        return plan.profile()
    except Exception as e:  # a counter's failure costs these two fields, never the row
        unmeasured.update(params=first_line(e), macs=first_line(e))
        return None


def _memory(plan: Plan, threads: int, unmeasured: dict[str, str]) -> MemoryUse | None:
    """Memory of a fresh process running ``plan``; None (with the reason in ``unmeasured``) when the probe fails."""
    if plan.probe is None:
        reason = f"no memory probe for {plan.runtime} with this input layout"
    else:
        try:
            return probe_memory(plan.probe.model_copy(update={"threads": threads}))
        except Exception as e:  # the probe's failure costs the memory fields, never the row
            reason = first_line(e)
    unmeasured.update(peak_rss_mib=reason, runtime_rss_mib=reason)
    return None


def _file_bytes(plan: Plan, unmeasured: dict[str, str]) -> int | None:
    if plan.file_bytes is None:
        return None
    try:
        return plan.file_bytes()
    except OSError as e:
        unmeasured["file_bytes"] = first_line(e)
        return None


def measure_plan(
    plan: Plan, x: np.ndarray, y: np.ndarray, reference_top1: np.ndarray | None, cfg: BenchConfig
) -> tuple[Measurement, np.ndarray]:
    """Measure ``plan``: accuracy (most threads), then timings at every thread count; returns the logits too.

    A runner that cannot be built or run raises (the row cannot exist); a parameter/MAC count, file size or memory
    probe that fails leaves its field empty, with the reason in ``Measurement.unmeasured``."""
    unmeasured: dict[str, str] = {}
    profile = _profile(plan, unmeasured)
    macs = profile.macs if profile else None
    logits, timings = None, []
    for threads in reversed(cfg.thread_counts()):
        runner = plan.make_runner(threads)
        if logits is None:
            logits = predict_all(runner, x, cfg.eval_batch)
        if any(t.threads == runner.threads for t in timings):
            continue  # a runtime that fixes its thread pool at start-up (TensorFlow) ran this count already
        timings += time_runner(runner, x, cfg, macs)
    memory = _memory(plan, max(cfg.thread_counts()), unmeasured) if cfg.memory else None
    top1 = logits.argmax(1)
    measurement = Measurement(
        artifact=plan.artifact,
        runtime=runner.runtime,
        provider=runner.provider,
        accuracy=round(float((top1 == y).mean() * 100), 2),
        agreement=round(float((top1 == reference_top1).mean() * 100), 2) if reference_top1 is not None else None,
        file_bytes=_file_bytes(plan, unmeasured),
        params=profile.params if profile else None,
        macs=macs,
        peak_rss_mib=memory.peak_mib if memory else None,
        runtime_rss_mib=memory.runtime_mib if memory else None,
        timings=sorted(timings, key=lambda t: (t.latency.batch, t.threads)),
        unmeasured=unmeasured,
    )
    return measurement, logits
