"""The `edgepipe` command: listing, help, one-line errors with exit codes, and real subprocess runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from targets import TARGETS

EDGEPIPE = shutil.which("edgepipe", path=str(Path(sys.executable).parent)) or shutil.which("edgepipe")


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def run_edgepipe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    assert EDGEPIPE, "the edgepipe console script is not installed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "120"}
    return subprocess.run([EDGEPIPE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_error_line(stderr: str, output: str = "") -> str:
    """Exactly one `edgepipe: error:` line and no traceback anywhere; return that line."""
    lines = [line for line in stderr.splitlines() if line.startswith("edgepipe: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "Traceback" not in output
    return lines[0]


def test_targets_lists_each_one_per_line(cli: CliRunner) -> None:
    """`edgepipe targets` prints each registered target on its own line, with a description."""
    result = cli.invoke(app, ["targets"])
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(TARGETS.names())
    assert [line.split()[0] for line in lines] == TARGETS.names()
    assert all(len(line.split()) > 2 for line in lines)


def test_help_lists_commands(cli: CliRunner) -> None:
    """`--help` works and names every command."""
    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "distill", "calibrate", "quantize", "export", "bench", "report", "targets"):
        assert command in result.stdout


def test_subprocess_targets_and_help() -> None:
    """The installed console script lists the targets and prints help."""
    listed = run_edgepipe("targets", timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.strip().splitlines()] == TARGETS.names()
    helped = run_edgepipe("--help", timeout=120)
    assert helped.returncode == 0
    assert "Usage: edgepipe" in helped.stdout and "export" in helped.stdout


def test_version_names_the_tools_without_importing_them() -> None:
    """`--version` prints edgepipe's, Python's and the runtimes' versions from package metadata alone."""
    code = (
        "import sys\nfrom pipeline.cli import main\nsys.argv = ['edgepipe', '--version']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    version, imported = done.stdout.strip().splitlines()
    assert version.startswith("edgepipe 0.") and "python 3." in version and "torch " in version
    assert imported == "[]", done.stderr


def test_a_config_error_imports_no_torch(tmp_path: Path) -> None:
    """A misspelt key is reported before torch, TensorFlow or onnxruntime are imported (the error is instant), also
    when the config has a distill.losses section (its parameter check needs torch: it comes second)."""
    config = tmp_path / "bad.yaml"
    config.write_text("data: {sourc: x}\ndistill: {losses: [{name: hinton, temperature: 2.0, alpha: 0.5}]}\n")
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        f"sys.argv = ['edgepipe', 'run', {str(config)!r}, '--out', {str(tmp_path / 'out')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print(e.code)\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "[]"], done.stderr
    assert "unknown config key 'data.sourc'" in done.stderr


def test_subprocess_errors_are_one_line(tmp_path: Path) -> None:
    """Through the real console script, user mistakes give one stderr line, no traceback, non-zero exit."""
    missing = run_edgepipe("bench", str(tmp_path / "absent"), timeout=120)
    assert missing.returncode == 6
    assert_one_error_line(missing.stderr, missing.stdout)
    bad_target = run_edgepipe("export", str(tmp_path), "--target", "nope", timeout=120)
    assert bad_target.returncode == 2
    assert "'nope'" in assert_one_error_line(bad_target.stderr, bad_target.stdout)


def test_report_command_prints_report(cli: CliRunner, run_copy: Path) -> None:
    """`edgepipe report DIR` rewrites report.md and prints the same text."""
    (run_copy / "report.md").unlink()
    result = cli.invoke(app, ["report", str(run_copy)])
    assert result.exit_code == 0, result.stderr
    text = (run_copy / "report.md").read_text()
    assert text.strip() and text.strip() in result.stdout


def test_cli_export_rebuilds_only_named_target(run_copy: Path, snapshot_artifacts) -> None:
    """`edgepipe export DIR --target onnx-int8` rewrites that file only and prints its record."""
    before = snapshot_artifacts(run_copy)
    result = run_edgepipe("export", str(run_copy), "--target", "onnx-int8")
    assert result.returncode == 0, result.stderr
    after = snapshot_artifacts(run_copy)
    assert after["onnx-int8"][:2] != before["onnx-int8"][:2]
    assert {k: v for k, v in after.items() if k != "onnx-int8"} == {k: v for k, v in before.items() if k != "onnx-int8"}
    manifest = json.loads((run_copy / "manifest.json").read_text())
    record = manifest["artifacts"]["onnx-int8"]
    assert record["sha256"] == after["onnx-int8"][2]
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(f"onnx-int8: {record['path']} ({record['bytes']} bytes, sha256 {record['sha256'][:12]})")


def test_cli_calibrate_draws_again_only_when_forced(cli: CliRunner, run_copy: Path) -> None:
    """`edgepipe calibrate DIR` reuses the calibration set; `--force` draws it again (same seed: same samples, a
    new file); either way it says how many training images it holds and where."""
    path = run_copy / "calibration" / "calibration.npz"
    before = path.stat().st_mtime_ns
    reused = cli.invoke(app, ["calibrate", str(run_copy), "--quiet"])
    assert reused.exit_code == 0, reused.stderr
    assert path.stat().st_mtime_ns == before
    size = json.loads((run_copy / "manifest.json").read_text())["artifacts"]["calibration"]["info"]["size"]
    assert reused.stdout.strip() == f"calibration: {size} training images (stratified) in {path}"
    forced = cli.invoke(app, ["calibrate", str(run_copy), "--force", "--quiet"])
    assert forced.exit_code == 0, forced.stderr
    assert path.stat().st_mtime_ns != before


def test_interrupt_exits_130(cli: CliRunner, finished_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a stage exits 130 with a resume hint instead of a traceback."""
    import pipeline.stages.bench

    def interrupted(run) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.stages.bench, "run_bench", interrupted)
    result = cli.invoke(app, ["bench", str(finished_run)])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "re-run" in result.stderr
    assert "Traceback" not in result.stderr
