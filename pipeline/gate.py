"""The accuracy gate of a release build: every exported artifact, on its own runtime, against `gate:` limits."""

from __future__ import annotations

from pydantic import BaseModel

from pipeline.config import GateConfig
from pipeline.errors import GateError
from pipeline.manifest import GateCheck, GateResult, Manifest, Measurement
from pipeline.report_prune import exported_student

NATIVE_RUNTIMES = {"onnx": "onnxruntime", "tflite": "tflite"}


class _Figures(BaseModel):
    """What the limits are checked against, for one measurement."""

    drop_vs_teacher: float
    int8_drop: float | None
    agreement: float | None
    p50_ms: float
    bytes: int | None


def _figures(m: Measurement, teacher: Measurement, student: Measurement | None, int8: bool) -> _Figures:
    return _Figures(
        drop_vs_teacher=round(teacher.accuracy - m.accuracy, 2),
        int8_drop=round(student.accuracy - m.accuracy, 2) if int8 and student else None,
        agreement=m.agreement,
        p50_ms=m.latency.p50_ms,
        bytes=m.file_bytes,
    )


def _checks(figures: _Figures, limits) -> list[tuple[str, float | None, float | None, bool]]:
    """(limit name, measured value, limit, broken) for every set limit; lower is better except agreement."""
    pairs = [
        ("max_drop_vs_teacher", figures.drop_vs_teacher, limits.max_drop_vs_teacher),
        ("max_int8_drop", figures.int8_drop, limits.max_int8_drop),
        ("max_p50_ms", figures.p50_ms, limits.max_p50_ms),
        ("max_bytes", figures.bytes, limits.max_bytes),
    ]
    checks = [
        (name, value, limit, value > limit) for name, value, limit in pairs if limit is not None and value is not None
    ]
    if limits.min_agreement is not None and figures.agreement is not None:
        checks.append(
            ("min_agreement", figures.agreement, limits.min_agreement, figures.agreement < limits.min_agreement)
        )
    return checks


def gate_configured(gate: GateConfig) -> bool:
    return any(value is not None for value in gate.model_dump(exclude={"targets"}).values()) or any(
        any(value is not None for value in limits.model_dump().values()) for limits in gate.targets.values()
    )


def evaluate_gate(manifest: Manifest, gate: GateConfig, artifacts: set[str] | None = None) -> GateResult | None:
    """Check each exported artifact's measurement (only ``artifacts`` when given) on its own runtime (CPU and, when
    measured, CUDA); None when no limit is configured."""
    if not gate_configured(gate):
        return None
    teacher = next((m for m in manifest.measurements if m.artifact == "teacher"), None)
    fp32_student = exported_student(manifest)  # student-pruned when the run prunes: int8 drops are against it
    student = next((m for m in manifest.measurements if m.artifact == fp32_student), None)
    checks = []
    for m in manifest.measurements:
        record = manifest.artifacts.get(m.artifact)
        if teacher is None or record is None or record.stage != "export":
            continue
        if artifacts is not None and m.artifact not in artifacts:
            continue
        if m.runtime != NATIVE_RUNTIMES[record.info["format"]]:
            continue  # a converted run (tf2onnx) is informative, not what ships
        figures = _figures(m, teacher, student, record.info["precision"] == "int8")
        for name, value, limit, broken in _checks(figures, gate.limits_for(m.artifact)):
            checks.append(
                GateCheck(
                    artifact=m.artifact,
                    runtime=f"{m.runtime} ({m.provider})",
                    limit=name,
                    value=value,
                    threshold=limit,
                    passed=not broken,
                )
            )
    return GateResult(passed=all(c.passed for c in checks), checks=checks)


def raise_if_failed(result: GateResult | None) -> None:
    """GateError naming every broken limit (one line), or nothing when the gate passed or was not evaluated."""
    if result is None or result.passed:
        return
    broken = "; ".join(str(check) for check in result.checks if not check.passed)
    raise GateError(f"accuracy gate failed: {broken}", "the report is written and marked FAILED; no bundle")
