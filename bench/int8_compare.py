"""edgepipe's onnx-int8 side by side with the quantizers a user would pick instead, on one finished run.

    python bench/int8_compare.py RUN_DIR [--rounds 5] [--json FILE]

Takes the run's onnx-fp32 file, its calibration set and its onnx-int8 file, and quantizes the same fp32 file with
onnxruntime's ``quantize_static`` twice: as its docs suggest for a per-channel model (``quant_pre_process`` first,
QDQ, uint8 activations and int8 weights (U8S8), per-channel weights, ``reduce_range=False``, MinMax), and with every
option at its default (what onnx-int8-ort-defaults builds). NNCF is not installed here: it is left out, said so.

Per file: top-1 on the test split, top-1 agreement with the fp32 file, bytes, how many Conv/Gemm/MatMul nodes run
in int8 (activation and weight dequantized) and their share of MACs, and the p50 latency on onnxruntime with one
thread at batch 1 and 64. Timing is interleaved (every round times every file once, in a rotating order); a file's
figure is the median of its round p50s, its speed-up the median of the per-round fp32 p50 / file p50. The machine's
load (/proc/loadavg, before and after) and CPU flags are printed with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from calibration.readers import ort_reader
from calibration.sampling import CalibrationSet
from pipeline.environment import cpu_facts
from pipeline.measure.runtimes import onnxruntime_runner
from pipeline.measure.timing import measure_latency
from pipeline.rundir import RunDir
from pipeline.stages.calibrate import CALIBRATION_PATH
from targets.onnx_int8 import pre_process
from targets.onnx_share import onnx_int8_share

BATCHES = (1, 64)
THREADS = 1


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def ort_files(fp32: Path, calibration: CalibrationSet, work: Path) -> dict[str, Path]:
    """The two onnxruntime ``quantize_static`` files: per-channel U8S8 without reduce_range, and all defaults."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(fp32)).graph.input[0].name
    prepared = work / "fp32.preprocessed.onnx"
    pre_process(fp32, prepared)
    per_channel, defaults = work / "ort-per-channel.onnx", work / "ort-defaults.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared),
            str(per_channel),
            ort_reader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantize_static(str(fp32), str(defaults), ort_reader(calibration, input_name))
    return {"ort quantize_static per-channel U8S8": per_channel, "ort quantize_static defaults": defaults}


def _compute_nodes(path: Path):
    import onnx

    return (n for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"))


def accuracy_row(path: Path, x: np.ndarray, y: np.ndarray, fp32_top: np.ndarray | None) -> dict:
    predict = onnxruntime_runner(path, "CPUExecutionProvider", THREADS).predict
    top = np.concatenate([predict(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    share = onnx_int8_share(path)
    compute = sum(1 for _ in _compute_nodes(path))
    return {
        "top1": round(float((top == y).mean() * 100), 2),
        "agreement": round(float((top == fp32_top).mean() * 100), 2) if fp32_top is not None else 100.0,
        "bytes": path.stat().st_size,
        "int8_compute_nodes": f"{compute - len(share.float_layers)}/{compute}",
        "int8_macs": round(share.macs, 4),
        "_top": top,
    }


def timings(files: dict[str, Path], x: np.ndarray, rounds: int) -> dict[str, dict[int, dict]]:
    """Median p50 (ms) per file and batch over interleaved rounds, and the median per-round speed-up vs fp32."""
    names = list(files)
    runners = {name: onnxruntime_runner(path, "CPUExecutionProvider", THREADS) for name, path in files.items()}
    p50s: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for batch in BATCHES:
            for name in order:
                call = runners[name].timed_call(x[:batch])
                p50s[name][batch].append(measure_latency(call, batch, 5, 50, 0.3).p50_ms)
    fp32 = names[0]
    return {
        name: {
            batch: {
                "p50_ms": round(statistics.median(p50s[name][batch]), 4),
                "speedup": round(statistics.median(f / s for f, s in zip(p50s[fp32][batch], p50s[name][batch])), 2),
            }
            for batch in BATCHES
        }
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished edgepipe run directory (onnx-fp32 and onnx-int8 built)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    run = RunDir.open(args.run)
    artifacts = run.manifest.artifacts
    fp32 = run.path(artifacts["onnx-fp32"].path)
    calibration = CalibrationSet.load(run.path(CALIBRATION_PATH))
    x, y = run.splits.normalize(run.splits.test.x), run.splits.test.y
    cpu = cpu_facts()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="int8-compare-") as tmp:
        files = {"onnx-fp32": fp32, "edgepipe onnx-int8": run.path(artifacts["onnx-int8"].path)}
        files.update(ort_files(fp32, calibration, Path(tmp)))
        rows = {}
        for name, path in files.items():
            rows[name] = accuracy_row(path, x, y, rows["onnx-fp32"]["_top"] if rows else None)
        timed = timings(files, x[: max(BATCHES)], args.rounds)
    for row in rows.values():
        del row["_top"]
    settings = artifacts["onnx-int8"].info.get("settings", {})
    print(f"run {args.run}: test {len(y)} images, calibration {len(calibration)} samples")
    print(f"edgepipe onnx-int8 settings: {settings}")
    print(
        f"machine: {cpu.get('model')}, {cpu.get('cores')} cores, AVX2 {cpu.get('avx2')}, AVX-512 "
        f"{cpu.get('avx512')}, VNNI {cpu.get('vnni')}; load average {load_before} before, {load_average()} after"
    )
    if importlib.util.find_spec("nncf") is None:
        print("NNCF: not installed, skipped")
    header = "| file | top-1 % | agreement vs fp32 % | bytes | int8 Conv/Gemm | int8 MACs |"
    header += "".join(f" p50 ms b{b} | × fp32 b{b} |" for b in BATCHES)
    print(header)
    print("|" + "---|" * (6 + 2 * len(BATCHES)))
    for name, row in rows.items():
        cells = [name, row["top1"], row["agreement"], row["bytes"], row["int8_compute_nodes"], row["int8_macs"]]
        cells += [v for b in BATCHES for v in (timed[name][b]["p50_ms"], f"{timed[name][b]['speedup']}×")]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        figures = {
            "run": str(args.run),
            "cpu": cpu,
            "load_average": [load_before, load_average()],
            "settings": settings,
            "files": {name: {**rows[name], "timing": timed[name]} for name in rows},
        }
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
