"""Thread counts from the machine's cores: a warning for more threads than usable cores, training threads from
the usable cores (never the load) unless the config pins them, and libgomp's spin-wait bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.measure.machine_load as machine_load
from pipeline.measure.machine_load import threads_warning, training_threads
from pipeline.measure.openmp import OPENMP_SPIN_COUNT, bound_openmp_spin


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
    ("usable", "current", "processes", "expected"),
    [(1, 2, None, 1), (2, 2, None, 2), (4, 8, "2", 2), (1, 8, "2", 1)],
)
def test_auto_training_threads_use_the_usable_cores_whatever_the_load(
    monkeypatch: pytest.MonkeyPatch, usable: int, current: int, processes: str | None, expected: int
) -> None:
    """auto: the usable cores shared among torchrun's local processes, at most torch's own count, at least 1; the
    load is never read (the weights depend on the count: a busy machine trains the same student as a quiet one)."""

    def load_read() -> int:
        raise AssertionError("auto training threads must not depend on the machine's load")

    monkeypatch.setattr(machine_load, "idle_cores", load_read)
    monkeypatch.setattr(machine_load, "busy_cores", load_read)
    monkeypatch.setattr(machine_load, "usable_cores", lambda: usable)
    if processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    processes_text = f" for {processes} processes" if processes else ""
    assert training_threads("auto", current) == (expected, f"auto: {usable} usable cores{processes_text}")


def test_torchs_own_thread_count_caps_auto_and_the_record_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS=1 (torch's count) on 4 usable cores: 1 thread, and the record names the cap."""
    monkeypatch.setattr(machine_load, "usable_cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert training_threads("auto", 1) == (1, "auto: 4 usable cores, at most torch's 1 (OMP_NUM_THREADS)")


@pytest.mark.parametrize(
    ("preset", "expected"),
    [({}, OPENMP_SPIN_COUNT), ({"GOMP_SPINCOUNT": "5"}, "5"), ({"OMP_WAIT_POLICY": "ACTIVE"}, None)],
)
def test_openmp_spin_is_bounded_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch, preset: dict[str, str], expected: str | None
) -> None:
    for key in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in preset.items():
        monkeypatch.setenv(key, value)
    bound_openmp_spin()
    assert os.environ.get("GOMP_SPINCOUNT") == expected


def test_the_cli_bounds_the_spin_before_torch_loads() -> None:
    """libgomp reads GOMP_SPINCOUNT once, when torch is first imported: the console entry sets it first."""
    code = (
        "import os, sys; import pipeline.cli as cli; assert 'torch' not in sys.modules; "
        "cli.app = lambda **kw: print(os.environ.get('GOMP_SPINCOUNT')); cli.main()"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == OPENMP_SPIN_COUNT


def test_free_cores_may_be_zero_and_idle_cores_never_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule for both: a core half busy counts as busy; the report may say none is free, a thread count never."""
    assert [machine_load.free_cores(busy, 2) for busy in (0.0, 0.49, 0.5, 1.0, 2.0, 3.0)] == [2, 2, 1, 1, 0, 0]
    monkeypatch.setattr(machine_load, "usable_cores", lambda: 2)
    assert machine_load.idle_cores(2.0) == 1 and machine_load.idle_cores(0.5) == 1 and machine_load.idle_cores(0.0) == 2


def _cgroup_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize(
    ("files", "proc", "cores"),
    [
        # v2: the process's own cgroup and a looser parent; the tightest wins
        ({"cgroup.controllers": "cpu", "a/cpu.max": "max 100000", "a/b/cpu.max": "150000 100000"}, "0::/a/b", 1.5),
        ({"cgroup.controllers": "cpu", "a/cpu.max": "100000 100000", "a/b/cpu.max": "300000 100000"}, "0::/a/b", 1.0),
        # v1: the cpu controller's folder, named by /proc/self/cgroup
        (
            {"cpu,cpuacct/x/cpu.cfs_quota_us": "200000", "cpu,cpuacct/x/cpu.cfs_period_us": "100000"},
            "4:cpu,cpuacct:/x\n3:memory:/x",
            2.0,
        ),
        # a container without a cgroup namespace: its path is not under the mount, whose root is its own cgroup
        ({"cgroup.controllers": "cpu", "cpu.max": "50000 100000"}, "0::/docker/abc", 0.5),
        ({"cgroup.controllers": "cpu", "a/cpu.max": "max 100000"}, "0::/a", None),
        ({}, "", None),
    ],
)
def test_the_tightest_cgroup_quota_over_the_process_and_its_ancestors(
    tmp_path: Path, files: dict[str, str], proc: str, cores: float | None
) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    _cgroup_tree(root, files)
    (tmp_path / "proc-cgroup").write_text(proc)
    assert machine_load._cgroup_quota_cores(root, tmp_path / "proc-cgroup") == cores
