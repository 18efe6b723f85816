"""The verdict of a run: targets that failed to build (exit 5), artifacts over their accuracy budget after fallback
and QAT-KD, and the accuracy gate of a release build — every exported artifact, on its own runtime, against
`gate:` limits (exit 8)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from pipeline.config import GateConfig
from pipeline.errors import EdgepipeError, ExportError, GateError
from pipeline.formats import FORMATS
from pipeline.manifest import (
    QAT_SUFFIX,
    WITHIN_BUDGET,
    GateCheck,
    GateResult,
    Manifest,
    Measurement,
    TargetFailure,
)

BUDGET_RUNTIME = "export stage (validation split)"
WARNINGS_HINT = "if the figures are right after all, accept them with `gate.allow_warnings: [{kinds}]`"


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
    """Whether any limit is set (``allow_warnings`` alone sets none)."""
    limits = gate.model_dump(exclude={"targets", "allow_warnings"})
    return any(value is not None for value in limits.values()) or any(
        any(value is not None for value in limits.model_dump().values()) for limits in gate.targets.values()
    )


def file_over_budget(manifest: Manifest, name: str) -> str | None:
    """Why the exported file ``name`` is over its accuracy budget (its export info's ``over_budget``), or None."""
    record = manifest.artifacts.get(name)
    return record.info.get("over_budget") if record is not None and record.stage == "export" else None


def over_budget(manifest: Manifest) -> dict[str, str]:
    """Shipped artifacts still over their accuracy budget after fallback and QAT-KD, with why: every exported file
    whose ``over_budget`` is set, except a post-training int8 file whose ``<target>-qat`` file is within budget (the
    run ships that one)."""
    failed = {}
    for name in manifest.artifacts:
        reason = file_over_budget(manifest, name)
        rescued = name + QAT_SUFFIX in manifest.artifacts and file_over_budget(manifest, name + QAT_SUFFIX) is None
        if reason is not None and not rescued:
            failed[name] = reason
    return failed


def _budget_checks(manifest: Manifest, artifacts: set[str] | None) -> list[GateCheck]:
    """A broken ``within_budget`` check per artifact of ``over_budget``."""
    return [
        GateCheck(
            artifact=name, runtime=BUDGET_RUNTIME, limit=WITHIN_BUDGET, value=1, threshold=0, passed=False, reason=why
        )
        for name, why in over_budget(manifest).items()
        if artifacts is None or name in artifacts
    ]


def evaluate_gate(
    manifest: Manifest, gate: GateConfig, artifacts: set[str] | None = None, budget: bool = True
) -> GateResult | None:
    """Check each exported artifact's measurement (only ``artifacts`` when given) on its own runtime (CPU and, when
    measured, CUDA), and, with ``budget``, count each artifact over its accuracy budget as a broken check; None
    when no limit is configured."""
    if not gate_configured(gate):
        return None
    teacher = next((m for m in manifest.measurements if m.artifact == "teacher"), None)
    fp32_student = manifest.exported_student()  # student-pruned when the run prunes: int8 drops are against it
    student = next((m for m in manifest.measurements if m.artifact == fp32_student), None)
    checks = []
    for m in manifest.measurements:
        record = manifest.artifacts.get(m.artifact)
        if teacher is None or record is None or record.stage != "export":
            continue
        if artifacts is not None and m.artifact not in artifacts:
            continue
        if m.runtime != FORMATS.get(record.info["format"]).runtime:
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
    checks += _budget_checks(manifest, artifacts) if budget else []
    return GateResult(passed=all(c.passed for c in checks), checks=checks)


def raise_if_failed(result: GateResult | None) -> None:
    """GateError naming every broken limit (one line), or nothing when the gate passed or was not evaluated."""
    if result is None or result.passed:
        return
    broken = "; ".join(str(check) for check in result.checks if not check.passed)
    raise GateError(f"accuracy gate failed: {broken}", "the report is written and marked FAILED; no bundle")


def _failure_text(failure: TargetFailure, root: Path | None = None) -> str:
    """``target (reason; log: path)``, the log under ``root`` when given (left out when the reason names it)."""
    named = failure.log is None or failure.log in failure.reason
    log = "" if named else f"; log: {root / failure.log if root else failure.log}"
    return f"{failure.target} ({failure.reason.removeprefix(f'{failure.target}: ')}{log})"


def run_error(manifest: Manifest, root: Path | None = None, gate: bool = True) -> EdgepipeError | None:
    """The run's verdict as one error, or None when it passed: ExportError (exit 5) when a target failed to build,
    else GateError (exit 8) when an artifact is over budget or, with ``gate``, the accuracy gate the report stage
    evaluated (``manifest.gate``) failed or a sanity warning fails it (``manifest.warnings``, ``fails_gate``). The
    line names every failed, skipped and over-budget artifact, every broken limit and failing warning; log paths are
    under ``root`` when given."""
    failed = [f for f in manifest.failures if f.stage != "skipped"]
    skipped = [f.target for f in manifest.failures if f.stage == "skipped"]
    budget = over_budget(manifest)
    checks = manifest.gate.checks if gate and manifest.gate else []
    limits = [c for c in checks if not c.passed and c.limit != WITHIN_BUDGET]
    warnings = [w for w in manifest.warnings if w.fails_gate] if gate else []
    parts = [f"{len(failed)} failed to build: " + ", ".join(_failure_text(f, root) for f in failed)] if failed else []
    parts += [f"skipped: {', '.join(skipped)} (they depend on a failed target)"] if skipped else []
    parts += [f"over budget: {', '.join(f'{name} ({why})' for name, why in budget.items())}"] if budget else []
    parts += [f"accuracy gate failed: {'; '.join(str(c) for c in limits)}"] if limits else []
    parts += [f"sanity warnings fail the gate: {'; '.join(str(w) for w in warnings)}"] if warnings else []
    message = "; ".join(parts)
    written = f"the report ({root / 'report.md'})" if root else "the report"
    report = f"{written} is written and marked FAILED" if gate else "`edgepipe bench` and `report` show the rest"
    if failed:
        hints = [f.hint for f in failed if f.hint]
        built = any(record.stage == "export" for record in manifest.artifacts.values())
        others = "the other targets were built" if built else "no target was built"
        return ExportError(message, "; ".join([*dict.fromkeys(hints), f"{others}; {report}"]))
    if budget or limits or warnings:
        hints = [report]
        hints += ["`release` refuses an artifact over budget unless --allow-over-budget"] if budget or limits else []
        hints += [WARNINGS_HINT.format(kinds=", ".join(dict.fromkeys(w.kind for w in warnings)))] if warnings else []
        return GateError(message, "; ".join(hints))
    return None


def raise_if_run_failed(manifest: Manifest, root: Path | None = None, gate: bool = True) -> None:
    """Raise ``run_error`` when the run did not pass (after the report is written)."""
    error = run_error(manifest, root, gate)
    if error is not None:
        raise error
