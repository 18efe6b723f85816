"""Latency measurement: warm-up, then timed calls until both a minimum count and a minimum time are met."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from pipeline.manifest import LatencyStats


def measure_latency(
    call: Callable[[], object], batch: int, warmup: int, min_runs: int, min_seconds: float
) -> LatencyStats:
    """Time ``call`` (inputs already built) and summarise the per-call milliseconds."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        call()
        times.append((time.perf_counter() - begin) * 1000)
    ms = np.asarray(times)
    return LatencyStats(
        batch=batch,
        runs=len(ms),
        p50_ms=round(float(np.percentile(ms, 50)), 4),
        p90_ms=round(float(np.percentile(ms, 90)), 4),
        p99_ms=round(float(np.percentile(ms, 99)), 4),
        mean_ms=round(float(ms.mean()), 4),
        stdev_ms=round(float(ms.std()), 4),
    )
