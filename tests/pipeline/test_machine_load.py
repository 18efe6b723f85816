"""Thread counts from the machine's cores: a warning for more threads than usable cores, and training threads
chosen from the idle cores unless the config pins them."""

from __future__ import annotations

import pytest

import pipeline.measure.machine_load as machine_load
from pipeline.measure.machine_load import threads_warning, training_threads


def test_more_threads_than_usable_cores_is_a_warning() -> None:
    assert threads_warning([1, 2], usable=2) is None
    warning = threads_warning([1, 8, 4], usable=2)
    assert warning.startswith("4, 8 thread(s) exceed the 2 core(s) this process may use")
    assert "measured" in warning


def test_threads_warning_reads_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_load, "usable_cores", lambda: 1)
    assert "exceed the 1 core(s)" in threads_warning([1, 2])


def test_pinned_training_threads_are_kept() -> None:
    assert training_threads(3, current=1) == (3, "config")


@pytest.mark.parametrize(
    ("idle", "current", "processes", "expected"),
    [(1, 2, None, 1), (2, 2, None, 2), (4, 2, None, 2), (4, 8, "2", 2), (1, 8, "2", 1)],
)
def test_auto_training_threads_use_the_idle_cores(
    monkeypatch: pytest.MonkeyPatch, idle: int, current: int, processes: str | None, expected: int
) -> None:
    """auto: the idle cores shared among torchrun's local processes, at most torch's own count, at least 1."""
    monkeypatch.setattr(machine_load, "idle_cores", lambda: idle)
    monkeypatch.setattr(machine_load, "usable_cores", lambda: 8)
    if processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    threads, source = training_threads("auto", current)
    assert threads == expected
    assert source == f"auto: {idle} of 8 usable cores idle at the start"


def test_free_cores_may_be_zero_and_idle_cores_never_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule for both: a core half busy counts as busy; the report may say none is free, a thread count never."""
    assert [machine_load.free_cores(busy, 2) for busy in (0.0, 0.49, 0.5, 1.0, 2.0, 3.0)] == [2, 2, 1, 1, 0, 0]
    monkeypatch.setattr(machine_load, "usable_cores", lambda: 2)
    assert machine_load.idle_cores(2.0) == 1 and machine_load.idle_cores(0.5) == 1 and machine_load.idle_cores(0.0) == 2
