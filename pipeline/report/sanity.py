"""Sanity warnings: figures that look wrong though no stage failed, found in a benched run's manifest.

- **chance-level**: a student or exported artifact whose test top-1 is not above chance. Chance is the larger of
  1 / classes and the largest class's share of the test split (a model that always answers that class scores it);
  "above" means by more than ``CHANCE_SIGMAS`` binomial standard errors of that rate over the test images, so a
  small test split does not flag a weak but working model, and a 10-class model at 10.03 % on 10 000 images is
  flagged.
- **teacher-not-better**: the teacher scores no higher than the student distilled from it (skipped without
  distillation, when the run's reference is the student itself, and when both score 100 %).
- **kd-below-baseline**: the distilled student scores below the same student trained from labels alone
  (``distill.baseline``), on the same test split; with several baselines (``distill.baseline_seeds``), below
  every one of them and below their mean by more than their seed-to-seed std (a loss beyond seed noise).

Each warning is recorded in the manifest, printed on stderr and shown near the top of the report. When the gate
is configured it fails the gate (exit 8) unless ``gate.allow_warnings`` names its kind. Torch-free (the report
imports it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from pipeline import progress
from pipeline.config import GateConfig
from pipeline.manifest import PRUNED_STUDENT, QAT_STUDENT, Manifest, SanityKind, SanityWarning
from pipeline.report.gate import gate_configured
from pipeline.report.sections import baseline_names, loss_beyond_spread, reference_is_student, train_seed

if TYPE_CHECKING:
    from pipeline.rundir import RunDir

CHANCE_SIGMAS = 3.0
STUDENTS = ("student", PRUNED_STUDENT, QAT_STUDENT)


def _accuracy(manifest: Manifest, name: str) -> float | None:
    """The best test top-1 (percent) of artifact ``name`` over its runtimes; None when it was not measured."""
    return max((m.accuracy for m in manifest.measurements if m.artifact == name), default=None)


def chance_threshold(manifest: Manifest) -> tuple[float, float, str] | None:
    """(chance, threshold, what chance is) in percent: top-1 at or below ``threshold`` is not above chance; None
    without a recorded data split."""
    data = manifest.data
    if data is None or data.test == 0 or not data.classes:
        return None
    uniform = 1 / len(data.classes)
    largest = max((data.counts or {}).get("test", {}).values(), default=0) / data.test
    chance = max(uniform, largest)
    threshold = chance + CHANCE_SIGMAS * math.sqrt(chance * (1 - chance) / data.test)
    what = f"1/{len(data.classes)} classes" if chance == uniform else "the largest test class's share"
    return 100 * chance, 100 * threshold, what


def _chance_warnings(manifest: Manifest) -> list[tuple[SanityKind, str, str]]:
    limits = chance_threshold(manifest)
    if limits is None:
        return []
    chance, threshold, what = limits
    shipped = [name for name, r in manifest.artifacts.items() if name in STUDENTS or r.stage == "export"]
    found = []
    for name in shipped:
        accuracy = _accuracy(manifest, name)
        if accuracy is not None and accuracy <= threshold:
            found.append(
                (
                    "chance-level",
                    name,
                    f"{name} scores {accuracy:.2f} % test top-1: not above chance ({chance:.2f} % = {what}; up to "
                    f"{threshold:.2f} % lies within {CHANCE_SIGMAS:g} standard errors of it on {manifest.data.test} "
                    "test images)",
                )
            )
    return found


def _teacher_warnings(manifest: Manifest) -> list[tuple[SanityKind, str, str]]:
    if manifest.config.get("distill") is None or reference_is_student(manifest):
        return []
    teacher, student = _accuracy(manifest, "teacher"), _accuracy(manifest, "student")
    if teacher is None or student is None or teacher > student or teacher >= 100.0:
        return []  # a teacher at 100 % has nothing more to give: no warning at the ceiling
    return [
        (
            "teacher-not-better",
            "teacher",
            f"the teacher scores {teacher:.2f} % test top-1, no better than its student ({student:.2f} %): "
            "distilling from it teaches the student nothing it could not learn from the labels",
        )
    ]


def _baseline_warnings(manifest: Manifest) -> list[tuple[SanityKind, str, str]]:
    student = _accuracy(manifest, "student")
    names = baseline_names(manifest)
    measured = {name: accuracy for name in names if (accuracy := _accuracy(manifest, name)) is not None}
    if manifest.config.get("distill") is None or student is None or not measured:
        return []
    baseline = sum(measured.values()) / len(measured)
    if student >= baseline or (len(measured) > 1 and not loss_beyond_spread(student, list(measured.values()))):
        return []
    if len(measured) == 1:
        which = f"the same student trained from labels alone ({baseline:.2f} %)"
    else:
        seeds = ", ".join(str(train_seed(manifest, name)) for name in measured)
        which = (
            f"the mean of {len(measured)} copies of the same student trained from labels alone ({baseline:.2f} %, "
            f"training seeds {seeds})"
        )
    return [
        (
            "kd-below-baseline",
            "student",
            f"the distilled student scores {student:.2f} % test top-1, below {which}: the distillation costs accuracy",
        )
    ]


def sanity_warnings(manifest: Manifest, gate: GateConfig) -> list[SanityWarning]:
    """Every sanity warning of the run's measurements, each marked ``fails_gate`` when ``gate`` is configured and
    does not allow its kind."""
    enforced = gate_configured(gate)
    found = _chance_warnings(manifest) + _teacher_warnings(manifest) + _baseline_warnings(manifest)
    return [
        SanityWarning(
            kind=kind, artifact=artifact, message=message, fails_gate=enforced and kind not in gate.allow_warnings
        )
        for kind, artifact, message in found
    ]


def record_warnings(run: RunDir) -> list[SanityWarning]:
    """Find the run's sanity warnings, record them in its manifest (saved) and say each on stderr as
    ``edgepipe: warning: …``."""
    run.manifest.warnings = sanity_warnings(run.manifest, run.config.gate)
    run.save()
    for warning in run.manifest.warnings:
        gate = " (fails the gate: gate.allow_warnings does not accept it)" if warning.fails_gate else ""
        progress.warn(f"edgepipe: warning: {warning}{gate}")
    return run.manifest.warnings


def warning_lines(manifest: Manifest) -> list[str]:
    """The report's Warnings block: a heading line (FAILED when one fails the gate), then one line per warning;
    empty without warnings."""
    warnings = manifest.warnings
    if not warnings:
        return []
    blocking = [w for w in warnings if w.fails_gate]
    if blocking:
        kinds = ", ".join(dict.fromkeys(w.kind for w in blocking))
        head = (
            f"**FAILED: sanity warnings** — {len(blocking)} of {len(warnings)} fail the gate "
            f"(accept them with `gate.allow_warnings: [{kinds}]`)"
        )
    else:
        head = f"**Warnings** — {len(warnings)} figure(s) look wrong; nothing failed because of them"
    mixed = 0 < len(blocking) < len(warnings)  # then each line says whether it fails the gate
    return [head, *(f"{w}{' (fails the gate)' if mixed and w.fails_gate else ''}" for w in warnings)]


def md_lines(manifest: Manifest) -> list[str]:
    """The Warnings block of report.md (with a blank line after it); empty without warnings."""
    lines = warning_lines(manifest)
    return [lines[0], "", *(f"- {line}" for line in lines[1:]), ""] if lines else []


def html_parts(manifest: Manifest, inline: Callable[[str], str], bullets: Callable[[list[str]], str]) -> list[str]:
    """The Warnings block of report.html, drawn with the page's own ``inline`` text and ``bullets`` list helpers."""
    lines = warning_lines(manifest)
    if not lines:
        return []
    css = ' class="gate-failed"' if any(w.fails_gate for w in manifest.warnings) else ""
    return [f'<p{css} id="warnings">{inline(lines[0])}</p>', bullets(lines[1:])]
