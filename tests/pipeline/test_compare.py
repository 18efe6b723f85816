"""`report A --compare B`: deltas per artifact × runtime, rows in one run only, and exit 7 past a threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import with_p50
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import RegressionError
from pipeline.manifest import Manifest
from pipeline.report.compare import Thresholds, compare_manifests, regressions, render_comparison


@pytest.fixture(scope="module")
def run_a(finished_run: Path) -> Manifest:
    return Manifest.load(finished_run / "manifest.json")


def altered(a: Manifest) -> Manifest:
    """Run A with the student 1 point less accurate, onnx-int8 50 % slower, tflite-fp16 6 % larger,
    tflite-int8 not measured and an extra row."""
    measurements = []
    for m in a.measurements:
        if m.artifact == "student":
            m = m.model_copy(update={"accuracy": m.accuracy - 1})
        elif m.artifact == "onnx-int8":
            m = with_p50(m, m.latency.p50_ms * 1.5)
        elif m.artifact == "tflite-fp16":
            m = m.model_copy(update={"file_bytes": round(m.file_bytes * 1.06)})
        if m.artifact != "tflite-int8":
            measurements.append(m)
    measurements.append(measurements[0].model_copy(update={"artifact": "extra"}))
    return a.model_copy(update={"measurements": measurements})


def save(manifest: Manifest, root: Path) -> Path:
    root.mkdir()
    manifest.save(root / "manifest.json")
    return root


def test_deltas_and_rows_in_one_run(run_a: Manifest) -> None:
    """B − A per row: accuracy in points, p50 and size in percent; unmatched rows listed by side."""
    comparison = compare_manifests(run_a, altered(run_a))
    rows = {row.artifact: row for row in comparison.rows}
    assert rows["student"].accuracy_points == -1.0
    assert rows["onnx-int8"].p50_change_pct == pytest.approx(50)
    assert rows["tflite-fp16"].size_change_pct == pytest.approx(6, abs=0.01)
    assert rows["teacher"].accuracy_points == 0 and rows["teacher"].p50_change_pct == 0
    assert comparison.only_a == ["tflite-int8 on tflite (XNNPACK)", "tflite-int8 on onnxruntime via tf2onnx (CPU)"]
    assert comparison.only_b == ["extra on pytorch (CPU)"]
    text = render_comparison(comparison)
    assert "| student | pytorch (CPU) |" in text and "| -1.00 |" in text and "| +50.0 % |" in text


def test_identical_runs_have_no_regression(run_a: Manifest) -> None:
    comparison = compare_manifests(run_a, run_a)
    assert len(comparison.rows) == len(run_a.measurements) and not comparison.only_a and not comparison.only_b
    assert regressions(comparison, Thresholds(0, 0, 0)) == []


def test_regressions_follow_thresholds(run_a: Manifest) -> None:
    """Each altered figure is one regression at the defaults; a change equal to its limit passes."""
    comparison = compare_manifests(run_a, altered(run_a))
    found = {(r.row, r.figure) for r in regressions(comparison, Thresholds())}
    assert found == {
        ("student on pytorch (CPU)", "top-1"),
        ("onnx-int8 on onnxruntime (CPU)", "p50 latency"),
        ("tflite-fp16 on tflite (XNNPACK)", "size"),
        ("tflite-fp16 on onnxruntime via tf2onnx (CPU)", "size"),
    }
    assert regressions(comparison, Thresholds(max_accuracy_drop=1, max_latency_increase=51, max_size_increase=7)) == []


def test_cli_exit_codes(run_a: Manifest, tmp_path: Path) -> None:
    """Exit 7 with one stderr line per regression; 0 for identical runs or loose enough thresholds."""
    a, b = save(run_a, tmp_path / "a"), save(altered(run_a), tmp_path / "b")
    cli = CliRunner()
    result = cli.invoke(app, ["report", str(a), "--compare", str(b)])
    assert result.exit_code == RegressionError.exit_code == 7
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgepipe: regression:")]
    assert lines == [
        "edgepipe: regression: student on pytorch (CPU): top-1 -1.00 points (limit -0.50 points)",
        "edgepipe: regression: onnx-int8 on onnxruntime (CPU): p50 latency +50.00 % (limit +10.00 %)",
        "edgepipe: regression: tflite-fp16 on tflite (XNNPACK): size +6.00 % (limit +5.00 %)",
        "edgepipe: regression: tflite-fp16 on onnxruntime via tf2onnx (CPU): size +6.00 % (limit +5.00 %)",
    ]
    assert "Only in A: tflite-int8 on tflite (XNNPACK)" in result.stdout
    assert cli.invoke(app, ["report", str(a), "--compare", str(a)]).exit_code == 0
    loose = ["--max-accuracy-drop", "1", "--max-latency-increase", "60", "--max-size-increase", "10"]
    assert cli.invoke(app, ["report", str(a), "--compare", str(b), *loose]).exit_code == 0
    assert not (a / "report.md").exists(), "comparing writes nothing"


def test_help_states_the_defaults() -> None:
    """The help text's defaults are the ones applied."""
    text = " ".join(CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "300"}).stdout.split())
    defaults = Thresholds()
    for value in (defaults.max_accuracy_drop, defaults.max_latency_increase, defaults.max_size_increase):
        assert f"(default {value:g})" in text


def test_two_real_runs_of_different_configs(finished_run: Path, run_copy: Path) -> None:
    """Run A quantizes onnx-int8 with the other weight granularity than the finished run chose (per tensor or per
    channel): both really exported and benched. Comparing the per-tensor run with the per-channel one prints the
    difference for every shared row, and the exit code follows the size threshold on onnx-int8 (per-channel scales
    make its file larger)."""
    import yaml

    from pipeline.rundir import RunDir
    from pipeline.stages.bench import run_bench
    from pipeline.stages.export import run_export

    finished = Manifest.load(finished_run / "manifest.json")
    chosen = finished.artifacts["onnx-int8"].info["settings"]["per_channel"]
    raw = yaml.safe_load((run_copy / "config.yaml").read_text())
    raw["export"]["onnx_int8"]["per_channel"] = not chosen
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_a = RunDir.open(run_copy)
    run_export(run_a, ["onnx-int8"])
    run_bench(run_a)
    a = Manifest.load(run_copy / "manifest.json")
    assert a.artifacts["onnx-int8"].sha256 != finished.artifacts["onnx-int8"].sha256
    (per_tensor, small), (per_channel, large) = sorted(
        [(run_copy, a), (finished_run, finished)], key=lambda pair: pair[1].artifacts["onnx-int8"].bytes
    )
    growth = (large.artifacts["onnx-int8"].bytes / small.artifacts["onnx-int8"].bytes - 1) * 100
    assert growth > 0.5

    cli = CliRunner()
    loose = ["--max-accuracy-drop", "100", "--max-latency-increase", "100000"]
    args = ["report", str(per_tensor), "--compare", str(per_channel), *loose]
    strict = cli.invoke(app, [*args, "--max-size-increase", f"{growth / 2:.3f}"])
    assert strict.exit_code == 7
    assert "onnx-int8 on onnxruntime (CPU): size" in strict.stderr
    assert "| onnx-int8 | onnxruntime (CPU) |" in strict.stdout
    assert all(f"| {name} |" in strict.stdout for name in ("teacher", "student", "tflite-int8"))
    assert cli.invoke(app, [*args, "--max-size-increase", f"{growth * 2:.3f}"]).exit_code == 0
