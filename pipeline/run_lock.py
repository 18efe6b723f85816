"""One writer per run directory: an exclusive ``flock`` on the directory itself, held until the process exits.

The lock lives in the kernel, not in a file, so it leaves nothing in the run directory and a process that dies
(killed, crashed, out of memory) releases it at once: there is no stale lock to clean up. A second writer is
refused with one line naming the holder, read from ``/proc/locks`` and ``/proc/<pid>`` (Linux; elsewhere it says
"another process"). The lock is re-entrant within a process (a test may open one run twice), and the holder's own
helper processes (the memory probe, a subprocess of the bench stage) may open the run it holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from pipeline.errors import RunStateError
from pipeline.io import cannot_write

_held: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of each locked run directory → its open descriptor


def lock_run(root: Path) -> None:
    """Hold the exclusive writer lock of the existing directory ``root`` for the rest of this process.

    Raises:
        RunStateError: another process (not this one or an ancestor of it) holds the lock; the message names its
            PID, command and start time. A directory that cannot be opened is the write error of ``root``.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise cannot_write(root, e) from e
    key = _inode(os.fstat(fd))
    if key in _held:
        os.close(fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            return  # a file system without flock: unlocked, as before the lock existed
        holder = _holder(key)
        if holder is not None and holder in _ancestors():
            return  # a helper process of the writer reads the run its parent holds
        raise RunStateError(
            f"{root} is being written by {_describe(holder)}", "wait for it to finish or stop it"
        ) from None
    _held[key] = fd


def _inode(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _holder(key: tuple[int, int]) -> int | None:
    """The PID holding a flock on inode ``key``, from /proc/locks (None when it cannot be told)."""
    dev, ino = key
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) == (os.major(dev), os.minor(dev), ino):
            return int(fields[4])
    return None


def _ancestors() -> set[int]:
    """PIDs of this process's parent, grandparent, … (empty where /proc is missing)."""
    found, pid = set(), _parent(os.getpid())
    while pid > 0:
        found.add(pid)
        pid = _parent(pid) if pid > 1 else 0
    return found


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the command name in (…) may hold spaces


def _describe(pid: int | None) -> str:
    """``PID 1234 (`edgepipe run`, since 15:02)``, or as much of it as can be read."""
    if pid is None:
        return "another process"
    command, started = _command(pid), _start_time(pid)
    facts = [f"`{command}`"] if command else []
    if started is not None:
        day = "" if time.time() - started < 86400 else "%Y-%m-%d "
        facts.append("since " + time.strftime(day + "%H:%M", time.localtime(started)))
    return f"PID {pid}" + (f" ({', '.join(facts)})" if facts else "")


def _command(pid: int) -> str | None:
    """``edgepipe <command>`` for an edgepipe process (console script or ``python -m pipeline``), else its first
    words."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return None
    for i, arg in enumerate(argv):
        if Path(arg).name == "edgepipe" or (arg == "-m" and argv[i + 1 : i + 2] == ["pipeline"]):
            rest = argv[i + 2 if arg == "-m" else i + 1 :]
            return " ".join(["edgepipe", *rest[:1]])
    return " ".join([Path(argv[0]).name, *argv[1:3]]) if argv else None


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc (None elsewhere)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
