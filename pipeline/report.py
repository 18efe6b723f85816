"""Stage 5: report.md from the manifest (the manifest is the single source of every figure)."""

from __future__ import annotations

from pipeline.io import write_text_atomic
from pipeline.manifest import Manifest, Measurement
from pipeline.rundir import RunDir


def _size(manifest: Manifest, name: str) -> str:
    record = manifest.artifacts.get(name)
    return f"{record.bytes / 1024:.1f} KiB" if record else "—"


def _row(manifest: Manifest, m: Measurement, teacher: Measurement, student: Measurement | None) -> str:
    speedup = teacher.latency.p50_ms / m.latency.p50_ms
    vs_student = f"{m.accuracy - student.accuracy:+.2f}" if student else "—"
    return (
        f"| {m.artifact} | {m.runtime} ({m.provider}, {m.threads} thr) | {_size(manifest, m.artifact)} "
        f"| {m.accuracy:.2f} | {m.accuracy - teacher.accuracy:+.2f} | {vs_student} | {m.agreement:.2f} "
        f"| {m.latency.p50_ms:.3f} | {m.latency.p90_ms:.3f} | {speedup:.2f}× | {m.throughput_ips:,.0f} |"
    )


def _losses(info: dict) -> str:
    return " + ".join(f"{spec['weight']:g}·{spec['name']}" for spec in info["losses"])


def _models_section(manifest: Manifest) -> list[str]:
    teacher, student = manifest.artifacts.get("teacher"), manifest.artifacts.get("student")
    if not teacher or not student:
        return []
    ratio = teacher.info["parameters"] / student.info["parameters"]
    lines = [
        f"- teacher: `{teacher.info['arch']}`, {teacher.info['parameters']:,} parameters "
        f"({teacher.info.get('source', 'trained by edgepipe')})",
        f"- student: `{student.info['arch']}`, {student.info['parameters']:,} parameters ({ratio:.1f}× fewer), "
        f"loss {_losses(student.info)}, {student.info['epochs_run']} epochs, best val epoch "
        f"{student.info['best_epoch']} ({student.info['val_accuracy']:.2f} % val)",
    ]
    baseline = manifest.artifacts.get("baseline")
    if baseline:
        lines.append(
            f"- baseline student: same architecture and budget, loss {_losses(baseline.info)}, "
            f"best val epoch {baseline.info['best_epoch']} ({baseline.info['val_accuracy']:.2f} % val)"
        )
    pytorch = {m.artifact: m.accuracy for m in manifest.measurements if m.runtime == "pytorch"}
    if "baseline" in pytorch and "student" in pytorch:
        lines.append(
            f"- **KD gain** (test top-1, KD student − baseline student): "
            f"{pytorch['student'] - pytorch['baseline']:+.2f} points"
        )
    return lines + [""]


def _cpu_accuracy(manifest: Manifest, name: str) -> float | None:
    return next((m.accuracy for m in manifest.measurements if m.artifact == name and m.provider != "CUDA"), None)


def _worst_layers(info: dict, count: int = 5) -> str:
    layers = info.get("worst_layers", [])[:count]
    return ", ".join(f"`{e['node'].split(';')[0]}` ({e['op']}) {e['sqnr_db']:.1f} dB" for e in layers) or "—"


def _int8_section(manifest: Manifest) -> list[str]:
    """Per int8 artifact: calibration method, test accuracy and drop vs the fp32 student, float layers and the
    worst layers by SQNR (int8 vs float activations on the calibration set)."""
    student = _cpu_accuracy(manifest, "student")
    records = [r for r in manifest.artifacts.values() if r.stage == "export" and r.info.get("precision") == "int8"]
    if not records or student is None:
        return []
    lines = [
        "## int8",
        "",
        "Test top-1 against the fp32 student; method and float layers were chosen on the validation split "
        f"(budget {records[0].info.get('max_int8_drop', '—')} points). Worst layers: lowest SQNR of an int8 "
        "activation against its float twin on the calibration set — for ONNX cumulative (int8 model vs float "
        "model), for TFLite per layer (both fed the same int8 inputs); TFLite names are cut at the first `;`.",
        "",
        "| artifact | calibration | top-1 % | Δ vs fp32 student | val Δ | float layers | five worst layers (SQNR) |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        info, accuracy = record.info, _cpu_accuracy(manifest, record.name)
        drop = f"{accuracy - student:+.2f}" if accuracy is not None else "—"
        val_drop = f"{0.0 - info['val_drop']:+.2f}" if "val_drop" in info else "—"
        float_layers = ", ".join(f"`{n}`" for n in info.get("float_layers", [])) or "none"
        lines.append(
            f"| {record.name} | {info.get('calibration_method', info.get('quantization', '—'))} "
            f"| {accuracy if accuracy is not None else '—'} | {drop} | {val_drop} | {float_layers} "
            f"| {_worst_layers(info)} |"
        )
    reference, ours = _cpu_accuracy(manifest, "onnx-int8-ort-defaults"), _cpu_accuracy(manifest, "onnx-int8")
    if reference is not None and ours is not None:
        lines += [
            "",
            f"onnx-int8 vs onnxruntime `quantize_static` with its defaults on the same model and calibration set: "
            f"{ours:.2f} % vs {reference:.2f} % ({ours - reference:+.2f} points).",
        ]
    return lines + [""]


def render_report(manifest: Manifest) -> str:
    """Markdown: what was run on what, one row per artifact × runtime, and what could not be measured."""
    data = manifest.data
    cpu = manifest.environment.get("cpu", {})
    lines = [
        "# edgepipe report",
        "",
        f"- data: `{data.source}` — train {data.train}, val {data.val}, test {data.test} (seed {data.seed}); "
        f"input {data.preprocessing.channels}×{data.preprocessing.height}×{data.preprocessing.width}, "
        f"mean {data.preprocessing.mean}, std {data.preprocessing.std}",
        f"- machine: {cpu.get('model', '?')}, {cpu.get('cores', '?')} cores, AVX2 {cpu.get('avx2')}, "
        f"AVX-512 {cpu.get('avx512')}, VNNI {cpu.get('vnni')}",
        f"- created {manifest.created}, edgepipe {manifest.edgepipe_version}; all versions in manifest.json",
        "",
    ]
    lines += _models_section(manifest)
    teacher = next((m for m in manifest.measurements if m.artifact == "teacher"), None)
    student = next((m for m in manifest.measurements if m.artifact == "student"), None)
    if teacher is None:
        return "\n".join(lines + ["No measurements yet: run `edgepipe bench RUN_DIR`.", ""])
    batch = next(m.throughput.batch for m in manifest.measurements)
    lines += [
        f"Accuracy on the test split ({data.test} samples). Latency: batch 1, after warm-up. "
        f"Speed-up: teacher p50 / row p50. Throughput: images/s at batch {batch}.",
        "",
        "| artifact | runtime | size | top-1 % | Δ vs teacher | Δ vs student | agreement % | p50 ms | p90 ms "
        "| speed-up | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(manifest, m, teacher, student) for m in manifest.measurements),
        "",
    ]
    lines += _int8_section(manifest)
    if manifest.skipped:
        lines += ["Not measured:", ""] + [f"- {s.artifact} on {s.runtime}: {s.reason}" for s in manifest.skipped] + [""]
    return "\n".join(lines)


def run_report(run: RunDir) -> str:
    """Write ``report.md`` beside the manifest and return its text."""
    text = render_report(run.manifest)
    write_text_atomic(run.path("report.md"), text)
    return text
