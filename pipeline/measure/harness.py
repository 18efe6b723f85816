"""One model on one runtime, measured: load time and first call, accuracy over a labelled set, latency at every
configured batch size × thread count (the thread counts of a batch timed in interleaved rounds), and footprint
(file size, parameters, MACs, peak memory of a fresh process)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.config import BenchConfig
from pipeline.errors import failure_reason
from pipeline.manifest import LatencyStats, Measurement, ThreadCap, Timing
from pipeline.measure.machine_load import usable_cores
from pipeline.measure.memory_probe import MemoryUse, ProbeSpec, probe_memory
from pipeline.measure.model_profile import ModelProfile
from pipeline.measure.runtimes import Runner
from pipeline.measure.timing import Contender, measure_rounds

SPIN_REASON = "its intra-op threads spin-wait for a descheduled peer, so more threads than idle cores run far slower"


@dataclass
class Plan:
    """How to measure one artifact on one runtime. ``make_runner`` builds a runner for a thread count (the first
    one built, at 1 thread, is timed as the load). ``idle_cores_only``: never time more threads than idle cores."""

    artifact: str
    runtime: str
    make_runner: Callable[[int], Runner]
    file_bytes: Callable[[], int] | None = None
    profile: Callable[[], ModelProfile] | None = None
    probe: ProbeSpec | None = None
    idle_cores_only: bool = False

    @property
    def label(self) -> str:
        return f"{self.artifact} on {self.runtime}"


def predict_all(runner: Runner, x: np.ndarray, batch: int) -> np.ndarray:
    """Logits of every sample, ``batch`` at a time."""
    return np.concatenate([runner.predict(x[i : i + batch]) for i in range(0, len(x), batch)])


def batch_of(x: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` samples, repeated when there are fewer."""
    return np.resize(x, (size, *x.shape[1:])) if len(x) < size else x[:size]


def timing(threads: int, stats: LatencyStats, macs: int | None) -> Timing:
    """A timing with what its p50 implies: images/s (to 0.1) and GMAC/s (4 significant digits)."""
    batch, p50 = stats.batch, stats.p50_ms
    return Timing(
        threads=threads,
        latency=stats,
        throughput_ips=round(batch * 1000 / p50, 1),
        gmac_per_s=float(f"{macs * batch / p50 / 1e6:.4g}") if macs else None,
    )


def time_runners(runners: dict[int, Runner], x: np.ndarray, cfg: BenchConfig, macs: int | None) -> list[Timing]:
    """Latency at every configured batch size (inputs built before timing) and every thread count of ``runners``
    (keyed by it); per batch size the thread counts take turns in ``cfg.rounds`` interleaved rounds. Counts above
    the usable cores are timed after the others, in rounds of their own: their spinning pools would slow the
    calls interleaved with them."""
    usable = usable_cores()
    groups = [{t: r for t, r in runners.items() if t <= usable}, {t: r for t, r in runners.items() if t > usable}]
    timings = []
    for batch in cfg.batches():
        feed = batch_of(x, batch)
        for group in filter(None, groups):
            contenders = {t: Contender(runner.timed_call(feed), runner.enter) for t, runner in group.items()}
            stats = measure_rounds(
                contenders, batch, cfg.warmup, cfg.min_runs, cfg.min_seconds, cfg.rounds, cfg.max_spread
            )
            timings += [timing(threads, stats[threads], macs) for threads in contenders]
    return timings


def thread_counts(plan: Plan, cfg: BenchConfig, idle_cores: int | None) -> tuple[list[int], ThreadCap | None]:
    """The thread counts to time ``plan`` at (ascending, 1 first) and the cap that lowered them, if any: a plan
    with ``idle_cores_only`` is never timed at more threads than ``idle_cores`` (None: no cap)."""
    counts = cfg.thread_counts()
    over = [t for t in counts if idle_cores is not None and t > idle_cores] if plan.idle_cores_only else []
    if not over:
        return counts, None
    reason = f"{idle_cores} core(s) idle at bench start; {plan.runtime}: {SPIN_REASON}"
    cap = ThreadCap(requested=over, cap=idle_cores, reason=reason)
    return sorted({min(t, idle_cores) for t in counts}), cap


@dataclass
class Loaded:
    """The runners of one plan by the thread count they really use, and what the first one cost."""

    runners: dict[int, Runner]
    load_ms: float
    first_call_ms: float


def load_runners(plan: Plan, counts: list[int], x: np.ndarray) -> Loaded:
    """Build a runner per thread count; the first (``counts[0]``, 1 thread) is timed from nothing to a batch-1
    call ready (load) and through its first call. A runtime that fixes its thread pool at start-up (TensorFlow)
    gives one runner for the counts it cannot honour."""
    started = time.perf_counter()
    first = plan.make_runner(counts[0])
    call = first.timed_call(batch_of(x, 1))
    load_ms = (time.perf_counter() - started) * 1000
    first.enter()
    started = time.perf_counter()
    call()
    first_call_ms = (time.perf_counter() - started) * 1000
    runners = {first.threads: first}
    for threads in counts[1:]:
        runner = plan.make_runner(threads)
        runners.setdefault(runner.threads, runner)
    return Loaded(runners, round(load_ms, 3), round(first_call_ms, 3))


def _profile(plan: Plan, unmeasured: dict[str, str]) -> ModelProfile | None:
    """Parameters and MACs of ``plan``; None (each field's reason in ``unmeasured``) when they cannot be counted."""
    if plan.profile is None:
        reason = f"no parameter or MAC counter for {plan.runtime}"
        unmeasured.update(params=reason, macs=reason)
        return None
    try:
        return plan.profile()
    except Exception as e:  # a counter's failure costs these two fields, never the row
        unmeasured.update(params=failure_reason(e), macs=failure_reason(e))
        return None


def _memory(plan: Plan, threads: int, unmeasured: dict[str, str]) -> MemoryUse | None:
    """Memory of a fresh process running ``plan``; None (with the reason in ``unmeasured``) when the probe fails."""
    if plan.probe is None:
        reason = f"no memory probe for {plan.runtime} with this input layout"
    else:
        try:
            return probe_memory(plan.probe.model_copy(update={"threads": threads}))
        except Exception as e:  # the probe's failure costs the memory fields, never the row
            reason = failure_reason(e)
    unmeasured.update(peak_rss_mib=reason, runtime_rss_mib=reason)
    return None


def _file_bytes(plan: Plan, unmeasured: dict[str, str]) -> int | None:
    if plan.file_bytes is None:
        return None
    try:
        return plan.file_bytes()
    except OSError as e:
        unmeasured["file_bytes"] = failure_reason(e)
        return None


def measure_plan(
    plan: Plan,
    x: np.ndarray,
    y: np.ndarray,
    reference_top1: np.ndarray | None,
    cfg: BenchConfig,
    idle_cores: int | None = None,
) -> tuple[Measurement, np.ndarray]:
    """Measure ``plan``: load and first call (1 thread), accuracy (most threads), then timings at every thread count
    (``idle_cores``: the cap of an ``idle_cores_only`` plan); returns the logits too.

    A runner that cannot be built or run raises (the row cannot exist); a parameter/MAC count, file size or memory
    probe that fails leaves its field empty, with the reason in ``Measurement.unmeasured``."""
    unmeasured: dict[str, str] = {}
    file_bytes = _file_bytes(plan, unmeasured)  # first: a file made on demand (tf2onnx) is not part of the load time
    counts, cap = thread_counts(plan, cfg, idle_cores)
    loaded = load_runners(plan, counts, x)
    runners = loaded.runners
    profile = _profile(plan, unmeasured)
    macs = profile.macs if profile else None
    logits = predict_all(runners[max(runners)], x, cfg.eval_batch)
    timings = time_runners(runners, x, cfg, macs)
    memory = _memory(plan, max(runners), unmeasured) if cfg.memory else None
    top1 = logits.argmax(1)
    runner = runners[min(runners)]
    measurement = Measurement(
        artifact=plan.artifact,
        runtime=runner.runtime,
        provider=runner.provider,
        accuracy=round(float((top1 == y).mean() * 100), 2),
        agreement=round(float((top1 == reference_top1).mean() * 100), 2) if reference_top1 is not None else None,
        file_bytes=file_bytes,
        params=profile.params if profile else None,
        macs=macs,
        peak_rss_mib=memory.peak_mib if memory else None,
        runtime_rss_mib=memory.runtime_mib if memory else None,
        timings=sorted(timings, key=lambda t: (t.latency.batch, t.threads)),
        load_ms=loaded.load_ms,
        first_call_ms=loaded.first_call_ms,
        thread_cap=cap,
        unmeasured=unmeasured,
    )
    return measurement, logits
