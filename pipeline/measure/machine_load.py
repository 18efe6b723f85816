"""How many cores this process may use and how busy they are: the facts every thread count and every latency
figure depends on (recorded with each bench, used to pick intra-op thread counts).

Linux sources: ``os.sched_getaffinity`` (taskset, cpusets), the cgroup CPU quota (``cpu.max`` of cgroup v2,
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` of v1: docker ``--cpus``), ``/proc/stat`` (busy time per core over a
short window), ``os.getloadavg`` and ``/proc/cpuinfo`` (current clock of each core). Elsewhere the missing facts are
None and the core counts fall back to ``os.cpu_count()``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SAMPLE_SECONDS = 0.25  # the /proc/stat window of busy_cores(): long enough for a 100 Hz tick count


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _cgroup_quota_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPU cores the tightest cgroup quota allows (docker ``--cpus``, systemd ``CPUQuota=``), None when unlimited or
    unknown: the quotas of this process's own cgroup and of each ancestor, found through ``/proc/self/cgroup`` —
    v2 ``cpu.max`` in the unified hierarchy, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under the cpu
    controller. A path that is not under the mount (a container without a cgroup namespace) falls back to the
    mount's root, which is then the container's own cgroup."""
    quotas = [q for directory in _cgroup_dirs(root, proc_cgroup) if (q := _quota(directory)) is not None]
    return min(quotas, default=None)


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup folders with their ancestors up to each hierarchy's mount, for the cpu controller."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    mounts = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: the unified hierarchy, at the root or beside the v1 controllers
            base = root if (root / "cgroup.controllers").is_file() else root / "unified"
        elif "cpu" in controllers.split(","):
            base = root / controllers if (root / controllers).is_dir() else root / "cpu"
        else:
            continue
        mounts.append((base, path.strip("/")))
    if not mounts:
        mounts = [(root, ""), (root / "cpu", "")]
    found = []
    for base, path in mounts:
        own = base / path if path else base
        folders = [own, *own.parents] if own.is_dir() else [base]
        found += [folder for folder in folders if folder == base or base in folder.parents]
    return found


def _quota(folder: Path) -> float | None:
    """Cores one cgroup folder's quota allows, None when it sets none."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (folder / "cpu.cfs_quota_us").is_file():
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, IndexError):
        return None
    return None


def affinity() -> list[int] | None:
    """The CPU ids this process may run on (``taskset``), None where the OS does not say."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota (rounded up), at least 1."""
    cores = len(affinity() or []) or os.cpu_count() or 1
    quota = _cgroup_quota_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cpu_times() -> dict[str, tuple[int, int]]:
    """``{cpuN: (busy ticks, total ticks)}`` from /proc/stat (empty where there is none)."""
    times = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                ticks = [int(v) for v in fields[:8]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                times[name] = (sum(ticks) - idle, sum(ticks))
    except (OSError, ValueError):
        return {}
    return times


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores kept busy by every process (this one included) over the next ``seconds``, among the cores this process
    may use; None where /proc/stat is not readable."""
    allowed = affinity()
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if not before or not after:
        return None
    busy = 0.0
    for name, (busy_after, total_after) in after.items():
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        busy_before, total_before = before.get(name, (busy_after, total_after))
        if total_after > total_before:
            busy += (busy_after - busy_before) / (total_after - total_before)
    return round(busy, 2)


def free_cores(busy: float, usable: int) -> int:
    """Of ``usable`` cores, those ``busy`` (a busy_cores() reading) leaves free, possibly 0. A core counts as busy
    from 0.5 of a core's time on: one spinning process on a 2-core machine leaves 1."""
    return max(0, min(usable, usable - int(busy + 0.5)))


def idle_cores(busy: float | None = None) -> int:
    """Usable cores that nothing else keeps busy (``busy``: a reading of busy_cores(), taken when None), at least 1
    (a process always has one core to run on; see :func:`free_cores`)."""
    if busy is None:
        busy = busy_cores()
    usable = usable_cores()
    return usable if busy is None else max(1, free_cores(busy, usable))


def _clock_mhz() -> list[float] | None:
    """Current clock of each core from /proc/cpuinfo (MHz), None where it is not reported."""
    try:
        with open("/proc/cpuinfo") as f:
            clocks = [float(line.split(":", 1)[1]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return None
    return clocks or None


class LoadSnapshot(BaseModel):
    """The machine's load at one moment: what a latency figure measured around that moment depends on."""

    model_config = ConfigDict(extra="forbid")

    time: str = Field(description="UTC, ISO 8601, seconds.")
    load_average: list[float] | None = Field(None, description="1, 5 and 15 minute load averages (os.getloadavg).")
    busy_cores: float | None = Field(None, description="Cores busy over a 0.25 s window (/proc/stat), all processes.")
    usable_cores: int = Field(description="Cores this process may use: affinity capped by the cgroup quota.")
    idle_cores: int = Field(description="usable_cores minus the busy ones (rounded), at least 1.")
    affinity: list[int] | None = Field(None, description="CPU ids the process may run on.")
    cgroup_quota_cores: float | None = Field(None, description="The cgroup CPU quota in cores; None: unlimited.")
    clock_mhz: list[float] | None = Field(None, description="Current clock of each core (/proc/cpuinfo).")


def load_snapshot() -> LoadSnapshot:
    """The load facts now (takes ``SAMPLE_SECONDS`` to read the busy cores)."""
    from datetime import datetime, timezone

    busy = busy_cores()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return LoadSnapshot(
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        load_average=load,
        busy_cores=busy,
        usable_cores=usable_cores(),
        idle_cores=idle_cores(busy),
        affinity=affinity(),
        cgroup_quota_cores=_cgroup_quota_cores(),
        clock_mhz=_clock_mhz(),
    )


def threads_warning(thread_counts: list[int], usable: int | None = None) -> str | None:
    """A warning when a thread count to time exceeds the cores this process may use (``usable``: usable_cores(),
    read when None); None when every count fits. Such a count is still measured: its threads share cores."""
    usable = usable_cores() if usable is None else usable
    over = sorted({t for t in thread_counts if t > usable})
    if not over:
        return None
    counts = ", ".join(map(str, over))
    return (
        f"{counts} thread(s) exceed the {usable} core(s) this process may use (CPU affinity, cgroup quota): "
        f"measured, but those threads share cores and their figures say little about a machine with {counts} cores"
    )


def training_threads(configured: int | str, current: int) -> tuple[int, str]:
    """Intra-op threads for training, and where the count came from.

    Args:
        configured: ``threads`` of the training section: a count, or "auto".
        current: torch's thread count now (it honours OMP_NUM_THREADS, which torchrun sets).

    Returns:
        A configured count as given; for "auto" the usable cores (CPU affinity, cgroup quota) shared among the
        training processes on this machine (torchrun's LOCAL_WORLD_SIZE), at most ``current``, at least 1. Never
        the machine's load: the weights depend on the thread count, so a busy machine must train the same student as
        a quiet one (``pipeline.measure.openmp.bound_openmp_spin`` keeps threads on busy cores from spin-waiting for
        each other).
    """
    if configured != "auto":
        return int(configured), "config"
    usable = usable_cores()
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, usable // processes)
    source = f"auto: {usable} usable cores" + (f" for {processes} processes" if processes > 1 else "")
    if current < share:
        return max(1, current), f"{source}, at most torch's {current} (OMP_NUM_THREADS)"
    return share, source
