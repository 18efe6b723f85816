"""Sanity warnings: chance level, a teacher no better than its student, a KD student below its baseline (or the
mean of its baselines); recorded, reported, said on stderr, and failing a configured gate (exit 8) unless accepted.
And the report's KD-gain line against the baselines' seed-to-seed spread."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import GateConfig
from pipeline.config_load import parse_config
from pipeline.errors import GateError
from pipeline.manifest import (
    ArtifactRecord,
    DataRecord,
    GateResult,
    LatencyStats,
    Manifest,
    Measurement,
    Preprocessing,
    Timing,
)
from pipeline.report.gate import raise_if_run_failed
from pipeline.report.markdown import render_report
from pipeline.report.sanity import chance_threshold, sanity_warnings
from pipeline.report.sections import model_bullets

LIMITED = GateConfig(max_drop_vs_teacher=50)


TRAINED = {"arch": "cnn", "losses": [{"name": "ce", "weight": 1}], "epochs_run": 1, "best_epoch": 1, "val_accuracy": 9}


def _record(name: str, stage: str, **info) -> ArtifactRecord:
    return ArtifactRecord(name=name, id=name, stage=stage, path=f"{name}.bin", bytes=1, sha256="0", info=info)


def _row(artifact: str, accuracy: float, runtime: str = "pytorch") -> Measurement:
    latency = LatencyStats(batch=1, runs=1, p50_ms=1, p90_ms=1, p99_ms=1, mean_ms=1, stdev_ms=0)
    timing = Timing(threads=1, latency=latency, throughput_ips=1000)
    return Measurement(artifact=artifact, runtime=runtime, provider="CPU", accuracy=accuracy, timings=[timing])


def manifest(
    accuracies: dict[str, float], test: int = 10000, largest: int = 1000, distill: dict | None = None, **teacher_info
) -> Manifest:
    """A benched 10-class run: teacher, student (and baselines: ``baseline``, ``baseline-2`` …, training seeds 0,
    1, …) PyTorch rows, an exported onnx-fp32 at the student's accuracy; the test split's largest class holds
    ``largest`` images."""
    counts = {"test": {str(c): largest if c == 0 else (test - largest) // 9 for c in range(10)}}
    preprocessing = Preprocessing(mean=[0.5], std=[0.5], channels=1, height=8, width=8)
    data = DataRecord(
        source="digits", classes=[str(c) for c in range(10)], train=1, val=1, test=test, seed=0,
        preprocessing=preprocessing, counts=counts,
    )  # fmt: skip
    artifacts = {
        "teacher": _record("teacher", "distill", **TRAINED, parameters=4000, **teacher_info),
        "student": _record("student", "distill", **TRAINED, parameters=170),
        "onnx-fp32": _record("onnx-fp32", "export", format="onnx", precision="fp32"),
    }
    rows = [_row(name, accuracy) for name, accuracy in accuracies.items()]
    rows.append(_row("onnx-fp32", accuracies["student"], "onnxruntime"))
    for seed, name in enumerate(name for name in accuracies if name.startswith("baseline")):
        artifacts[name] = _record(name, "distill", **TRAINED, parameters=170, train_seed=seed)
    config = {"distill": {"epochs": 1} if distill is None else distill}
    return Manifest(edgepipe_version="0", config=config, data=data, artifacts=artifacts, measurements=rows)


def kinds(found) -> list[tuple[str, str]]:
    return [(w.kind, w.artifact) for w in found]


def test_chance_threshold_is_a_binomial_margin_over_the_larger_chance_rate() -> None:
    """10 classes on 10 000 images: chance 10 %, flagged up to 10.90 %; a 40 % largest class raises chance."""
    chance, threshold, what = chance_threshold(manifest({"teacher": 90, "student": 80}))
    assert (chance, round(threshold, 2), what) == (10.0, 10.9, "1/10 classes")
    chance, threshold, what = chance_threshold(manifest({"teacher": 90, "student": 80}, largest=4000))
    assert (chance, what) == (40.0, "the largest test class's share") and threshold > 40


def test_a_student_at_chance_is_flagged_with_its_artifacts() -> None:
    """The issue's 170-parameter student at 10.03 %: the student and its exported file are at chance level."""
    found = sanity_warnings(manifest({"teacher": 90, "student": 10.03}), GateConfig())
    assert kinds(found) == [("chance-level", "student"), ("chance-level", "onnx-fp32")]
    assert "10.03 %" in found[0].message and "not above chance (10.00 % = 1/10 classes" in found[0].message
    assert not any(w.fails_gate for w in found)  # no gate configured: reported only


def test_a_weak_model_on_few_images_is_not_chance() -> None:
    """15 % on 100 test images lies within the margin (flagged); 25 % does not."""
    assert kinds(sanity_warnings(manifest({"teacher": 90, "student": 15}, test=100, largest=10), GateConfig()))
    assert not sanity_warnings(manifest({"teacher": 90, "student": 25}, test=100, largest=10), GateConfig())


def test_a_teacher_no_better_than_its_student() -> None:
    """The digits repro (teacher 95.26 %, student 98.05 %); skipped without distillation or when the reference
    is the student itself."""
    (found,) = sanity_warnings(manifest({"teacher": 95.26, "student": 98.05}), GateConfig())
    assert (found.kind, found.artifact) == ("teacher-not-better", "teacher")
    assert "95.26 %" in found.message and "98.05 %" in found.message
    undistilled = manifest({"teacher": 95.26, "student": 98.05})
    undistilled.config["distill"] = None
    assert not sanity_warnings(undistilled, GateConfig())
    itself = manifest({"teacher": 98.05, "student": 98.05}, same_model_as="student")
    assert not sanity_warnings(itself, GateConfig())
    assert not sanity_warnings(manifest({"teacher": 100.0, "student": 100.0}), GateConfig())  # the ceiling
    (tied,) = sanity_warnings(manifest({"teacher": 97.0, "student": 97.0}), GateConfig())
    assert tied.kind == "teacher-not-better"


def test_a_kd_student_below_its_baseline() -> None:
    (found,) = sanity_warnings(manifest({"teacher": 99, "student": 96.5, "baseline": 97.0}), GateConfig())
    assert (found.kind, found.artifact) == ("kd-below-baseline", "student")
    assert not sanity_warnings(manifest({"teacher": 99, "student": 97.0, "baseline": 97.0}), GateConfig())


def test_a_kd_student_below_its_baselines_beyond_their_spread() -> None:
    """With several baselines (distill.baseline_seeds) the student is flagged only when it is below every seed and
    below their mean by more than their seed-to-seed std: a noise-level shortfall fails no gate."""
    seeds = {"teacher": 99, "baseline": 96.5, "baseline-2": 97.0, "baseline-3": 97.5}  # mean 97.0, std 0.5
    (found,) = sanity_warnings(manifest({**seeds, "student": 96.4}), GateConfig())
    assert (found.kind, found.artifact) == ("kd-below-baseline", "student")
    mean = "below the mean of 3 copies of the same student trained from labels alone (97.00 %, training seeds 0, 1, 2)"
    assert mean in found.message
    assert not sanity_warnings(manifest({**seeds, "student": 96.6}), GateConfig())  # below the mean, above a seed
    skewed = {"teacher": 99, "baseline": 96.8, "baseline-2": 96.9, "baseline-3": 97.3}  # mean 97.0, std 0.26
    assert not sanity_warnings(manifest({**skewed, "student": 96.78}), GateConfig())  # below every seed, within std
    assert sanity_warnings(manifest({**skewed, "student": 96.7}), GateConfig())


def kd_gain_line(run: Manifest) -> str:
    (line,) = [bullet for bullet in model_bullets(run) if bullet.startswith("**KD gain**")]
    return line


def test_kd_gain_over_several_baselines_says_whether_it_is_larger_than_their_spread() -> None:
    """Three baselines (the embedded default's 90.96 / 91.15 / 90.80 %): the gain is over their mean, beside their
    sample std and range; larger than that spread only when it exceeds the std and beats every seed (each shortfall
    named)."""
    seeds = {"teacher": 93, "baseline": 90.96, "baseline-2": 91.15, "baseline-3": 90.80}
    head = "**KD gain** (test top-1, KD student − mean of 3 baseline students): "
    spread = "baselines' seed-to-seed std 0.18 points, range 90.80–91.15 % (training seeds 0, 1, 2): "
    larger = manifest({**seeds, "student": 91.40})
    assert kd_gain_line(larger) == (
        f"{head}+0.43 points; {spread}larger than the seed-to-seed spread (the gain exceeds the std and the KD "
        "student beats every baseline seed)"
    )
    assert kd_gain_line(manifest({**seeds, "student": 91.10})) == (
        f"{head}+0.13 points; {spread}not larger than the seed-to-seed spread (the gain does not exceed the std; "
        "baseline seed 1 scores 91.15 %, not below the KD student's 91.10 %)"
    )
    skewed = {"teacher": 93, "baseline": 90.0, "baseline-2": 90.1, "baseline-3": 91.0, "student": 91.0}
    line = kd_gain_line(manifest(skewed))  # +0.63 > std 0.55, but seed 2 ties the student
    assert "+0.63 points" in line and "std 0.55 points" in line
    assert line.endswith(
        "not larger than the seed-to-seed spread (baseline seed 2 scores 91.00 %, not below the KD student's 91.00 %)"
    )
    assert kd_gain_line(manifest({**seeds, "student": 90.50})) == (
        f"{head}-0.47 points; {spread}a loss larger than the seed-to-seed spread (the KD student is below the "
        "baselines' mean by more than the std and below every baseline seed)"
    )
    about = "baseline students: 3 training seeds (0, 1, 2), same architecture and budget, loss 1·ce, best val epochs"
    assert f"{about} 1, 1, 1 (9.00, 9.00, 9.00 % val)" in model_bullets(larger)
    assert "larger than the seed-to-seed spread" in render_report(larger)
    from pipeline.report.html import render_html

    page = render_html(larger)
    assert "larger than the seed-to-seed spread" in page and "not larger" not in page


def test_kd_gain_over_one_baseline_says_the_spread_is_not_measured() -> None:
    run = manifest({"teacher": 93, "baseline": 90.96, "student": 91.26})
    assert kd_gain_line(run) == (
        "**KD gain** (test top-1, KD student − baseline student): +0.30 points; one baseline seed: seed-to-seed "
        "spread not measured (distill.baseline_seeds: 3 measures it)"
    )
    assert "larger" not in kd_gain_line(run)


def test_a_configured_gate_fails_on_a_warning_unless_it_is_accepted() -> None:
    """Warnings fail a gate with limits (exit 8, named in the line and the report's block); allow_warnings accepts
    their kind; allow_warnings alone configures no gate."""
    run = manifest({"teacher": 95.26, "student": 98.05})
    run.warnings = sanity_warnings(run, LIMITED)
    assert [w.fails_gate for w in run.warnings] == [True]
    with pytest.raises(GateError, match="sanity warnings fail the gate: teacher-not-better: the teacher") as failed:
        raise_if_run_failed(run, Path("RUN"))
    assert failed.value.exit_code == 8 and "gate.allow_warnings: [teacher-not-better]" in failed.value.hint
    run.gate = GateResult(passed=False, checks=[])  # as run_report records a gate a warning fails
    text = render_report(run)
    assert "**FAILED: sanity warnings** — 1 of 1 fail the gate" in text
    assert "**FAILED: accuracy gate** — sanity warnings fail it" in text and "gate passed" not in text
    assert text.index("FAILED: sanity warnings") < text.index("| ")  # above every table
    accepted = GateConfig(max_drop_vs_teacher=50, allow_warnings=["teacher-not-better"])
    run.warnings = sanity_warnings(run, accepted)
    raise_if_run_failed(run, Path("RUN"))
    assert "**Warnings** — 1 figure(s) look wrong" in render_report(run)
    assert not any(w.fails_gate for w in sanity_warnings(run, GateConfig(allow_warnings=["chance-level"])))


def test_allow_warnings_is_validated_and_kept_out_of_the_limits() -> None:
    config = parse_config({"gate": {"max_bytes": 10, "allow_warnings": ["chance-level"]}})
    assert config.gate.allow_warnings == ["chance-level"] and config.gate.limits_for("onnx-fp32").max_bytes == 10
    with pytest.raises(Exception, match="allow_warnings"):
        parse_config({"gate": {"allow_warnings": ["chance"]}})


def test_report_html_has_the_warnings_block() -> None:
    from pipeline.report.html import render_html

    run = manifest({"teacher": 90, "student": 10.03})
    run.warnings = sanity_warnings(run, GateConfig())
    page = render_html(run)
    assert 'id="warnings"' in page and "chance-level: student scores 10.03 %" in page
