"""What the report says, shared by report.md and report.html: every figure comes from the manifest.

Text is markdown-inline (`code`, **bold**); each renderer turns it into its own markup.
"""

from __future__ import annotations

import statistics
from typing import NamedTuple

from pipeline.manifest import LatencyStats, Manifest, Measurement, TargetFailure, is_baseline
from pipeline.measure.machine_load import free_cores
from pipeline.report.gate import over_budget

MAIN_HEADER = [
    "artifact",
    "runtime",
    "size",
    "size ×",
    "top-1 %",
    "Δ vs teacher",
    "Δ vs student",
    "agreement %",
    "p50 ms",
    "p90 ms",
    "speed-up",
    "img/s",
]
TIMING_HEADER = [
    "artifact",
    "runtime",
    "batch",
    "threads",
    "runs",
    "rounds",
    "spread",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ± sd ms",
    "img/s",
    "GMAC/s",
]
FOOTPRINT_HEADER = [
    "artifact",
    "runtime",
    "file",
    "parameters",
    "MMAC / image",
    "peak RSS MiB",
    "runtime RSS MiB",
    "load ms",
    "first call ms",
]
INT8_HEADER = [
    "artifact",
    "calibration · settings",
    "int8 MACs (weights)",
    "top-1 %",
    "Δ vs fp32 student",
    "val Δ",
    "float layers",
    "budget",
    "five worst layers (SQNR)",
]


class Int8Table(NamedTuple):
    """The int8 section: what its figures mean, one row per int8 artifact, the onnxruntime-defaults comparison."""

    intro: str
    rows: list[list[str]]
    reference: str | None


def summary_bullets(manifest: Manifest) -> list[str]:
    """Data, machine and versions, one bullet each."""
    data = manifest.data
    cpu = manifest.environment.get("cpu", {})
    return [
        f"data: `{data.source}` — train {data.train}, val {data.val}, test {data.test} (seed {data.seed}); "
        f"input {data.preprocessing.channels}×{data.preprocessing.height}×{data.preprocessing.width}, "
        f"mean {data.preprocessing.mean}, std {data.preprocessing.std}",
        f"machine: {cpu.get('model', '?')}, {cpu.get('cores', '?')} cores, AVX2 {cpu.get('avx2')}, "
        f"AVX-512 {cpu.get('avx512')}, VNNI {cpu.get('vnni')}",
        *bench_load_bullets(manifest),
        f"created {manifest.created}, edgepipe {manifest.edgepipe_version}; all versions in manifest.json",
    ]


def _load_figures(snapshot) -> tuple[str, str]:
    """The 1-minute load average and the busy cores of a load snapshot, "?" where unknown."""
    load = f"{snapshot.load_average[0]:.2f}" if snapshot.load_average else "?"
    busy = f"{snapshot.busy_cores:.1f}" if snapshot.busy_cores is not None else "?"
    return load, busy


def noisy_figures(manifest: Manifest) -> list[str]:
    """Each timing still noisy after its re-measure, as "artifact on runtime (batch B, T thr)"."""
    return [
        f"{m.artifact} on {m.runtime} (batch {t.latency.batch}, {t.threads} thr)"
        for m in shown_measurements(manifest)
        for t in m.timings
        if t.latency.noisy
    ]


def bench_load_bullets(manifest: Manifest) -> list[str]:
    """The machine's load around the bench (load average and busy cores before → after, usable cores) with the
    noisy figures, then thread counts capped at the idle cores and thread warnings; empty for older manifests."""
    bench = manifest.bench_load
    if bench is None:
        return []
    (load_before, busy_before), (load_after, busy_after) = _load_figures(bench.before), _load_figures(bench.after)
    noisy = noisy_figures(manifest)
    before = bench.before
    idle = before.idle_cores if before.busy_cores is None else free_cores(before.busy_cores, before.usable_cores)
    idle_text = f"{idle} idle" if idle >= 1 else "none idle, 1 used"  # idle_cores is at least 1: one is always used
    bullets = [
        f"bench load: load average {load_before} → {load_after} (1 min), busy cores {busy_before} → {busy_after} "
        f"of {before.usable_cores} usable ({idle_text} at the start); noisy figures: "
        + (", ".join(noisy) if noisy else "none")
    ]
    capped: dict[tuple, list[str]] = {}
    for m in shown_measurements(manifest):
        if m.thread_cap is not None:
            capped.setdefault((m.runtime, tuple(m.thread_cap.requested), m.thread_cap.reason), []).append(m.artifact)
    for (runtime, requested, reason), names in capped.items():
        counts = ", ".join(map(str, requested))
        bullets.append(f"{', '.join(names)} on {runtime}: not timed at {counts} thread(s): {reason}")
    return bullets + [f"warning: {w}" for w in bench.warnings]


CLASS_COUNTS_HEADER = ["class", "train", "val", "test"]
CLASS_COUNTS_CAPTION = "Images per class in each split (from the manifest's data.counts)."


def class_count_rows(manifest: Manifest) -> list[list[str]]:
    """One row per class: its images in train, val and test; empty for manifests without counts. A class missing
    from a split (kept by data.small_classes: warn) shows 0 in bold."""
    counts = manifest.data.counts if manifest.data else None
    if not counts:
        return []
    splits = CLASS_COUNTS_HEADER[1:]
    rows = []
    for name in manifest.data.classes:
        cells = [counts.get(split, {}).get(name, 0) for split in splits]
        rows.append([f"`{name}`", *(f"**{n}**" if n == 0 else str(n) for n in cells)])
    return rows


def data_notes(manifest: Manifest) -> list[str]:
    """The data warnings and the skipped files' count, one bullet each."""
    data = manifest.data
    if data is None:
        return []
    notes = [f"warning: {note}" for note in data.notes]
    if data.skipped_files:
        notes.append(
            f"{data.skipped_files} file(s) in the image folder are not images: skipped (listed in logs/data.log)"
        )
    return notes


def _size(size: int | None) -> str:
    return f"{size / 1024:.1f} KiB" if size else "—"


SELF_REFERENCE = "reference (the model itself)"


def reference_is_student(manifest: Manifest) -> bool:
    """True when no teacher was configured for a shipped trained model: the ``teacher`` is the student itself."""
    teacher = manifest.artifacts.get("teacher")
    return bool(teacher and teacher.info.get("same_model_as") == "student")


def reference_name(manifest: Manifest) -> str:
    """What the report calls the model every artifact is compared with: the teacher, or the shipped model itself."""
    return SELF_REFERENCE if reference_is_student(manifest) else "teacher"


def shown_measurements(manifest: Manifest) -> list[Measurement]:
    """The measurements the tables and figures show: the teacher's rows left out when they are the student's."""
    if not reference_is_student(manifest):
        return manifest.measurements
    return [m for m in manifest.measurements if m.artifact != "teacher"]


def main_header(manifest: Manifest) -> list[str]:
    """``MAIN_HEADER`` with the reference named as the report names it."""
    return [f"Δ vs {reference_name(manifest)}" if cell == "Δ vs teacher" else cell for cell in MAIN_HEADER]


def teacher_and_student(manifest: Manifest) -> tuple[Measurement | None, Measurement | None]:
    """The first teacher and student measurements, the references of the main table."""
    teacher = next((m for m in manifest.measurements if m.artifact == "teacher"), None)
    student = next((m for m in manifest.measurements if m.artifact == "student"), None)
    return teacher, student


def row_runtime(m: Measurement) -> str:
    return f"{m.runtime} ({m.provider}, {m.threads} thr)"


def _largest_batch(m: Measurement):
    """The timing at the largest batch and the headline's thread count (else the fewest threads there)."""
    batch = max(t.latency.batch for t in m.timings)
    return m.timing(batch, m.threads) or m.timing(batch)


NOISY_NOTE = (
    "noisy: the p50s of its timing rounds still differed by more than bench.max_spread of their median after a "
    "re-measure (spread = (max − min) / median), so the machine's load moved that figure; time it again on a "
    "quieter machine before relying on it."
)


def main_caption(manifest: Manifest) -> str:
    first = manifest.measurements[0]
    reference = reference_name(manifest)
    return (
        f"Accuracy on the test split ({manifest.data.test} samples). Latency: batch 1 at {first.threads} "
        "thread (the headline: one thread holds its figure on a busy machine), the median of interleaved rounds' "
        "p50s after warm-up; every batch size and thread count is in the latency table. "
        f"Size ×: {reference} file bytes / row file bytes. Speed-up: {reference} p50 / row p50, both at batch 1 "
        f"and {first.threads} thread. Throughput: images/s at batch {_largest_batch(first).latency.batch}, "
        f"{first.threads} thread. "
        f"A p50 marked {NOISY_NOTE}"
    )


def p50_cell(stats: LatencyStats) -> str:
    """A p50 in ms, marked when noisy: ``0.289 (noisy: spread 40 %)``."""
    return f"{stats.p50_ms:.3f}" + (f" (noisy: spread {stats.spread * 100:.0f} %)" if stats.noisy else "")


def speedup(reference: Measurement, m: Measurement) -> float | None:
    """``reference`` p50 / ``m`` p50 at the batch and thread count of ``m``'s headline; None when the reference
    has no timing there."""
    timing = reference.timing(m.latency.batch, m.threads)
    return timing.latency.p50_ms / m.latency.p50_ms if timing else None


def main_rows(manifest: Manifest, teacher: Measurement, student: Measurement | None) -> list[list[str]]:
    """The main table: one row per measurement (an artifact over its budget marked so), then one per target that
    failed to build or was skipped, with why."""
    budget = over_budget(manifest)
    rows = [main_cells(m, teacher, student, m.artifact in budget) for m in shown_measurements(manifest)]
    return rows + [failure_cells(failure) for failure in manifest.failures]


def failure_cells(failure: TargetFailure) -> list[str]:
    """The main-table row of an artifact that was not built: FAILED (or SKIPPED) and why, no figures."""
    verdict = "SKIPPED" if failure.stage == "skipped" else "FAILED"
    return [failure.target, f"**{verdict}**: {failure.reason}", *["—"] * (len(MAIN_HEADER) - 2)]


def main_cells(m: Measurement, teacher: Measurement, student: Measurement | None, over: bool = False) -> list[str]:
    """One main-table row (columns of ``MAIN_HEADER``); ``over``: the artifact is over its accuracy budget."""
    faster = speedup(teacher, m)
    vs_student = f"{m.accuracy - student.accuracy:+.2f}" if student else "—"
    size, teacher_size = m.file_bytes, teacher.file_bytes
    return [
        f"{m.artifact} (**over budget**)" if over else m.artifact,
        row_runtime(m),
        _size(size),
        f"{teacher_size / size:.2f}×" if size and teacher_size else "—",
        f"{m.accuracy:.2f}",
        f"{m.accuracy - teacher.accuracy:+.2f}",
        vs_student,
        f"{m.agreement:.2f}" if m.agreement is not None else "—",
        p50_cell(m.latency),
        f"{m.latency.p90_ms:.3f}",
        f"{faster:.2f}×" if faster is not None else "—",
        f"{_largest_batch(m).throughput_ips:,.0f}",
    ]


def timing_rows(measurements: list[Measurement]) -> list[list[str]]:
    """Every batch size × thread count of every row (columns of ``TIMING_HEADER``)."""
    rows = []
    for m in measurements:
        for t in m.timings:
            stats = t.latency
            rows.append(
                [
                    m.artifact,
                    f"{m.runtime} ({m.provider})",
                    str(stats.batch),
                    str(t.threads),
                    str(stats.runs),
                    str(stats.rounds),
                    f"{stats.spread * 100:.0f} %" if stats.spread is not None else "—",
                    p50_cell(stats),
                    f"{stats.p90_ms:.3f}",
                    f"{stats.p99_ms:.3f}",
                    f"{stats.mean_ms:.3f} ± {stats.stdev_ms:.3f}",
                    f"{t.throughput_ips:,.0f}",
                    f"{t.gmac_per_s:.2f}" if t.gmac_per_s is not None else "—",
                ]
            )
    return rows


def footprint_rows(measurements: list[Measurement]) -> list[list[str]]:
    """File size, parameters, MACs and memory of every row (columns of ``FOOTPRINT_HEADER``)."""
    return [
        [
            m.artifact,
            f"{m.runtime} ({m.provider})",
            _size(m.file_bytes),
            f"{m.params:,}" if m.params is not None else "—",
            f"{m.macs / 1e6:.3f}" if m.macs is not None else "—",
            f"{m.peak_rss_mib:.1f}" if m.peak_rss_mib is not None else "—",
            f"{m.runtime_rss_mib:.1f}" if m.runtime_rss_mib is not None else "—",
            f"{m.load_ms:.1f}" if m.load_ms is not None else "—",
            f"{m.first_call_ms:.2f}" if m.first_call_ms is not None else "—",
        ]
        for m in measurements
    ]


def unmeasured_bullets(measurements: list[Measurement]) -> list[str]:
    """Why a row's field is empty ("—"): one bullet per row and reason, naming the fields it cost."""
    bullets = []
    for m in measurements:
        by_reason: dict[str, list[str]] = {}
        for field, reason in m.unmeasured.items():
            by_reason.setdefault(reason, []).append(field)
        bullets += [f"{m.artifact} on {m.runtime}: no {', '.join(f)}: {reason}" for reason, f in by_reason.items()]
    return bullets


FOOTPRINT_CAPTION = (
    "Parameters: PyTorch modules count their parameters (BatchNorm included); ONNX files onnx-tool's count of "
    "stored weights (BatchNorm folded; int8 scales and zero points included); TFLite files the elements of their "
    "constant tensors. MACs: multiply-accumulates of convolutions and matrix products per image. Peak RSS: a fresh "
    "process that imports the runtime, loads the model and runs one image; runtime RSS: the same process after "
    "the import, before loading. Load: from nothing to the model ready for a batch of 1 at 1 thread (PyTorch: "
    "checkpoint read and module built; onnxruntime: session created; TFLite: interpreter built, tensors allocated); "
    "first call: the first batch of 1 after it, before any warm-up."
)
TIMING_CAPTION = (
    "Milliseconds per call of one pre-built batch. Per batch size the thread counts take turns in rounds (warm-up "
    "first; each round times each thread count for a share of the minimum count and time): p50 is the median of "
    "the rounds' p50s, spread = (max − min) / median of them; p90, p99 and mean ± sd pool every call. A figure "
    "whose spread exceeds bench.max_spread is timed again in fresh rounds and marked noisy if it still does. "
    "GMAC/s: MACs × batch / p50."
)


def parity_bullets(manifest: Manifest) -> list[str]:
    """Converted artifacts (TFLite through tf2onnx) against the runtime they were made for."""
    return [
        f"{m.artifact} on {m.runtime}: top-1 agreement {m.parity.top1_agreement:.2f} % with {m.parity.reference}, "
        f"largest logit difference {m.parity.max_abs_diff:.4g}"
        for m in manifest.measurements
        if m.parity is not None
    ]


def _losses(info: dict) -> str:
    return " + ".join(f"{spec['weight']:g}·{spec['name']}" for spec in info["losses"])


def _file_teacher_note(info: dict) -> str:
    """How a teacher of another framework ran: its runtime, layout, normalization and outputs."""
    if info.get("kind") != "file":
        return ""
    face = info["interface"]
    quantized = ", int8 input and output dequantized" if face["input"].get("scale") is not None else ""
    outputs = ", softmax probabilities taken as log-probabilities" if face["outputs"] == "probabilities" else ""
    return (
        f"; run on **{face['runtime']}**, fed {face['input']['layout']} {face['input']['shape']} as "
        f"(pixel × {face['pixel_scale']:.6g} − {face['mean']}) / {face['std']} "
        f"(normalization from {face['normalization_from']}){quantized}{outputs}"
    )


def model_bullets(manifest: Manifest) -> list[str]:
    """Teacher, student, baselines and KD gain; empty until both teacher and student exist."""
    teacher, student = manifest.artifacts.get("teacher"), manifest.artifacts.get("student")
    if not teacher or not student:
        return []
    if student.info.get("given"):
        return _given_bullets(manifest)
    ratio = teacher.info["parameters"] / student.info["parameters"]
    bullets = [
        f"teacher: `{teacher.info['arch']}`, {teacher.info['parameters']:,} parameters "
        f"({teacher.info.get('source', 'trained by edgepipe')}){_file_teacher_note(teacher.info)}",
        f"student: `{student.info['arch']}`, {student.info['parameters']:,} parameters ({ratio:.1f}× fewer), "
        f"loss {_losses(student.info)}, {student.info['epochs_run']} epochs, best val epoch "
        f"{student.info['best_epoch']} ({student.info['val_accuracy']:.2f} % val)",
    ]
    return bullets + _baseline_bullets(manifest)


def baseline_names(manifest: Manifest) -> list[str]:
    """The labels-only baseline students recorded (``distill.baseline``): ``baseline``, then ``baseline-2`` … when
    ``distill.baseline_seeds`` trained more, in training-seed order."""
    return [name for name in manifest.artifacts if is_baseline(name)]


def train_seed(manifest: Manifest, name: str) -> int | None:
    """The training seed of trained model ``name``: its ``info.train_seed``, else (a record from before it was
    recorded) the run's seed."""
    return manifest.artifacts[name].info.get("train_seed", manifest.config.get("seed"))


def _baseline_bullets(manifest: Manifest) -> list[str]:
    """What the baseline students are, and the KD gain over those measured on PyTorch."""
    names = baseline_names(manifest)
    if not names:
        return []
    infos = [manifest.artifacts[name].info for name in names]
    if len(names) == 1:
        about = (
            f"baseline student: same architecture and budget, loss {_losses(infos[0])}, "
            f"best val epoch {infos[0]['best_epoch']} ({infos[0]['val_accuracy']:.2f} % val)"
        )
    else:
        seeds = ", ".join(str(train_seed(manifest, name)) for name in names)
        epochs = ", ".join(str(info["best_epoch"]) for info in infos)
        val = ", ".join(f"{info['val_accuracy']:.2f}" for info in infos)
        about = (
            f"baseline students: {len(names)} training seeds ({seeds}), same architecture and budget, loss "
            f"{_losses(infos[0])}, best val epochs {epochs} ({val} % val)"
        )
    pytorch = {m.artifact: m.accuracy for m in manifest.measurements if m.runtime == "pytorch"}
    measured = [(train_seed(manifest, name), pytorch[name]) for name in names if name in pytorch]
    if "student" not in pytorch or not measured:
        return [about]
    return [about, kd_gain_line(pytorch["student"], measured)]


def kd_gain_line(student: float, baselines: list[tuple[int | None, float]]) -> str:
    """The KD gain bullet: the KD student's test top-1 (percent) minus the mean of the baselines' (each given as
    (training seed, test top-1 percent)).

    With two or more baselines it gives their seed-to-seed spread (sample std and range, points) and says whether
    the gain is larger than it (the gain exceeds the std and the KD student beats every baseline seed), a loss
    larger than it (see :func:`loss_beyond_spread`), or neither."""
    head = "**KD gain** (test top-1, KD student − "
    if len(baselines) == 1:
        ((_, baseline),) = baselines
        return (
            f"{head}baseline student): {student - baseline:+.2f} points; one baseline seed: seed-to-seed spread not "
            "measured (distill.baseline_seeds: 3 measures it)"
        )
    scores = [score for _, score in baselines]
    gain, std = student - statistics.mean(scores), statistics.stdev(scores)
    best_seed, best = max(baselines, key=lambda baseline: baseline[1])
    short = []  # why the gain is not larger than the spread
    if gain <= std:
        short.append("the gain does not exceed the std")
    if student <= best:
        short.append(f"baseline seed {best_seed} scores {best:.2f} %, not below the KD student's {student:.2f} %")
    if loss_beyond_spread(student, scores):
        verdict = (
            "a loss larger than the seed-to-seed spread (the KD student is below the baselines' mean by more than "
            "the std and below every baseline seed)"
        )
    elif short:
        verdict = f"not larger than the seed-to-seed spread ({'; '.join(short)})"
    else:
        verdict = (
            "larger than the seed-to-seed spread (the gain exceeds the std and the KD student beats every baseline "
            "seed)"
        )
    return (
        f"{head}mean of {len(scores)} baseline students): {gain:+.2f} points; baselines' seed-to-seed std "
        f"{std:.2f} points, range {min(scores):.2f}–{max(scores):.2f} % (training seeds "
        f"{', '.join(str(seed) for seed, _ in baselines)}): {verdict}"
    )


def loss_beyond_spread(student: float, baselines: list[float]) -> bool:
    """Whether the KD student's test top-1 (percent) is below two or more baselines' mean by more than their
    seed-to-seed std (sample) and below every one of them: distillation cost accuracy beyond seed noise."""
    return student < min(baselines) and statistics.mean(baselines) - student > statistics.stdev(baselines)


def _given_bullets(manifest: Manifest) -> list[str]:
    """A trained model shipped as given (``distill: null``): where it came from, and what it is compared with."""
    teacher, student = manifest.artifacts["teacher"], manifest.artifacts["student"]
    bullets = [
        f"student: `{student.info['arch']}`, {student.info['parameters']:,} parameters, shipped as trained: "
        f"`{student.info['source']}` (sha256 {student.info['source_sha256'][:12]}), no distillation"
    ]
    if reference_is_student(manifest):
        return bullets + [f"{SELF_REFERENCE}: no teacher configured; agreement and Δ are against the shipped weights"]
    return bullets + [
        f"reference (teacher): `{teacher.info['arch']}`, {teacher.info['parameters']:,} parameters "
        f"({teacher.info.get('source', 'trained by edgepipe')}){_file_teacher_note(teacher.info)}"
    ]


def _cpu_accuracy(manifest: Manifest, name: str) -> float | None:
    return next((m.accuracy for m in manifest.measurements if m.artifact == name and m.provider != "CUDA"), None)


def _worst_layers(info: dict, count: int = 5) -> str:
    layers = info.get("worst_layers", [])[:count]

    def figure(e: dict) -> str:  # an exact (all-zero) tensor has no dB; a degenerate range says so
        db = "exact" if e["sqnr_db"] is None else f"{e['sqnr_db']:.1f} dB"
        return f"{db}, degenerate range" if e.get("degenerate") else db

    return ", ".join(f"`{e['node'].split(';')[0]}` ({e['op']}) {figure(e)}" for e in layers) or "—"


def _int8_settings(info: dict) -> str:
    """Calibration method and the quantization settings the search chose (``settings`` of the record)."""
    settings = dict(info.get("settings", {}))
    method = settings.pop("method", info.get("calibration_method", info.get("quantization", "—")))
    chosen = [
        (key if value else f"no {key}") if isinstance(value, bool) else f"{key} {value}"
        for key, value in settings.items()
    ]
    return " · ".join([str(method), *chosen])


def _int8_share(info: dict) -> str:
    share = info.get("int8_share") or {}
    if "macs" not in share:
        return share.get("unmeasured", "—")
    return f"{share['macs']:.0%} ({share['weight_bytes']:.0%})"


def _float_layers(info: dict) -> str:
    """The layers the fallback kept float, then the compute nodes that run in float with their MACs (a float layer
    can take its readers along, and a quantizer can leave a node float on its own)."""
    named = ", ".join(f"`{n}`" for n in info.get("float_layers", [])) or "none"
    compute = (info.get("int8_share") or {}).get("float_layers", [])
    if not compute:
        return named
    return f"{named}; float compute: " + ", ".join(f"`{c['node']}` ({c['macs']:,} MACs)" for c in compute)


def int8_table(manifest: Manifest) -> Int8Table | None:
    """Per int8 artifact: calibration method and settings, its int8 share of MACs (and of weight elements), test
    accuracy and drop vs the fp32 student, float layers, whether it is within its budget and the worst layers by
    SQNR (int8 vs float activations on the calibration set); None without int8 measurements."""
    student = _cpu_accuracy(manifest, manifest.exported_student())  # the student the int8 files were made from
    records = [r for r in manifest.artifacts.values() if r.stage == "export" and r.info.get("precision") == "int8"]
    if not records or student is None:
        return None
    intro = (
        "Test top-1 against the fp32 student; method, settings and float layers were chosen on the validation split "
        f"(budget {records[0].info.get('max_int8_drop', '—')} points, over only when significantly so on validation; "
        f"at least {records[0].info.get('min_int8_share', '—')} of MACs in int8). int8 MACs: share of the "
        "convolution and matrix-product MACs that run on int8 inputs and weights (in brackets: of their weight "
        "elements). Worst layers: lowest SQNR of an int8 activation against its float twin on the calibration set "
        "— for ONNX cumulative (int8 model vs float model), for TFLite per layer (both fed the same int8 inputs); "
        "TFLite names are cut at the first `;`."
    )
    rows = []
    for record in records:
        info, accuracy = record.info, _cpu_accuracy(manifest, record.name)
        over = info.get("over_budget")
        budget = "reference" if "within_budget" not in info else f"**over**: {over}" if over else "within"
        rows.append(
            [
                record.name,
                _int8_settings(info),
                _int8_share(info),
                f"{accuracy if accuracy is not None else '—'}",
                f"{accuracy - student:+.2f}" if accuracy is not None else "—",
                f"{0.0 - info['val_drop']:+.2f}" if "val_drop" in info else "—",
                _float_layers(info),
                budget,
                _worst_layers(info),
            ]
        )
    reference, ours = _cpu_accuracy(manifest, "onnx-int8-ort-defaults"), _cpu_accuracy(manifest, "onnx-int8")
    comparison = None
    if reference is not None and ours is not None:
        comparison = (
            f"onnx-int8 vs onnxruntime `quantize_static` with its defaults on the same model and calibration set: "
            f"{ours:.2f} % vs {reference:.2f} % ({ours - reference:+.2f} points)."
        )
    return Int8Table(intro, rows, comparison)


def skipped_bullets(manifest: Manifest) -> list[str]:
    return [f"{s.artifact} on {s.runtime}: {s.reason}" for s in manifest.skipped]


def failed_lines(manifest: Manifest) -> list[str]:
    """The FAILED block that opens the report: a verdict, then one line per target that failed to build (reason,
    hint, log), per artifact over its accuracy budget after fallback and QAT-KD, and per target skipped because one
    it is converted from failed; empty when there are none."""
    failed = [f for f in manifest.failures if f.stage != "skipped"]
    skipped = [f for f in manifest.failures if f.stage == "skipped"]
    budget = over_budget(manifest)
    counts = [
        (len(failed), "failed to build"),
        (len(budget), "over its accuracy budget" if len(budget) == 1 else "over their accuracy budget"),
        (len(skipped), "skipped"),
    ]
    if not failed and not budget and not skipped:
        return []
    lines = ["**FAILED** — " + ", ".join(f"{count} {what}" for count, what in counts if count)]
    for f in failed:
        step = "QAT-KD training" if f.stage == "qat" else "export"
        hint = f"; hint: {f.hint}" if f.hint else ""
        log = f"; log: `{f.log}`" if f.log and f.log not in f.reason else ""  # converters name it in the reason
        lines.append(f"`{f.target}` failed to build ({step}): {f.reason}{hint}{log}")
    lines += [f"`{name}` is over its accuracy budget: {why}" for name, why in budget.items()]
    lines += [f"`{f.target}` was skipped: {f.reason}" for f in skipped]
    return lines


def gate_lines(manifest: Manifest) -> list[str]:
    """The gate's verdict, then one line per check (broken ones first); empty when no gate is configured."""
    gate = manifest.gate
    if gate is None:
        return []
    broken = [c for c in gate.checks if not c.passed]
    if broken:
        verdict = f"**FAILED: accuracy gate** — {len(broken)} of {len(gate.checks)} limits broken"
    elif not gate.passed:
        verdict = f"**FAILED: accuracy gate** — sanity warnings fail it (see Warnings); {len(gate.checks)} limits kept"
    else:
        verdict = f"**Accuracy gate passed** — {len(gate.checks)} limits checked"
    return [verdict, *(str(c) for c in broken), *(str(c) for c in gate.checks if c.passed)]
