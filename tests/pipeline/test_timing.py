"""Timing in interleaved rounds (pipeline.measure.timing) and how a plan is timed (pipeline.measure.harness):
round medians, spread,
re-measure and noisy marks on a fake clock; thread counts capped at the idle cores; load and first call recorded;
torch's process-wide thread count switched with each runner."""

from __future__ import annotations

import itertools
import statistics

import numpy as np
import pytest

import pipeline.measure.harness as harness
import pipeline.measure.timing as timing
from pipeline.config import BenchConfig
from pipeline.measure.harness import Plan, measure_plan, thread_counts
from pipeline.measure.runtimes import Runner, torch_runner, torch_threads_kept
from pipeline.measure.timing import Contender, latency_stats, measure_rounds


class FakeClock:
    """``perf_counter`` that moves only when a fake call takes its time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def call(self, milliseconds) -> Contender:
        """A contender whose n-th call takes ``milliseconds(n)``."""
        counter = itertools.count()

        def run() -> None:
            self.now += milliseconds(next(counter)) / 1000

        return Contender(run)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", fake)
    return fake


def test_latency_stats_take_the_median_of_round_p50s_and_pool_the_rest() -> None:
    rounds = [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.5, 1.5, 9.0]]
    stats = latency_stats(4, rounds)
    assert stats.p50_ms == 1.5 and stats.round_p50_ms == [1.0, 2.0, 1.5]
    assert stats.spread == round((2.0 - 1.0) / 1.5, 4)
    assert stats.runs == 9 and stats.rounds == 3 and stats.batch == 4
    assert stats.mean_ms == round(float(np.mean(sum(rounds, []))), 4)
    assert stats.p99_ms == round(float(np.percentile(sum(rounds, []), 99)), 4)
    assert not stats.noisy and not stats.remeasured


def test_rounds_interleave_split_the_budget_and_alternate_the_order(clock: FakeClock) -> None:
    """Each round times every contender for ceil(min_runs / rounds) calls after one settling call; the order flips
    every other round; warm-up calls come first."""
    log: list[str] = []

    def contender(name: str) -> Contender:
        def call() -> None:
            log.append(name)
            clock.now += 0.001

        return Contender(call, enter=lambda: log.append(f"enter {name}"))

    stats = measure_rounds({"a": contender("a"), "b": contender("b")}, 1, 2, 7, 0, 3, 0.25)
    warmup = ["enter a", "a", "a", "enter b", "b", "b"]
    window = {name: [f"enter {name}", name, *[name] * 3] for name in "ab"}  # settle + ceil(7 / 3) calls
    assert log == warmup + window["a"] + window["b"] + window["b"] + window["a"] + window["a"] + window["b"]
    assert stats["a"].runs == stats["b"].runs == 9 and stats["a"].rounds == 3


def test_steady_rounds_are_kept(clock: FakeClock) -> None:
    stats = measure_rounds({"t1": clock.call(lambda n: 2.0)}, 1, 0, 5, 0, 5, 0.25)["t1"]
    assert stats.p50_ms == 2.0 and stats.spread == 0 and not stats.remeasured and not stats.noisy


def test_disagreeing_rounds_are_remeasured_once(clock: FakeClock) -> None:
    """Rounds 1 ms and 2 ms apart (spread ≥ 0.5 > 0.25) are timed again: steady fresh rounds replace them, unsteady
    ones are marked noisy; a steady contender beside them is not timed again."""
    first_five_unsteady = clock.call(lambda n: (1.0 if n % 4 < 2 else 2.0) if n < 10 else 3.0)
    always_unsteady = clock.call(lambda n: 1.0 if n % 4 < 2 else 2.0)
    steady_calls = itertools.count()
    steady = Contender(lambda: (next(steady_calls), setattr(clock, "now", clock.now + 0.001)))
    contenders = {"fixed": first_five_unsteady, "noisy": always_unsteady, "steady": steady}
    stats = measure_rounds(contenders, 1, 0, 5, 0, 5, 0.25)
    assert stats["fixed"].remeasured and not stats["fixed"].noisy and stats["fixed"].p50_ms == 3.0
    assert stats["noisy"].remeasured and stats["noisy"].noisy and stats["noisy"].spread == 0.5
    assert not stats["steady"].remeasured and next(steady_calls) == 10  # 5 rounds × (settle + 1 call)


def _fake_runner(threads: int) -> Runner:
    logits = np.eye(3, dtype=np.float32)
    return Runner("fake", "CPU", threads, lambda x: logits[: len(x)], lambda x: lambda: None)


def _plan(idle_cores_only: bool) -> Plan:
    return Plan(artifact="a", runtime="fake", make_runner=_fake_runner, idle_cores_only=idle_cores_only)


QUICK = {"warmup": 0, "min_runs": 2, "min_seconds": 0, "batch_sizes": [1], "rounds": 2, "memory": False}


@pytest.mark.parametrize(
    ("idle_cores_only", "idle", "timed", "requested"),
    [(True, 2, [1, 2], [4]), (True, 1, [1], [2, 4]), (True, 4, [1, 2, 4], None), (False, 1, [1, 2, 4], None)],
)
def test_spinning_runtimes_are_capped_at_the_idle_cores(idle_cores_only, idle, timed, requested) -> None:
    """A plan marked idle_cores_only (PyTorch) is timed at no more threads than idle cores, and says why."""
    cfg = BenchConfig(**QUICK, threads=[2, 4])
    counts, cap = thread_counts(_plan(idle_cores_only), cfg, idle)
    assert counts == timed
    assert (cap.requested if cap else None) == requested
    if cap:
        assert cap.cap == idle and f"{idle} core(s) idle" in cap.reason
    measurement, _ = measure_plan(
        _plan(idle_cores_only), np.zeros((3, 1, 2, 2), np.float32), np.arange(3), None, cfg, idle
    )
    assert [t.threads for t in measurement.timings] == timed
    assert measurement.thread_cap == cap


def test_one_thread_is_always_timed_and_all_means_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.measure.machine_load as machine_load

    monkeypatch.setattr(machine_load, "usable_cores", lambda: 3)
    assert BenchConfig(threads=["all"]).thread_counts() == [1, 3]
    assert BenchConfig(threads=[4]).thread_counts() == [1, 4]


def test_load_and_first_call_are_recorded_and_the_headline_is_one_thread() -> None:
    cfg = BenchConfig(**QUICK, threads=[1, 2])
    measurement, _ = measure_plan(_plan(False), np.zeros((3, 1, 2, 2), np.float32), np.arange(3), None, cfg)
    assert measurement.load_ms >= 0 and measurement.first_call_ms >= 0
    assert measurement.headline.threads == 1 and measurement.headline.latency.batch == 1
    for t in measurement.timings:
        assert t.latency.rounds == 2 and len(t.latency.round_p50_ms) == 2
        assert t.latency.p50_ms == pytest.approx(statistics.median(t.latency.round_p50_ms), abs=1e-4)


@torch_threads_kept()
def test_torch_runners_taking_turns_each_run_at_their_own_thread_count() -> None:
    """torch's thread count is process-wide: each runner's timed calls run at its own count, whichever ran last."""
    import torch

    seen: dict[int, set[int]] = {1: set(), 2: set()}

    class Probe(torch.nn.Module):
        def __init__(self, threads: int) -> None:
            super().__init__()
            self.threads = threads

        def forward(self, x):
            seen[self.threads].add(torch.get_num_threads())
            return x

    runners = {t: torch_runner(Probe(t), t) for t in (1, 2)}
    x = np.zeros((1, 1, 2, 2), np.float32)
    contenders = {t: Contender(r.timed_call(x), r.enter) for t, r in runners.items()}
    measure_rounds(contenders, 1, 1, 4, 0, 4, 10.0)
    assert seen == {1: {1}, 2: {2}}


def test_thread_counts_above_the_usable_cores_are_timed_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts the process has cores for take turns with each other; a count above them is timed after them, never
    between (its spinning pool would slow their calls)."""
    monkeypatch.setattr(harness, "usable_cores", lambda: 2)
    calls: list[int] = []

    def runner(threads: int) -> Runner:
        return Runner("fake", "CPU", threads, lambda x: x, lambda x: lambda: calls.append(threads))

    cfg = BenchConfig(batch_sizes=[1], threads=[1, 2, 8], warmup=0, min_runs=4, min_seconds=0, rounds=2)
    harness.time_runners({1: runner(1), 2: runner(2), 8: runner(8)}, np.zeros((1, 1, 2, 2), np.float32), cfg, None)
    first_eight = calls.index(8)
    assert set(calls[:first_eight]) == {1, 2} and set(calls[first_eight:]) == {8}
