"""Harness overhead: edgepipe's timed p50 against a bare `session.run` / `interpreter.invoke` loop, one run.

    python bench/harness_overhead.py [--run runs/default] [--rounds 7] [--seconds 1] [--threads 1]

For each ONNX and TFLite artifact of a finished run, at batch 1: edgepipe's runner and timing loop
(`pipeline.measure.runtimes` + `pipeline.measure.timing.measure_latency`), and a hand-written loop over its own
onnxruntime
session or LiteRT interpreter with the same input and thread count. The two alternate for ``--rounds``
rounds so drift hits both; the ratio is the median of edgepipe's round p50s over the bare loop's. A ratio
≤ 1.05 means the harness adds at most 5 % to what it reports.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.manifest import ArtifactRecord
from pipeline.measure.runtimes import onnxruntime_runner, quantize_input, tflite_runner
from pipeline.measure.timing import measure_latency
from pipeline.rundir import RunDir

LIMIT = 1.05


def bare_onnxruntime(path: Path, x: np.ndarray, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def bare_tflite(path: Path, record: ArtifactRecord, x: np.ndarray, threads: int) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    spec = record.inputs[0]
    interpreter.set_tensor(
        interpreter.get_input_details()[0]["index"], quantize_input(nhwc, spec) if spec.scale is not None else nhwc
    )
    return interpreter.invoke


def bare_p50(call: Callable[[], object], warmup: int, seconds: float) -> float:
    """p50 milliseconds of a plain perf_counter loop around ``call``."""
    for _ in range(warmup):
        call()
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return float(np.median(times)) * 1000


def compare(tool: Callable[[], object], bare: Callable[[], object], rounds: int, seconds: float) -> tuple:
    tool_p50s, bare_p50s = [], []
    for _ in range(rounds):
        tool_p50s.append(measure_latency(tool, 1, 20, 1, seconds).p50_ms)
        bare_p50s.append(bare_p50(bare, 20, seconds))
    return statistics.median(tool_p50s), statistics.median(bare_p50s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="A finished edgepipe run.")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="Timed seconds per round and side.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    run = RunDir.open(args.run)
    x = run.splits.normalize(run.splits.test.x[:1])
    print(f"batch 1, {args.threads} thread(s), {args.rounds} alternating rounds of {args.seconds:g} s per side")
    print(f"{'artifact':<14} {'runtime':<12} {'edgepipe p50 ms':>16} {'bare p50 ms':>12} {'ratio':>7}")
    worst = 0.0
    for record in run.manifest.artifacts.values():
        if record.stage != "export" or record.info.get("source", "student") != "student":
            continue
        path = run.path(record.path)
        if record.info["format"] == "onnx":
            runtime = "onnxruntime"
            tool = onnxruntime_runner(path, "CPUExecutionProvider", args.threads).timed_call(x)
            bare = bare_onnxruntime(path, x, args.threads)
        else:
            runtime = "tflite"
            tool = tflite_runner(path, record.inputs, record.outputs, args.threads).timed_call(x)
            bare = bare_tflite(path, record, x, args.threads)
        tool_ms, bare_ms = compare(tool, bare, args.rounds, args.seconds)
        ratio = tool_ms / bare_ms
        worst = max(worst, ratio)
        print(f"{record.name:<14} {runtime:<12} {tool_ms:>16.4f} {bare_ms:>12.4f} {ratio:>7.3f}")
    print(f"worst ratio {worst:.3f} ({'within' if worst <= LIMIT else 'OVER'} the {LIMIT} limit)")


if __name__ == "__main__":
    main()
