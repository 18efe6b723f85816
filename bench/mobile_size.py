"""Realistic-size speed check: a MobileNet-v1 student (3×160×160, ~0.3 GMAC) through the real targets, int8 vs fp32.

    python bench/mobile_size.py [--explain] [--quick] [--rounds 3] [--out runs/mobile_size]

Builds MobileNet-v1 (width 1.0, ReLU, 1000 classes) with random weights: BatchNorm statistics are taken from a few
random batches, then folded into the convolutions; nothing is trained, as accuracy is not the point, speed is. The
student goes through edgepipe's own onnx-fp32, onnx-int8, tflite-fp32 and tflite-int8 targets (seeded random
calibration and validation data; minmax calibration, no float fallback) and is timed with edgepipe's runners and
``measure_latency``: onnxruntime (CPU) and TFLite (XNNPACK) at batch 1 and 8, threads 1 and 2. fp32 and int8 are
timed in alternating order, round after round, in one run; the table gives the median over rounds of each p50, the
speed-up fp32 p50 / int8 p50 with its range over rounds, and the achieved GMAC/s (also written to
mobile_size.json). ``--explain`` adds what decides the int8 speed-up on each runtime, with figures. ``--quick`` is a
smoke run (64×64 input, one short round).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from calibration.sampling import CalibrationSet
from pipeline.config import RunConfig
from pipeline.config_load import load_config
from pipeline.io import sha256_file
from pipeline.manifest import Preprocessing
from pipeline.measure.runtimes import Runner, onnxruntime_runner, quantize_input, tflite_runner, torch_runner
from pipeline.measure.timing import measure_latency
from targets import TARGETS, ExportInputs, ExportResult

# MobileNet-v1 after its 3×3 stem: (output channels, stride) of each depthwise-separable block.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))
TARGET_NAMES = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
RUNTIMES = {"onnxruntime": ("onnx-fp32", "onnx-int8"), "tflite": ("tflite-fp32", "tflite-int8")}
GOALS = {"onnxruntime": 1.6, "tflite": 1.5}  # int8 speed-up over fp32 the issue asks for on this AVX2 machine
BATCHES = (1, 8)
THREADS = (1, 2)


@dataclass(frozen=True)
class Settings:
    """Sizes and timing effort of one run (full or ``--quick``)."""

    size: int
    calibration: int
    validation: int
    rounds: int
    warmup: int
    min_runs: int
    min_seconds: float


FULL = Settings(size=160, calibration=64, validation=32, rounds=3, warmup=5, min_runs=10, min_seconds=1.5)
QUICK = Settings(size=64, calibration=8, validation=8, rounds=1, warmup=2, min_runs=5, min_seconds=0.2)


@dataclass(frozen=True)
class Artifact:
    """One exported file, as its target described it."""

    name: str
    path: Path
    result: ExportResult
    seconds: float


# ---------------------------------------------------------------------------------------------------------------
# The student


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def mobilenet_v1(width: float = 1.0, classes: int = 1000) -> nn.Sequential:
    """MobileNet-v1 (Howard et al. 2017) with ReLU instead of ReLU6 (the quantization-friendly choice)."""
    channels = int(32 * width)
    layers = [_conv_bn_relu(3, channels, 3, 2)]
    for cout, stride in V1_BLOCKS:
        layers += [
            _conv_bn_relu(channels, channels, 3, stride, groups=channels),
            _conv_bn_relu(channels, int(cout * width), 1, 1),
        ]
        channels = int(cout * width)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def settle_and_fold(model: nn.Sequential, x: torch.Tensor, batches: int = 4) -> nn.Sequential:
    """BatchNorm statistics averaged over ``batches`` forward passes of ``x`` (no training), then each BatchNorm
    folded into its convolution; returns the eval-mode model without BatchNorm."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for chunk in x.chunk(batches):
            model(chunk)
    model.eval()
    for block in model:
        if isinstance(block, nn.Sequential) and isinstance(block[1], nn.BatchNorm2d):
            block[0] = torch.nn.utils.fusion.fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return model


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of a batch-1 input: torch's FLOP counter / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


# ---------------------------------------------------------------------------------------------------------------
# Export through edgepipe's targets


def bench_config(settings: Settings) -> RunConfig:
    """Targets as configured by default, but no accuracy search: random labels make val accuracy meaningless."""
    return load_config(
        None,
        {
            "calibration.method": "minmax",
            "calibration.size": settings.calibration,
            "quantize.max_int8_drop": 100.0,
            "quantize.max_float_layers": 0,
            "export.targets": list(TARGET_NAMES),
        },
    )


def random_data(settings: Settings, seed: int) -> tuple[CalibrationSet, tuple[np.ndarray, np.ndarray]]:
    """Seeded normal-noise calibration set and validation split (NCHW, already "normalized"), random labels."""
    rng = np.random.default_rng(seed)
    shape = (settings.calibration, 3, settings.size, settings.size)
    calibration = CalibrationSet(
        rng.standard_normal(shape, dtype=np.float32), np.arange(settings.calibration), np.zeros(settings.calibration)
    )
    x_val = rng.standard_normal((settings.validation, 3, settings.size, settings.size), dtype=np.float32)
    return calibration, (x_val, rng.integers(0, 1000, settings.validation))


def export_all(
    model: nn.Module,
    settings: Settings,
    config: RunConfig,
    data: tuple[CalibrationSet, tuple[np.ndarray, np.ndarray]],
    out: Path,
) -> dict[str, Artifact]:
    """Every target of TARGET_NAMES built from ``model`` in dependency order, the way pipeline.stages.export does."""
    calibration, validation = data
    preprocessing = Preprocessing(
        mean=[0.5] * 3, std=[0.25] * 3, channels=3, height=settings.size, width=settings.size, channel_order="RGB"
    )
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checkpoint = out / "student.pt"
    torch.save(model.state_dict(), checkpoint)
    artifacts: dict[str, Artifact] = {}
    for name in TARGET_NAMES:
        target = TARGETS.get(name)()
        parent = artifacts.get(target.parent)
        parent_path = parent.path if parent else checkpoint
        path = out / f"student-{name}{target.suffix}"
        started = time.perf_counter()
        result = target.export(
            ExportInputs(
                parent_path=parent_path,
                parent_sha256=sha256_file(parent_path),
                output_path=path,
                work_dir=work,
                config=config,
                preprocessing=preprocessing,
                calibration=calibration if target.needs_calibration else None,
                validation=validation if target.needs_calibration else None,
                model=model if target.parent == "student" else None,
            )
        )
        artifacts[name] = Artifact(name, path, result, time.perf_counter() - started)
    return artifacts


def make_runner(artifact: Artifact, threads: int) -> Runner:
    if artifact.path.suffix == ".onnx":
        return onnxruntime_runner(artifact.path, "CPUExecutionProvider", threads=threads)
    return tflite_runner(artifact.path, artifact.result.inputs, artifact.result.outputs, threads=threads)


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """20·log10(‖reference‖ / ‖other − reference‖)."""
    noise = float(np.linalg.norm(other - reference))
    return float("inf") if noise == 0 else 20 * np.log10(float(np.linalg.norm(reference)) / noise)


def check_artifacts(model: nn.Module, artifacts: dict[str, Artifact], x: np.ndarray) -> None:
    """Print each file's size, export time and logits' closeness to the torch student (SQNR: random weights make
    top-1 agreement meaningless)."""
    reference = torch_runner(model, None).predict(x)
    print(f"{'artifact':<12} {'MB':>6} {'export s':>8}  logits vs torch student ({len(x)} random inputs)")
    for artifact in artifacts.values():
        logits = make_runner(artifact, 2).predict(x)
        diff = float(np.abs(logits - reference).max())
        print(
            f"{artifact.name:<12} {artifact.path.stat().st_size / 1e6:6.2f} {artifact.seconds:8.1f}  "
            f"max |diff| {diff:.2g}, SQNR {sqnr_db(reference, logits):5.1f} dB"
        )
    print(
        "(int8 SQNR is low because rounding noise compounds through 27 random, untrained layers; int8 kernel speed "
        "does not depend on the values)"
    )


# ---------------------------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class Cell:
    """fp32 and int8 p50s of one runtime × batch × threads, one entry per round."""

    runtime: str
    batch: int
    threads: int
    fp32_ms: list[float]
    int8_ms: list[float]

    @property
    def ratios(self) -> list[float]:
        return [f / q for f, q in zip(self.fp32_ms, self.int8_ms)]


def time_interleaved(calls: dict[str, Callable[[], object]], batch: int, settings: Settings) -> dict[str, list[float]]:
    """p50 (ms) per round of each call; the order reverses every round so that drift hits all of them alike."""
    p50s: dict[str, list[float]] = {key: [] for key in calls}
    for round_index in range(settings.rounds):
        for key in list(calls) if round_index % 2 == 0 else list(calls)[::-1]:
            stats = measure_latency(
                calls[key],
                batch=batch,
                warmup=settings.warmup,
                min_runs=max(3, settings.min_runs // batch),
                min_seconds=settings.min_seconds,
            )
            p50s[key].append(stats.p50_ms)
    return p50s


def measure_all(artifacts: dict[str, Artifact], settings: Settings, seed: int) -> list[Cell]:
    rng = np.random.default_rng(seed + 1)
    cells = []
    for runtime, (fp32_name, int8_name) in RUNTIMES.items():
        for threads in THREADS:
            runners = {
                "fp32": make_runner(artifacts[fp32_name], threads),
                "int8": make_runner(artifacts[int8_name], threads),
            }
            for batch in BATCHES:
                x = rng.standard_normal((batch, 3, settings.size, settings.size), dtype=np.float32)
                calls = {precision: runner.timed_call(x) for precision, runner in runners.items()}
                p50s = time_interleaved(calls, batch, settings)
                cells.append(Cell(runtime, batch, threads, p50s["fp32"], p50s["int8"]))
    return cells


def print_table(cells: list[Cell], macs: int) -> None:
    print(
        f"{'runtime':<12} {'batch':>5} {'thr':>3} {'fp32 p50 ms':>11} {'int8 p50 ms':>11} {'int8 speed-up':>13} "
        f"{'range':>11} {'fp32 GMAC/s':>11} {'int8 GMAC/s':>11}  goal"
    )
    for cell in cells:
        fp32, int8 = statistics.median(cell.fp32_ms), statistics.median(cell.int8_ms)
        ratio, goal = statistics.median(cell.ratios), GOALS[cell.runtime]
        spread = f"{min(cell.ratios):.2f}–{max(cell.ratios):.2f}"
        print(
            f"{cell.runtime:<12} {cell.batch:>5} {cell.threads:>3} {fp32:11.2f} {int8:11.2f} {ratio:12.2f}× "
            f"{spread:>11} {macs * cell.batch / fp32 / 1e6:11.1f} {macs * cell.batch / int8 / 1e6:11.1f}  "
            f"{'met' if ratio >= goal else 'short'} (≥{goal}×)"
        )


# ---------------------------------------------------------------------------------------------------------------
# --explain: what decides the int8 speed-up on each runtime

GROUPS = (
    "pointwise 1×1 conv",
    "depthwise 3×3 conv",
    "stem 3×3 conv",
    "classifier",
    "quantize/dequantize",
    "layout change",
    "other",
)
ORT_VARIANTS = {  # label: (format, activation type, weight type, per-channel, reduce_range); None: the onnx-int8 file
    "QDQ U8S8 per-channel reduce_range (onnx-int8)": None,
    "QDQ U8S8 per-tensor reduce_range": ("QDQ", "uint8", "int8", False, True),
    "QDQ S8S8 per-channel": ("QDQ", "int8", "int8", True, False),
    "QOperator U8S8 per-channel reduce_range": ("QOperator", "uint8", "int8", True, True),
    "QDQ U8U8 per-channel": ("QDQ", "uint8", "uint8", True, False),
}
PROFILED_CALLS = 20


def conv_group(groups: int, kernel: list[int]) -> str:
    if groups > 1:
        return "depthwise 3×3 conv"
    return "pointwise 1×1 conv" if list(kernel) == [1, 1] else "stem 3×3 conv"


def macs_by_group(model: nn.Sequential, shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per image of each compute group, from forward hooks on every conv and linear layer."""
    macs: dict[str, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            group, count = "classifier", module.in_features * module.out_features
        else:
            group = conv_group(module.groups, list(module.kernel_size))
            count = output[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        macs[group] = macs.get(group, 0) + count

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    return macs


def ort_node_group(node) -> str:
    import onnx

    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if "Conv" in node.op_type:
        return conv_group(attributes.get("group", 1), attributes.get("kernel_shape", []))
    if node.op_type in ("Gemm", "QGemm", "FusedGemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        return "classifier"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return "quantize/dequantize"
    if node.op_type in ("Transpose", "ReorderInput", "ReorderOutput"):
        return "layout change"
    return "other"


def kernel_label(node) -> str:
    return node.op_type + (" (NCHWc)" if node.domain == "com.microsoft.nchwc" else "")


def ort_session(path: Path, profile_prefix: Path | None = None, optimized: Path | None = None):
    """One-thread CPU session with pipeline.measure.runtimes.onnxruntime_runner's options, optionally profiled and
    saving the graph onnxruntime actually runs (after its fusions and layout changes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class KernelProfile:
    """Kernel milliseconds per call of each group, and which kernels ran in it."""

    ms: dict[str, float]
    kernels: dict[str, set[str]]


def read_profile(profile: Path, optimized: Path, skip: int, calls: int) -> KernelProfile:
    """Group the node events of an onnxruntime profile, leaving out the first ``skip`` runs."""
    import onnx

    events = json.loads(profile.read_text())
    start = sorted(e["ts"] for e in events if e.get("name") == "model_run")[skip]
    nodes = {node.name: node for node in onnx.load(str(optimized)).graph.node}
    ms: dict[str, float] = {}
    kernels: dict[str, set[str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < start:
            continue
        node = nodes.get(event["name"].removesuffix("_kernel_time"))
        group = ort_node_group(node) if node is not None else "other"
        ms[group] = ms.get(group, 0.0) + event["dur"] / 1000 / calls
        kernels.setdefault(group, set()).add(kernel_label(node) if node is not None else event["args"]["op_name"])
    return KernelProfile(ms, kernels)


def profile_ort(paths: dict[str, Path], x: np.ndarray, work: Path) -> dict[str, KernelProfile]:
    """Profile each file for PROFILED_CALLS calls on ``x``, the files' calls alternating."""
    warmup = 3
    sessions = {
        key: ort_session(path, work / f"profile-{key}-b{len(x)}", work / f"optimized-{key}.onnx")
        for key, path in paths.items()
    }
    for _ in range(warmup + PROFILED_CALLS):
        for session in sessions.values():
            session.run(None, {session.get_inputs()[0].name: x})
    return {
        key: read_profile(Path(session.end_profiling()), work / f"optimized-{key}.onnx", warmup, PROFILED_CALLS)
        for key, session in sessions.items()
    }


def print_kernel_table(profiles: dict[str, KernelProfile], group_macs: dict[str, int], batch: int) -> None:
    fp32, int8 = profiles["fp32"], profiles["int8"]
    print(
        f"\nonnxruntime kernels, batch {batch}, 1 thread (session profiling, {PROFILED_CALLS} calls each, fp32 and "
        "int8 alternating; ms per call)"
    )
    print(
        f"{'group':<20} {'MMAC/img':>8}  {'fp32 kernel':<32} {'ms':>7} {'GMAC/s':>6}  {'int8 kernel':<32} {'ms':>7} "
        f"{'GMAC/s':>6}  speed-up"
    )

    def gmacs(group: str, ms: float | None) -> str:
        return f"{group_macs[group] * batch / ms / 1e6:6.1f}" if group in group_macs and ms else f"{'':6}"

    for group in GROUPS:
        if group not in fp32.ms and group not in int8.ms:
            continue
        f_ms, q_ms = fp32.ms.get(group), int8.ms.get(group)
        mmac = f"{group_macs[group] / 1e6:8.1f}" if group in group_macs else f"{'':8}"
        speedup = f"{f_ms / q_ms:7.2f}×" if f_ms and q_ms else ""
        print(
            f"{group:<20} {mmac}  {', '.join(sorted(fp32.kernels.get(group, {'—'}))):<32} "
            f"{f_ms or 0:7.2f} {gmacs(group, f_ms)}  {', '.join(sorted(int8.kernels.get(group, {'—'}))):<32} "
            f"{q_ms or 0:7.2f} {gmacs(group, q_ms)}  {speedup}"
        )
    f_total, q_total, macs = sum(fp32.ms.values()), sum(int8.ms.values()), sum(group_macs.values())
    print(
        f"{'all kernels':<20} {macs / 1e6:8.1f}  {'':<32} {f_total:7.2f} {macs * batch / f_total / 1e6:6.1f}  "
        f"{'':<32} {q_total:7.2f} {macs * batch / q_total / 1e6:6.1f}  {f_total / q_total:7.2f}×"
    )
    pointwise = "pointwise 1×1 conv"
    rest_macs = 1 - group_macs[pointwise] / macs
    rest_fp32, rest_int8 = 1 - fp32.ms[pointwise] / f_total, 1 - int8.ms[pointwise] / q_total
    print(
        f"→ pointwise convs: int8 {fp32.ms[pointwise] / int8.ms[pointwise]:.2f}× fp32. Everything else holds "
        f"{rest_macs:.0%} of the MACs, {rest_fp32:.0%} of fp32 kernel time and {rest_int8:.0%} of int8 kernel time; "
        f"at fp32's time for those, int8 would be {f_total / (int8.ms[pointwise] + f_total - fp32.ms[pointwise]):.2f}× "
        "overall"
    )


def ort_variant_files(
    artifacts: dict[str, Artifact], calibration: CalibrationSet, config: RunConfig, work: Path
) -> dict[str, Path]:
    """The onnx-int8 file and other quantize_static settings on the same prepared model and calibration set."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from calibration.methods import ort_calibration
    from calibration.readers import ort_reader

    prepared = work / "student.preprocessed.onnx"
    quant_pre_process(str(artifacts["onnx-fp32"].path), str(prepared), skip_symbolic_shape=False)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    files = {}
    for index, (label, variant) in enumerate(ORT_VARIANTS.items()):
        if variant is None:
            files[label] = artifacts["onnx-int8"].path
            continue
        quant_format, activation, weight, per_channel, reduce_range = variant
        files[label] = work / f"variant-{index}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared),
                str(files[label]),
                ort_reader(calibration, input_name="input"),
                quant_format=getattr(QuantFormat, quant_format),
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=types[activation],
                weight_type=types[weight],
                **ort_calibration("minmax", config.calibration),
            )
    return files


def compute_ops(path: Path, work: Path) -> str:
    """Conv/Gemm-like op counts of the graph onnxruntime runs for ``path``."""
    import onnx

    optimized = work / "optimized-variant.onnx"
    ort_session(path, optimized=optimized)
    counts = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    shown = [op for op in counts if any(part in op for part in ("Conv", "Gemm", "MatMul"))]
    return " ".join(f"{op}×{counts[op]}" for op in sorted(shown, key=lambda op: -counts[op]))


def explain_onnxruntime(
    artifacts: dict[str, Artifact],
    group_macs: dict[str, int],
    calibration: CalibrationSet,
    config: RunConfig,
    settings: Settings,
    work: Path,
) -> None:
    rng = np.random.default_rng(7)
    paths = {"fp32": artifacts["onnx-fp32"].path, "int8": artifacts["onnx-int8"].path}
    for batch in BATCHES:
        x = rng.standard_normal((batch, 3, settings.size, settings.size), dtype=np.float32)
        print_kernel_table(profile_ort(paths, x, work), group_macs, batch)

    files = {"fp32 (onnx-fp32)": artifacts["onnx-fp32"].path, **ort_variant_files(artifacts, calibration, config, work)}
    print(
        f"\nonnxruntime int8 settings, 1 thread: same prepared model and calibration (minmax), each timed with fp32 in "
        f"alternating order; p50 ms, median of {settings.rounds} round(s)"
    )
    results = {}
    for batch in BATCHES:
        x = rng.standard_normal((batch, 3, settings.size, settings.size), dtype=np.float32)
        calls = {
            label: onnxruntime_runner(path, "CPUExecutionProvider", threads=1).timed_call(x)
            for label, path in files.items()
        }
        results[batch] = {
            label: statistics.median(p50s) for label, p50s in time_interleaved(calls, batch, settings).items()
        }
    columns = "  ".join(f"{f'b{batch} p50':>8} {'speed-up':>8}" for batch in BATCHES)
    print(f"{'setting':<46} {columns}  kernels onnxruntime runs")
    for label, path in files.items():
        cells = "  ".join(
            f"{results[b][label]:8.2f} {results[b]['fp32 (onnx-fp32)'] / results[b][label]:7.2f}×" for b in BATCHES
        )
        print(f"{label:<46} {cells}  {compute_ops(path, work)}")
    print(
        "→ onnxruntime fuses DQ→op→Q, so QDQ and QOperator files run the same QLinearConv/QGemm kernels; the "
        "types pick MLAS's GEMM: U8S8 multiplies byte pairs (vpmaddubsw), U8U8 widens to 16 bit (vpmaddwd), the "
        "way XNNPACK's AVX2 int8 GEMM does"
    )


def tflite_ops(artifact: Artifact) -> str:
    """Op counts of a TFLite file and whether XNNPACK took all of it (one delegate node from input to output)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(artifact.path), num_threads=1)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # the model's ops, then the delegate nodes that replaced them
    counts = Counter(op["op_name"] for op in ops if op["op_name"] != "DELEGATE")
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    first, last = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    whole = len(delegates) == 1 and first in delegates[0]["inputs"] and last in delegates[0]["outputs"]
    taken = (
        "XNNPACK takes every op (one delegate node, input to output)" if whole else f"{len(delegates)} delegate nodes"
    )
    fused = "" if any("RELU" in op for op in counts) else "ReLU fused into the convs; "
    dtypes = ", ".join(f"{n} {dtype}" for dtype, n in artifact.result.info["tensor_dtypes"].items())
    return f"{' '.join(f'{op}×{n}' for op, n in counts.most_common())}; {fused}tensors: {dtypes}; {taken}"


def tflite_call(artifact: Artifact, x: np.ndarray, resolver: str) -> Callable[[], object]:
    """One batch on the LiteRT interpreter, 1 thread, with the given op resolver (AUTO = with XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(artifact.path), num_threads=1, experimental_op_resolver_type=OpResolverType[resolver]
    )
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [len(x), *detail["shape"][1:]])
    interpreter.allocate_tensors()
    feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    spec = artifact.result.inputs[0]
    feed = quantize_input(feed, spec) if spec.scale is not None else feed

    def call() -> None:
        interpreter.set_tensor(detail["index"], feed)
        interpreter.invoke()

    return call


MICRO_LAYERS = (  # label, kind, input channels, output channels, size divisor, stride: layers of the student
    ("pointwise 512→512", "pointwise", 512, 512, 16, 1),
    ("pointwise 128→128", "pointwise", 128, 128, 4, 1),
    ("depthwise 3×3 ×256", "depthwise", 256, 256, 8, 1),
    ("stem 3×3/2 3→32", "stem", 3, 32, 1, 2),
)


def layer_saved_model(kind: str, c_in: int, c_out: int, hw: int, stride: int, path: Path, rng) -> None:
    """A SavedModel of one conv + bias + ReLU (NHWC, dynamic batch) with random weights."""
    import tensorflow as tf

    if kind == "depthwise":
        weight = rng.standard_normal((3, 3, c_in, 1), dtype=np.float32) / 3
    else:
        k = 1 if kind == "pointwise" else 3
        weight = rng.standard_normal((k, k, c_in, c_out), dtype=np.float32) / np.float32(math.sqrt(k * k * c_in))
    kernel, bias = tf.constant(weight), tf.constant(rng.standard_normal(c_out, dtype=np.float32) * 0.1)

    class Layer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, hw, hw, c_in], tf.float32)])
        def __call__(self, x):
            if kind == "depthwise":
                y = tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], "SAME")
            else:
                y = tf.nn.conv2d(x, kernel, stride, "SAME")
            return tf.nn.relu(y + bias)

    layer = Layer()
    tf.saved_model.save(layer, str(path), signatures=layer.__call__.get_concrete_function())


def explain_tflite_layers(settings: Settings, work: Path) -> None:
    """Single layers of the student through edgepipe's TFLite converter, fp32 vs int8 on XNNPACK."""
    from targets.tflite_io import convert_saved_model, describe_tflite

    rng = np.random.default_rng(11)
    batch = BATCHES[-1]
    print(
        f"\nTFLite single layers (conv + bias + ReLU, edgepipe's converter), XNNPACK, batch {batch}, 1 thread; "
        f"p50 ms, median of {settings.rounds} round(s)"
    )
    print(f"{'layer':<20} {'at':>7} {'MMAC':>6}  {'fp32 ms':>7} {'GMAC/s':>6}  {'int8 ms':>7} {'GMAC/s':>6}  speed-up")
    for label, kind, c_in, c_out, divisor, stride in MICRO_LAYERS:
        hw = max(settings.size // divisor, 2)
        saved_model = work / f"layer-{kind}-{c_in}"
        layer_saved_model(kind, c_in, c_out, hw, stride, saved_model, rng)
        calibration = CalibrationSet(
            rng.standard_normal((8, c_in, hw, hw), dtype=np.float32), np.arange(8), np.zeros(8)
        )
        x = rng.standard_normal((batch, c_in, hw, hw), dtype=np.float32)
        calls = {}
        for precision in ("fp32", "int8"):
            path = work / f"layer-{kind}-{c_in}-{precision}.tflite"
            convert_saved_model(saved_model, path, precision, calibration)
            described = describe_tflite(path, {})
            calls[precision] = tflite_runner(path, described.inputs, described.outputs, threads=1).timed_call(x)
        p50s = {key: statistics.median(v) for key, v in time_interleaved(calls, batch, settings).items()}
        out_hw = -(-hw // stride)
        macs = out_hw * out_hw * c_out * (9 if kind == "depthwise" else 9 * c_in if kind == "stem" else c_in)
        f_ms, q_ms = p50s["fp32"], p50s["int8"]
        print(
            f"{label:<20} {f'{hw}×{hw}':>7} {macs / 1e6:6.2f}  {f_ms:7.3f} {macs * batch / f_ms / 1e6:6.1f}  "
            f"{q_ms:7.3f} {macs * batch / q_ms / 1e6:6.1f}  {f_ms / q_ms:7.2f}×"
        )


def explain_tflite(artifacts: dict[str, Artifact], settings: Settings, work: Path) -> None:
    print("\nTFLite files (op counts as the interpreter lists them, before delegation)")
    for name in RUNTIMES["tflite"]:
        print(f"{name:<12} {tflite_ops(artifacts[name])}")
    rng = np.random.default_rng(13)
    print(
        f"\nTFLite with and without XNNPACK (OpResolverType AUTO vs BUILTIN_WITHOUT_DEFAULT_DELEGATES), 1 thread; "
        f"p50 ms, median of {settings.rounds} round(s)"
    )
    resolvers = {"XNNPACK": "AUTO", "built-in": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}
    print(f"{'batch':>5}" + "".join(f"  {f'fp32 {k}':>13} {f'int8 {k}':>13} {'speed-up':>8}" for k in resolvers))
    for batch in BATCHES:
        x = rng.standard_normal((batch, 3, settings.size, settings.size), dtype=np.float32)
        calls = {
            (precision, kernels): tflite_call(artifacts[f"tflite-{precision}"], x, resolver)
            for kernels, resolver in resolvers.items()
            for precision in ("fp32", "int8")
        }
        p50 = {key: statistics.median(v) for key, v in time_interleaved(calls, batch, settings).items()}
        cells = [(p50["fp32", kernels], p50["int8", kernels]) for kernels in resolvers]
        print(f"{batch:>5}" + "".join(f"  {f:13.2f} {q:13.2f} {f / q:7.2f}×" for f, q in cells))
    explain_tflite_layers(settings, work)
    print(
        "→ XNNPACK's AVX2 int8 GEMM (qs8-qc8w-gemm …c8-avx2) sign-extends int8 to int16 and multiplies with "
        "vpmaddwd: without VNNI about the MAC rate of fp32 FMA, where onnxruntime's U8S8 kernel multiplies byte "
        "pairs with vpmaddubsw"
    )


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64×64 input, one short round")
    parser.add_argument("--explain", action="store_true", help="also measure what decides the int8 speed-up")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per cell (default 3; quick: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="default runs/mobile_size (quick: runs/mobile_size-quick)"
    )
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.rounds is not None:
        settings = replace(settings, rounds=args.rounds)
    out = args.out or Path("runs/mobile_size" + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    shape = (3, settings.size, settings.size)
    model = settle_and_fold(mobilenet_v1(), torch.randn(64, *shape))
    macs = count_macs(model, shape)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"MobileNet-v1 1.0, input {'×'.join(map(str, shape))}: {macs / 1e6:.1f} MMAC per image "
        f"(torch FlopCounterMode / 2), {parameters / 1e6:.2f} M parameters"
    )
    print(
        "random weights (seed {0}), BatchNorm statistics from random batches then folded, not trained; random "
        "calibration and validation data (seed {0}): figures are for speed only".format(args.seed)
    )
    config = bench_config(settings)
    calibration, validation = random_data(settings, args.seed)
    started = time.perf_counter()
    artifacts = export_all(model, settings, config, (calibration, validation), out)
    print(f"exported {', '.join(artifacts)} with edgepipe's targets in {time.perf_counter() - started:.0f} s")
    x_check = np.random.default_rng(args.seed + 2).standard_normal((8, *shape), dtype=np.float32)
    check_artifacts(model, artifacts, x_check)

    print(f"\ntiming: {settings.rounds} round(s) per cell, fp32 and int8 alternating; {load_line()} before")
    cells = measure_all(artifacts, settings, args.seed)
    print_table(cells, macs)
    print(f"{load_line()} after")
    summary = {
        "macs_per_image": macs,
        "input": list(shape),
        "settings": settings.__dict__,
        "load_average": os.getloadavg(),
    }
    summary["cells"] = [cell.__dict__ | {"speedup_median": statistics.median(cell.ratios)} for cell in cells]
    (out / "mobile_size.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.explain:
        work = out / "explain"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        explain_onnxruntime(artifacts, macs_by_group(model, shape), calibration, config, settings, work)
        explain_tflite(artifacts, settings, work)
        print(f"\n{load_line()} after --explain")


if __name__ == "__main__":
    main()
