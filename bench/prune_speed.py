"""Pruned against unpruned student: accuracy and onnxruntime CPU p50 of the same targets from two runs, one session.

    python bench/prune_speed.py --base runs/prune-base --pruned runs/prune-default \
        [--targets onnx-fp32 onnx-int8] [--batches 1 32] [--threads 1] [--rounds 7] [--seconds 0.5]

For each target and batch size × thread count, the base run's file and the pruned run's file take turns for
``--rounds`` rounds (load on the machine hits both alike); each gets the median of its round p50s, and the ratio
pruned / base says how much faster the pruned file is (< 1: faster). Test top-1 of every file on onnxruntime, the
PyTorch students' test top-1 from both manifests, MACs and gzip'd sizes, and the machine's load (`uptime`) are
printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from pipeline.measure.harness import batch_of, predict_all
from pipeline.measure.model_profile import onnx_profile
from pipeline.measure.prune_measure import gzip_bytes
from pipeline.measure.runtimes import onnxruntime_runner
from pipeline.measure.timing import measure_latency
from pipeline.rundir import RunDir


def _uptime() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"load average {load} on {os.cpu_count()} cores"


def _pytorch_top1(run: RunDir, artifact: str) -> float | None:
    return next(
        (m.accuracy for m in run.manifest.measurements if m.artifact == artifact and m.runtime == "pytorch"), None
    )


def _file(run: RunDir, target: str) -> Path:
    return run.path(run.require(target).path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="Run whose targets come from the unpruned student.")
    parser.add_argument("--pruned", type=Path, required=True, help="Run whose targets come from student-pruned.")
    parser.add_argument("--targets", nargs="+", default=["onnx-fp32", "onnx-int8"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="Minimum timed seconds per round and file.")
    args = parser.parse_args()
    base, pruned = RunDir.open(args.base), RunDir.open(args.pruned)
    x, y = base.splits.normalize(base.splits.test.x), base.splits.test.y
    print(f"before: {_uptime()}")
    print(
        f"PyTorch test top-1: student {_pytorch_top1(base, 'student')} % (base run), "
        f"student {_pytorch_top1(pruned, 'student')} % / student-pruned {_pytorch_top1(pruned, 'student-pruned')} % "
        "(pruned run)"
    )
    for target in args.targets:
        files = {"base": _file(base, target), "pruned": _file(pruned, target)}
        for name, path in files.items():
            logits = predict_all(onnxruntime_runner(path, "CPUExecutionProvider", 2), x, 256)
            profile = onnx_profile(path)
            print(
                f"{target} {name}: {path}, test top-1 {(logits.argmax(1) == y).mean() * 100:.2f} %, "
                f"{profile.macs / 1e6:.3f} MMAC, {profile.params:,} params, {path.stat().st_size:,} bytes, "
                f"gzip {gzip_bytes(path):,} bytes"
            )
    print("\n| target | batch | threads | base p50 ms | pruned p50 ms | pruned / base |")
    print("|---|---|---|---|---|---|")
    for target in args.targets:
        for threads in args.threads:
            runners = {
                name: onnxruntime_runner(_file(run, target), "CPUExecutionProvider", threads)
                for name, run in (("base", base), ("pruned", pruned))
            }
            for batch in args.batches:
                calls = {name: runner.timed_call(batch_of(x, batch)) for name, runner in runners.items()}
                rounds: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, call in calls.items():
                        rounds[name].append(measure_latency(call, batch, 10, 20, args.seconds).p50_ms)
                p50 = {name: statistics.median(values) for name, values in rounds.items()}
                print(
                    f"| {target} | {batch} | {threads} | {p50['base']:.4f} | {p50['pruned']:.4f} | "
                    f"{p50['pruned'] / p50['base']:.2f} |"
                )
    print(f"\nafter: {_uptime()}")


if __name__ == "__main__":
    main()
