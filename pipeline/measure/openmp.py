"""libgomp's spin-wait, bounded before torch loads: imports nothing heavy, as it runs on the CLI's start path."""

from __future__ import annotations

import os

OPENMP_SPIN_COUNT = "10000"  # GOMP_SPINCOUNT: busy-wait iterations before a waiting OpenMP thread sleeps


def bound_openmp_spin() -> None:
    """Let waiting OpenMP threads sleep soon (``GOMP_SPINCOUNT``, libgomp's default is 300,000 iterations), unless
    the user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``. Call before torch is imported: libgomp reads it once.

    A thread spinning at a barrier holds its core while its peer waits for one: on a 2-core machine with two other
    busy processes, a training step at 2 threads took 231 ms with libgomp's default and 140 ms with 10,000 (1 thread:
    116 ms); quiet, 48 and 55 ms (``bench/openmp_spin.py``, 2026-12-01)."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
