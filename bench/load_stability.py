"""Load stability: a finished run benched on a quiet machine, then again beside a busy loop on one core, one session.

    python bench/load_stability.py [--run runs/default] [--limit 1.5] [--keep DIR]

The run directory is copied (the copy is benched; the run itself is left as it is). The bench stage runs on the
copy as `edgepipe bench` does, first as the machine is, then while a process this script starts spins on one core
(pinned to the last usable core with ``os.sched_setaffinity``). For every row of the report's main table it prints
the headline p50 (batch 1, 1 thread) and the speed-up against the teacher, quiet and loaded, and their ratio
(loaded / quiet); a row passes when both ratios lie within ``--limit``× either way. Also printed: the load facts
the bench recorded before and after each pass, the CPU's flags, the time each pass took, and the spread (max - min
over median of the round p50s) of every timing, re-measured and noisy counts (evidence for ``bench.max_spread``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.environment import cpu_facts
from pipeline.manifest import Manifest, Measurement
from pipeline.measure.machine_load import LoadSnapshot, affinity
from pipeline.report.sections import shown_measurements, speedup, teacher_and_student
from pipeline.rundir import RunDir
from pipeline.stages.bench import run_bench

SPIN = "while True:\n    pass\n"


def busy_loop() -> subprocess.Popen:
    """A process spinning on one core (the last one this process may use), started now."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    cores = affinity()
    if cores:
        os.sched_setaffinity(spinner.pid, {cores[-1]})
    return spinner


def bench_copy(run: Path, into: Path) -> tuple[Manifest, float]:
    """Bench a copy of ``run`` at ``into``; its manifest and the seconds the bench stage took."""
    shutil.copytree(run, into)
    started = time.perf_counter()
    run_bench(RunDir.open(into))
    seconds = time.perf_counter() - started
    return Manifest.load(into / "manifest.json"), seconds


def _rows(manifest: Manifest) -> dict[tuple[str, str], tuple[float, float | None]]:
    """(artifact, runtime) → (headline p50 ms, speed-up vs the teacher) as the report's main table has them."""
    teacher, _ = teacher_and_student(manifest)
    return {(m.artifact, m.runtime): (m.latency.p50_ms, speedup(teacher, m)) for m in shown_measurements(manifest)}


def _load(snapshot: LoadSnapshot) -> str:
    load = " ".join(f"{v:.2f}" for v in snapshot.load_average or [])
    cores = f"busy cores {snapshot.busy_cores} of {snapshot.usable_cores} ({snapshot.idle_cores} idle)"
    return f"load average {load}, {cores}"


def _spreads(manifest: Manifest) -> str:
    """Spread of every timing: median and max; re-measured and noisy counts; the same for batch 1 at 1 thread."""
    timings = [t.latency for m in manifest.measurements for t in m.timings]
    headline = [m.latency for m in manifest.measurements]

    def summary(stats) -> str:
        spreads = [s.spread for s in stats]
        return (
            f"spread median {statistics.median(spreads):.3f} max {max(spreads):.3f}, "
            f"{sum(s.remeasured for s in stats)} re-measured, {sum(s.noisy for s in stats)} noisy of {len(stats)}"
        )

    return f"all timings: {summary(timings)}; headline: {summary(headline)}"


def _noisy(measurements: list[Measurement]) -> str:
    rows = [
        f"{m.artifact}/{m.runtime} b{t.latency.batch} t{t.threads}"
        for m in measurements
        for t in m.timings
        if t.latency.noisy
    ]
    return ", ".join(rows) or "none"


def ratio(loaded: float, quiet: float) -> float:
    """How far apart two figures are, as a factor ≥ 1 either way."""
    return max(loaded / quiet, quiet / loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="A finished edgepipe run.")
    parser.add_argument("--limit", type=float, default=1.5, help="Largest loaded/quiet factor (either way).")
    parser.add_argument("--keep", type=Path, help="Keep the two benched copies here (quiet/, loaded/).")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="edgepipe-load-"))
    cpu = cpu_facts()
    print(
        f"CPU: {cpu.get('model')}, {os.cpu_count()} cores, AVX2 {cpu.get('avx2')}, AVX-512 {cpu.get('avx512')}, "
        f"VNNI {cpu.get('vnni')}; affinity {affinity()}"
    )
    quiet, quiet_seconds = bench_copy(args.run, work / "quiet")
    spinner = busy_loop()
    try:
        time.sleep(1.0)  # the spinner shows in /proc/stat and the load average before the bench reads them
        loaded, loaded_seconds = bench_copy(args.run, work / "loaded")
    finally:
        spinner.kill()
        spinner.wait()
    for name, manifest, seconds in (("quiet", quiet, quiet_seconds), ("loaded", loaded, loaded_seconds)):
        load = manifest.bench_load
        print(f"{name}: bench {seconds:.1f} s; before: {_load(load.before)}; after: {_load(load.after)}")
        print(f"  {_spreads(manifest)}")
        print(f"  noisy: {_noisy(manifest.measurements)}")
    quiet_rows, loaded_rows = _rows(quiet), _rows(loaded)
    print(f"\nheadline: batch 1, 1 thread; speed-up: teacher p50 / row p50; limit {args.limit}× either way")
    print(
        f"{'artifact':<24} {'runtime':<24} {'p50 quiet':>9} {'loaded':>8} {'ratio':>6} "
        f"{'speed-up quiet':>14} {'loaded':>7} {'ratio':>6}"
    )
    worst = 1.0
    for key, (p50, faster) in quiet_rows.items():
        if key not in loaded_rows:
            print(f"{key[0]:<24} {key[1]:<24} not measured under load")
            worst = float("inf")
            continue
        p50_loaded, faster_loaded = loaded_rows[key]
        p50_ratio = ratio(p50_loaded, p50)
        worst = max(worst, p50_ratio)
        speed = "—  (no speed-up printed)"
        if faster is not None and faster_loaded is not None:  # the report prints "—" without a teacher timing
            speed_ratio = ratio(faster_loaded, faster)
            worst = max(worst, speed_ratio)
            speed = f"{faster:>13.2f}× {faster_loaded:>6.2f}× {speed_ratio:>6.2f}"
        print(f"{key[0]:<24} {key[1]:<24} {p50:>9.4f} {p50_loaded:>8.4f} {p50_ratio:>6.2f} {speed}")
    print(f"max ratio {worst:.2f}: {'PASS' if worst <= args.limit else 'FAIL'} (limit {args.limit}×)")
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
