"""The accuracy gate: limits per artifact on its own runtime; a broken one exits 8 after the report is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import GateConfig
from pipeline.config_load import parse_config
from pipeline.errors import ConfigError, GateError
from pipeline.manifest import Manifest
from pipeline.report.gate import evaluate_gate


@pytest.fixture(scope="module")
def manifest(finished_run: Path) -> Manifest:
    return Manifest.load(finished_run / "manifest.json")


def row(manifest: Manifest, artifact: str, runtime: str):
    return next(m for m in manifest.measurements if m.artifact == artifact and m.runtime == runtime)


def test_no_limits_no_gate(manifest: Manifest) -> None:
    assert evaluate_gate(manifest, GateConfig()) is None


def test_loose_limits_pass_and_cover_every_shipped_artifact(manifest: Manifest) -> None:
    """Every exported artifact on its own runtime is checked against every set limit; converted rows are not."""
    result = evaluate_gate(manifest, GateConfig(max_drop_vs_teacher=100, min_agreement=0, max_bytes=10**9))
    assert result.passed
    checked = {(c.artifact, c.runtime) for c in result.checks}
    exported = {n for n, r in manifest.artifacts.items() if r.stage == "export"}
    assert {a for a, _ in checked} == exported
    assert not any("tf2onnx" in runtime for _, runtime in checked)
    assert len(result.checks) == 3 * len(checked)


def test_one_tightened_limit_fails_exactly_that_artifact(manifest: Manifest) -> None:
    """A per-target p50 limit just below tflite-int8's measured p50 breaks only that check, by the difference."""
    p50 = row(manifest, "tflite-int8", "tflite").latency.p50_ms
    gate = GateConfig(max_p50_ms=10_000, targets={"tflite-int8": {"max_p50_ms": p50 * 0.5}})
    result = evaluate_gate(manifest, gate)
    (broken,) = [c for c in result.checks if not c.passed]
    assert (broken.artifact, broken.limit) == ("tflite-int8", "max_p50_ms")
    assert broken.excess == pytest.approx(p50 * 0.5)
    assert not result.passed and sum(c.passed for c in result.checks) == len(result.checks) - 1


def test_int8_drop_is_against_the_fp32_student(manifest: Manifest) -> None:
    student = row(manifest, "student", "pytorch").accuracy
    int8 = row(manifest, "onnx-int8", "onnxruntime").accuracy
    result = evaluate_gate(manifest, GateConfig(max_int8_drop=100))
    (check,) = [c for c in result.checks if c.artifact == "onnx-int8"]
    assert check.value == pytest.approx(student - int8, abs=0.01)
    assert {c.artifact for c in result.checks} == {
        n for n, r in manifest.artifacts.items() if r.stage == "export" and r.info["precision"] == "int8"
    }


def test_gate_target_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="nope"):
        parse_config({"gate": {"targets": {"nope": {"max_bytes": 1}}}})


def set_gate(run_dir: Path, gate: dict) -> None:
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["gate"] = gate
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_report_exit_code_flips_with_one_limit(run_copy: Path, manifest: Manifest) -> None:
    """`report` exits 0 under loose limits and 8 once one limit is tightened; the report is written either way,
    marked FAILED, naming the artifact, the limit and by how much."""
    cli = CliRunner()
    drop = round(row(manifest, "teacher", "pytorch").accuracy - row(manifest, "onnx-fp32", "onnxruntime").accuracy, 2)
    set_gate(run_copy, {"max_drop_vs_teacher": drop + 1})
    passed = cli.invoke(app, ["report", str(run_copy)])
    assert passed.exit_code == 0, passed.output
    assert "**Accuracy gate passed**" in (run_copy / "report.md").read_text()

    set_gate(run_copy, {"max_drop_vs_teacher": drop + 1, "targets": {"onnx-fp32": {"max_drop_vs_teacher": drop / 2}}})
    failed = cli.invoke(app, ["report", str(run_copy)])
    assert failed.exit_code == GateError.exit_code == 8
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("edgepipe: error: accuracy gate failed: onnx-fp32 on onnxruntime (CPU): max_drop_vs_teacher")
    assert f"broken by {drop / 2:g}" in line
    text = (run_copy / "report.md").read_text()
    assert text.startswith("# edgepipe report\n\n**FAILED: accuracy gate** — 1 of")
    assert 'class="gate-failed"' in (run_copy / "report.html").read_text()
    assert Manifest.load(run_copy / "manifest.json").gate.passed is False


def test_run_exits_8_after_writing_everything(run_copy: Path, tmp_path: Path) -> None:
    """`run` on a finished run with a gate no artifact can meet reuses the artifacts, writes the report, exits 8."""
    set_gate(run_copy, {"max_bytes": 1})
    config = tmp_path / "gate.yaml"
    config.write_text((run_copy / "config.yaml").read_text())
    before = {p.name: p.stat().st_mtime_ns for p in (run_copy / "artifacts").iterdir()}
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(run_copy)])
    assert result.exit_code == 8, result.output
    assert {p.name: p.stat().st_mtime_ns for p in (run_copy / "artifacts").iterdir()} == before
    assert "**FAILED: accuracy gate**" in (run_copy / "report.md").read_text()


def test_release_checks_the_shipped_artifacts_only(run_copy: Path, tmp_path: Path) -> None:
    """`release` exits 8 and writes no bundle when a shipped artifact breaks the gate; an artifact that is not
    shipped does not block it."""
    set_gate(run_copy, {"targets": {"onnx-int8": {"max_bytes": 1}}})
    bundle = tmp_path / "bundle"
    cli = CliRunner()
    blocked = cli.invoke(app, ["release", str(run_copy), "--target", "onnx-int8", "--out", str(bundle)])
    assert blocked.exit_code == 8 and "onnx-int8" in blocked.stderr and not bundle.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no bundle, no temp dir beside it
    shipped = cli.invoke(app, ["release", str(run_copy), "--target", "tflite-int8", "--out", str(bundle)])
    assert shipped.exit_code == 0, shipped.output
    assert (bundle / "manifest.json").is_file()
