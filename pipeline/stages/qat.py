"""Stage 5: quantization-aware distillation. The int8 targets still over their accuracy budget after the
post-training fallback (or all of them, ``quantize.qat.when: always``) are rebuilt as ``<target>-qat`` from a
QAT-KD student (trained once per run and reused while its inputs are unchanged), beside the post-training files, so
the report shows both. Training that fails costs the QAT-KD rows, never the post-training ones."""

from __future__ import annotations

from pipeline.errors import DataError, RunStateError
from pipeline.manifest import QAT_STUDENT, QAT_SUFFIX, ArtifactRecord, TargetFailure
from pipeline.rundir import RunDir
from pipeline.stages.export import Exporter, build_all, log_path, mtime, replace_failures, target_failure, with_parents
from pipeline.training import distributed
from pipeline.training.models import count_parameters, save_checkpoint
from pipeline.training.qat_kd import qat_distill
from pipeline.training.run_models import load_model, load_teacher
from targets import TARGETS

QAT_STUDENT_PATH = "checkpoints/student-qat.pt"


def _grid(run: RunDir, name: str) -> bool:
    """The reduce_range of a target's int8 weights: its own ``reduce_range`` option (with ``auto``, the one its int8
    search chose); a target without that option (TFLite int8) uses the full ±127 grid."""
    target = TARGETS.get(name)
    if target.options is None or "reduce_range" not in target.options.model_fields:
        return False
    configured = target.options_of(run.config).reduce_range
    if configured != "auto":
        return configured
    record = run.manifest.artifacts.get(name)
    return bool(record and record.info.get("settings", {}).get("reduce_range"))


def qat_targets(run: RunDir, records: list[ArtifactRecord]) -> tuple[list[str], bool, dict[str, str]]:
    """The shipped int8 targets to rebuild from a QAT-KD student — all of them (``when: always``), or those whose
    post-training int8 is still over budget after the fallback (``auto``: info ``over_budget``) — with the weight grid
    (reduce_range) to train on, and the targets left out because their grid differs from it (with why)."""
    when = run.config.quantize.qat.when
    if when == "never":
        return [], False, {}
    int8 = [r for r in records if TARGETS.get(r.name).precision == "int8" and not TARGETS.get(r.name).reference]
    names = [r.name for r in int8 if when == "always" or r.info.get("over_budget")]
    if not names:
        return [], False, {}
    reduce_range = any(_grid(run, name) for name in names)  # the ONNX grid wins: its ±64 is the coarser one
    left_out = {
        name: f"its int8 weights use ±{64 if _grid(run, name) else 127}, the QAT-KD student trained on "
        f"±{64 if reduce_range else 127} (export.onnx_int8.reduce_range)"
        for name in names
        if _grid(run, name) != reduce_range
    }
    return [name for name in names if name not in left_out], reduce_range, left_out


def ensure_qat_student(
    run: RunDir, reduce_range: bool, left_out: dict[str, str], force: bool = False
) -> ArtifactRecord:
    """Fine-tune the student under int8 fake quantization on the given weight grid while the teacher distils into
    it (reused when unchanged)."""
    source = run.shipped_student()  # the pruned student when the run prunes
    cfg, student_record = run.config.quantize.qat, run.require(source)
    onnx_int8 = TARGETS.get("onnx-int8").options_of(run.config)
    per_channel = onnx_int8.per_channel is not False  # auto: per-channel, the portable choice
    key = {
        "qat": cfg.model_dump(exclude={"when"}),
        "losses": [spec.model_dump() for spec in run.config.kd.losses],
        "grid": {"per_channel": per_channel, "reduce_range": reduce_range},
    }
    qat_id = run.artifact_id(QAT_STUDENT, key, [student_record.id, run.require("teacher").id])
    reused = None if force else run.manifest.reusable(QAT_STUDENT, qat_id, run.root)
    if reused:
        return reused
    model, summary = qat_distill(
        load_model(run, source),
        load_teacher(run),
        run.config.kd.losses,
        run.splits,
        cfg,
        seed=run.config.seed,
        progress_dir=run.path("checkpoints"),
        job_id=qat_id,
        per_channel=per_channel,
        reduce_range=reduce_range,
    )
    meta = {key: student_record.info[key] for key in ("arch", "arch_kwargs", "in_channels", "num_classes", "kind")}
    if "structure" in student_record.info:
        meta["structure"] = student_record.info["structure"]
    path = run.path(QAT_STUDENT_PATH)
    if distributed.is_main():
        save_checkpoint(model, path, meta)
    distributed.barrier()
    return run.record(
        QAT_STUDENT,
        "qat",
        qat_id,
        path,
        parent=source,
        info={
            **meta,
            "parameters": count_parameters(model),
            "int8_only": True,
            "targets_left_out": left_out,
            **summary,
        },
    )


def run_qat(run: RunDir, targets: list[str] | None = None, force: set[str] | None = None) -> list[ArtifactRecord]:
    """Rebuild from the QAT-KD student the int8 targets among ``targets`` (default: the config's) that need it
    (:func:`qat_targets`; they are read from the manifest, as the export stage left them), rebuilding those in
    ``force``. Returns the ``<target>-qat`` records built or reused; the failures of the ``<target>-qat`` artifacts
    tried are replaced in ``manifest.failures`` (every one of them when training fails)."""
    force = force or set()
    names = run.config.export.targets if targets is None else targets
    exported = [run.manifest.artifacts[name] for name in names if name in run.manifest.artifacts]
    qat_names, reduce_range, left_out = qat_targets(run, exported)
    records, failures = _build_qat(run, force, qat_names, reduce_range, left_out) if qat_names else ([], [])
    replace_failures(run, {name + QAT_SUFFIX for name in with_parents(names)}, failures)
    return records


def _build_qat(
    run: RunDir, force: set[str], names: list[str], reduce_range: bool, left_out: dict[str, str]
) -> tuple[list[ArtifactRecord], list[TargetFailure]]:
    exporter = Exporter(run, force, source=QAT_STUDENT)
    log = log_path(run, QAT_STUDENT)
    before = mtime(log)
    try:
        ensure_qat_student(run, reduce_range, left_out, force=bool(force & set(names)))
    except (RunStateError, DataError):  # an unreadable training image ends the stage: the data's fault
        raise
    except Exception as e:  # noqa: BLE001 (training that fails costs the QAT-KD rows, never the post-training ones)
        failure = target_failure(run, e, QAT_STUDENT, "qat", log, before)
        failures = [failure.model_copy(update={"target": name + QAT_SUFFIX}) for name in names]
        for failure in failures:
            run.manifest.artifacts.pop(failure.target, None)  # built from an earlier QAT-KD student
        return [], failures
    return build_all(exporter, names), list(exporter.failures.values())
