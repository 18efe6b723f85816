"""Latency measurement: warm-up, then timed calls until both a minimum count and a minimum time are met; several
ways of running one batch (thread counts) timed in interleaved rounds, so that load on the machine hits them alike.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, TypeVar

import numpy as np

from pipeline.manifest import LatencyStats

Key = TypeVar("Key", bound=Hashable)


def _nothing() -> None:
    return None


@dataclass
class Contender:
    """One way to run a pre-built batch, timed in turns with others. ``enter`` makes its process-wide settings
    current (torch's thread count) before each window of calls, outside the timed region."""

    call: Callable[[], object]
    enter: Callable[[], None] = _nothing


def timed_window(call: Callable[[], object], min_runs: int, min_seconds: float) -> list[float]:
    """Milliseconds of each call of ``call``, timed until both ``min_runs`` calls and ``min_seconds`` have passed."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        call()
        times.append((time.perf_counter() - begin) * 1000)
    return times


def latency_stats(batch: int, rounds: list[list[float]]) -> LatencyStats:
    """Summary of per-call milliseconds grouped in rounds: p50 = median of the round p50s, spread = (max - min) /
    median of them; p90, p99, mean and stdev over every call."""
    ms = np.concatenate([np.asarray(r, dtype=float) for r in rounds])
    round_p50s = [float(np.percentile(r, 50)) for r in rounds]
    p50 = statistics.median(round_p50s)
    return LatencyStats(
        batch=batch,
        runs=len(ms),
        p50_ms=round(p50, 4),
        p90_ms=round(float(np.percentile(ms, 90)), 4),
        p99_ms=round(float(np.percentile(ms, 99)), 4),
        mean_ms=round(float(ms.mean()), 4),
        stdev_ms=round(float(ms.std()), 4),
        rounds=len(rounds),
        round_p50_ms=[round(v, 4) for v in round_p50s],
        spread=round((max(round_p50s) - min(round_p50s)) / p50, 4) if p50 > 0 else 0.0,
    )


def measure_latency(
    call: Callable[[], object], batch: int, warmup: int, min_runs: int, min_seconds: float
) -> LatencyStats:
    """Time ``call`` (inputs already built) in one round and summarise the per-call milliseconds."""
    for _ in range(warmup):
        call()
    return latency_stats(batch, [timed_window(call, min_runs, min_seconds)])


def _rounds(
    contenders: Mapping[Key, Contender], rounds: int, min_runs: int, min_seconds: float
) -> dict[Key, list[list[float]]]:
    """Per contender, the call times of each round. In every round each contender, after ``enter`` and one untimed
    call (the switch settles), is timed for ``ceil(min_runs / rounds)`` calls and ``min_seconds / rounds``; the
    order is reversed every other round, so none always goes first."""
    runs, seconds = math.ceil(min_runs / rounds), min_seconds / rounds
    times: dict[Key, list[list[float]]] = {key: [] for key in contenders}
    order = list(contenders)
    for index in range(rounds):
        for key in order if index % 2 == 0 else order[::-1]:
            contender = contenders[key]
            contender.enter()
            contender.call()
            times[key].append(timed_window(contender.call, runs, seconds))
    return times


def measure_rounds(
    contenders: Mapping[Key, Contender],
    batch: int,
    warmup: int,
    min_runs: int,
    min_seconds: float,
    rounds: int,
    max_spread: float,
) -> dict[Key, LatencyStats]:
    """Time every contender (one pre-built batch each) in ``rounds`` interleaved rounds, ``min_runs`` calls and
    ``min_seconds`` split across them; ``warmup`` untimed calls each first.

    A contender whose round p50s spread beyond ``max_spread`` is timed again in fresh rounds (with the others that
    did); the fresh figures are kept, marked ``remeasured``, and ``noisy`` when they still spread too far."""
    for contender in contenders.values():
        contender.enter()
        for _ in range(warmup):
            contender.call()
    first = _rounds(contenders, rounds, min_runs, min_seconds)
    stats = {key: latency_stats(batch, times) for key, times in first.items()}
    unsteady = {key: contenders[key] for key, s in stats.items() if s.spread > max_spread}
    if unsteady:
        for key, times in _rounds(unsteady, rounds, min_runs, min_seconds).items():
            again = latency_stats(batch, times)
            stats[key] = again.model_copy(update={"remeasured": True, "noisy": again.spread > max_spread})
    return stats
