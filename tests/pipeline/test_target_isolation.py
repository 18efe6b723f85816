"""Per-target isolation and over-budget artifacts: a target that fails is a FAILED row (its dependents skipped) while
the others are built, benched and reported, then `run` exits 5; an artifact over its accuracy budget makes `run`
exit 8 and is released only with --allow-over-budget.

The toy targets below are registered for one test each. They convert for real: ``toy-crash`` feeds onnx a
truncated copy of its parent (a library exception, not an edgepipe error), ``toy-over`` writes a working ONNX file
and states an over-budget reason the way the int8 targets do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import GateConfig
from pipeline.errors import ExportError, GateError, ModelError
from pipeline.manifest import WITHIN_BUDGET, Manifest
from pipeline.report.gate import evaluate_gate, over_budget, run_error
from targets import TARGETS, ExportInputs, ExportResult, Target
from targets.onnx_io import describe_onnx

OVER_REASON = "val drop 4.1 points, significantly over max_int8_drop 0.3 (toy)"
KEPT = ["onnx-fp32", "tflite-fp32"]  # real targets built by the session run, reused here


class ToyBroken(Target):
    """A converter that writes its output to the log, then fails with a one-line ExportError (once ``fail`` is
    False, it copies its parent)."""

    name = "toy-broken"
    description = "test: a converter that cannot handle the model"
    format = "onnx"
    precision = "fp32"
    suffix = ".onnx"
    parent = "onnx-fp32"
    fail = True

    def export(self, inputs: ExportInputs) -> ExportResult:
        if self.fail:
            inputs.log_path.parent.mkdir(parents=True, exist_ok=True)
            inputs.log_path.write_text("toy converter: legalizing node_Conv_0 (Conv)\nerror: not supported\n")
            raise ExportError(
                f"{self.name}: toy converter: op Conv (node_Conv_0) is not supported; converter output in "
                f"{inputs.log_path}",
                "use onnx-fp32",
            )
        shutil.copyfile(inputs.parent_path, inputs.output_path)
        return describe_onnx(inputs.output_path, "NCHW", {})


class ToyChild(ToyBroken):
    name = "toy-child"
    description = "test: converted from toy-broken"
    parent = "toy-broken"
    fail = False


class ToyCrash(ToyBroken):
    """Loads a truncated copy of its parent with onnx: a protobuf error, not an edgepipe one."""

    name = "toy-crash"
    description = "test: a library exception"

    def export(self, inputs: ExportInputs) -> ExportResult:
        import onnx

        truncated = inputs.work_dir / "toy-crash.onnx"
        truncated.write_bytes(inputs.parent_path.read_bytes()[:100])
        onnx.load(truncated)
        raise AssertionError("onnx loaded a truncated file")


class ToyOver(ToyBroken):
    """A working file whose export info says it is over its accuracy budget."""

    name = "toy-over"
    description = "test: over its accuracy budget"
    fail = False

    def export(self, inputs: ExportInputs) -> ExportResult:
        result = super().export(inputs)
        return ExportResult(result.inputs, result.outputs, {"over_budget": OVER_REASON})


@pytest.fixture
def toys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy targets, registered for one test (the registry is restored after it)."""
    for toy in (ToyBroken, ToyChild, ToyCrash, ToyOver):
        monkeypatch.setitem(TARGETS._entries, toy.name, toy)


def small_run(run_dir: Path, targets: list[str], **config) -> Path:
    """Keep only ``KEPT`` of the session run's exports and write a config for ``targets`` with a small bench."""
    manifest = Manifest.load(run_dir / "manifest.json")
    manifest.artifacts = {
        name: record for name, record in manifest.artifacts.items() if record.stage != "export" or name in KEPT
    }
    manifest.save(run_dir / "manifest.json")
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["export"]["targets"] = targets
    raw["bench"].update({"memory": False, "batch_sizes": [1], "threads": [1]})
    raw.setdefault("quantize", {})["qat"] = {"when": "never"}
    raw.update(config)
    path = run_dir.parent / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgepipe: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_failed_target_is_a_row_and_run_exits_5(toys, run_copy: Path, tmp_path: Path) -> None:
    """Two targets fail (an ExportError, a library exception) and one depends on a failed one: the others are built
    and measured, the report opens with FAILED naming each with its reason, hint and log, the dependent is skipped,
    `run` exits 5 naming them; `release` of a failed target says it was not built."""
    config = small_run(run_copy, [*KEPT, "toy-broken", "toy-child", "toy-crash"])
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(config), "--out", str(run_copy)])
    assert result.exit_code == ExportError.exit_code == 5, result.output
    line = error_line(result)
    assert "2 failed to build: toy-broken (toy converter: op Conv" in line
    assert line.count(str(run_copy / "logs" / "toy-broken.log")) == 1  # named by the converter's message only
    assert "toy-crash (DecodeError" in line and f"log: {run_copy / 'logs' / 'toy-crash.log'}" in line
    assert "skipped: toy-child" in line and "hint: use onnx-fp32" in line

    manifest = Manifest.load(run_copy / "manifest.json")
    failures = {f.target: f for f in manifest.failures}
    assert list(failures) == ["toy-broken", "toy-child", "toy-crash"]
    assert (failures["toy-broken"].stage, failures["toy-broken"].log) == ("export", "logs/toy-broken.log")
    assert failures["toy-child"].stage == "skipped" and failures["toy-child"].depends_on == "toy-broken"
    assert failures["toy-child"].reason == "depends on toy-broken, which failed"
    assert "Traceback" in (run_copy / failures["toy-crash"].log).read_text()  # the library error's traceback
    assert not {"toy-broken", "toy-child", "toy-crash"} & set(manifest.artifacts)
    measured = {(m.artifact, m.runtime) for m in manifest.measurements}
    assert {("student", "pytorch"), ("onnx-fp32", "onnxruntime"), ("tflite-fp32", "tflite")} <= measured

    report = (run_copy / "report.md").read_text()
    assert report.startswith("# edgepipe report\n\n**FAILED** — 2 failed to build, 1 skipped\n")
    assert "- `toy-broken` failed to build (export): toy-broken: toy converter: op Conv (node_Conv_0)" in report
    assert "toy-broken.log; hint: use onnx-fp32\n" in report
    assert "drop toy-crash from export.targets to ship the others; log: `logs/toy-crash.log`\n" in report
    assert "- `toy-child` was skipped: depends on toy-broken, which failed" in report
    assert "| toy-broken | **FAILED**: toy-broken: toy converter" in report
    assert "| toy-child | **SKIPPED**: depends on toy-broken, which failed |" in report
    assert '<p class="gate-failed" id="failed"><strong>FAILED</strong>' in (run_copy / "report.html").read_text()

    released = cli.invoke(app, ["release", str(run_copy), "--target", "toy-broken", "--out", str(tmp_path / "b")])
    assert released.exit_code == 5
    assert f"toy-broken was not built in {run_copy}: toy-broken: toy converter" in error_line(released)
    assert not (tmp_path / "b").exists()


def test_rerun_that_succeeds_clears_the_failure(toys, run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export` builds what it can and exits 5; once the converter works, exporting the dependent builds it and its
    parent and clears both entries, while a failure of a target it did not try stays."""
    config = small_run(run_copy, [*KEPT, "toy-broken", "toy-child", "toy-crash"])
    shutil.copyfile(config, run_copy / "config.yaml")
    cli = CliRunner()
    first = cli.invoke(app, ["export", str(run_copy)])
    assert first.exit_code == 5 and "onnx-fp32: " in first.stdout and "tflite-fp32: " in first.stdout
    assert [f.target for f in Manifest.load(run_copy / "manifest.json").failures] == [
        "toy-broken",
        "toy-child",
        "toy-crash",
    ]
    monkeypatch.setattr(ToyBroken, "fail", False)
    second = cli.invoke(app, ["export", str(run_copy), "--target", "toy-child"])
    assert second.exit_code == 5 and "toy-crash" in error_line(second) and "toy-broken" not in error_line(second)
    manifest = Manifest.load(run_copy / "manifest.json")
    assert [f.target for f in manifest.failures] == ["toy-crash"]
    assert {"toy-broken", "toy-child"} <= set(manifest.artifacts)


def test_qat_failure_is_a_row(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QAT-KD training that fails records a failure per <target>-qat artifact; the post-training builds stand; a
    run that no longer needs QAT-KD clears those entries."""
    from pipeline.rundir import RunDir
    from pipeline.stages import qat
    from pipeline.stages.export import run_export
    from pipeline.stages.qat import qat_targets, run_qat

    raw = yaml.safe_load((run_copy / "config.yaml").read_text())
    raw.setdefault("quantize", {})["qat"] = {"when": "always"}
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def diverge(*args, **kwargs):
        raise ModelError("QAT-KD loss became NaN in epoch 1", "lower quantize.qat.lr")

    monkeypatch.setattr(qat, "ensure_qat_student", diverge)
    run = RunDir.open(run_copy)
    records = run_export(run, ["onnx-int8", "tflite-int8"])
    assert [r.name for r in records] == ["onnx-int8", "tflite-int8"]
    assert run_qat(run, ["onnx-int8", "tflite-int8"]) == []
    expected = [name + "-qat" for name in qat_targets(run, records)[0]]
    manifest = Manifest.load(run_copy / "manifest.json")
    assert expected and [f.target for f in manifest.failures] == expected
    assert {(f.stage, f.reason, f.hint) for f in manifest.failures} == {
        ("qat", "QAT-KD loss became NaN in epoch 1", "lower quantize.qat.lr")
    }
    assert not set(expected) & set(manifest.artifacts)

    raw["quantize"]["qat"] = {"when": "never"}
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run = RunDir.open(run_copy)
    run_export(run, ["onnx-int8", "tflite-int8"])
    run_qat(run, ["onnx-int8", "tflite-int8"])
    assert Manifest.load(run_copy / "manifest.json").failures == []


def test_over_budget_exits_8_and_release_refuses_it(toys, run_copy: Path, tmp_path: Path) -> None:
    """An artifact over its budget: `run` exits 8 naming it and why, the report opens with FAILED and marks its
    row; `release` refuses it (exit 8, nothing written) unless --allow-over-budget, which the bundle records."""
    config = small_run(run_copy, ["onnx-fp32", "toy-over"])
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(config), "--out", str(run_copy)])
    assert result.exit_code == GateError.exit_code == 8, result.output
    assert f"over budget: toy-over ({OVER_REASON})" in error_line(result)
    report = (run_copy / "report.md").read_text()
    assert report.startswith("# edgepipe report\n\n**FAILED** — 1 over its accuracy budget\n\n- `toy-over` is over")
    assert "| toy-over (**over budget**) | onnxruntime" in report

    out = tmp_path / "bundle"
    refused = cli.invoke(app, ["release", str(run_copy), "--target", "toy-over", "--out", str(out)])
    assert refused.exit_code == 8
    line = error_line(refused)
    assert f"not released: toy-over ({OVER_REASON})" in line and "--allow-over-budget" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "run"]

    args = ["release", str(run_copy), "--target", "toy-over", "--target", "onnx-fp32", "--out", str(out)]
    allowed = cli.invoke(app, [*args, "--allow-over-budget"])
    assert allowed.exit_code == 0, allowed.output
    entries = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert (entries["toy-over"]["over_budget"], entries["toy-over"]["allowed_over_budget"]) == (OVER_REASON, True)
    assert (entries["onnx-fp32"]["over_budget"], entries["onnx-fp32"]["allowed_over_budget"]) == (None, False)
    assert "**toy-over is over its accuracy budget**" in (out / "README.md").read_text()


@pytest.fixture
def manifest(finished_run: Path) -> Manifest:
    return Manifest.load(finished_run / "manifest.json")


def mark_over(manifest: Manifest, name: str, reason: str | None) -> None:
    record = manifest.artifacts[name]
    manifest.artifacts[name] = record.model_copy(update={"info": {**record.info, "over_budget": reason}})


def test_qat_file_within_budget_rescues_its_target(manifest: Manifest) -> None:
    """Over budget "after fallback and QAT-KD": a post-training int8 file over budget fails the run only when its
    <target>-qat file is missing or over budget too."""
    mark_over(manifest, "onnx-int8", "drop 1.2 points")
    assert over_budget(manifest) == {"onnx-int8": "drop 1.2 points"}
    qat = manifest.artifacts["onnx-int8"].model_copy(update={"name": "onnx-int8-qat", "info": {"precision": "int8"}})
    manifest.artifacts["onnx-int8-qat"] = qat
    assert over_budget(manifest) == {} and run_error(manifest) is None
    mark_over(manifest, "onnx-int8-qat", "drop 0.9 points")
    assert over_budget(manifest) == {"onnx-int8": "drop 1.2 points", "onnx-int8-qat": "drop 0.9 points"}
    error = run_error(manifest)
    assert isinstance(error, GateError)
    assert str(error) == "over budget: onnx-int8 (drop 1.2 points), onnx-int8-qat (drop 0.9 points)"


def test_gate_counts_over_budget_as_broken(manifest: Manifest) -> None:
    """With a gate configured, an over-budget artifact is a broken check of its own, whatever the other limits."""
    mark_over(manifest, "tflite-int8", "int8 share of MACs 0.42 < min_int8_share 0.9")
    result = evaluate_gate(manifest, GateConfig(max_bytes=10**9))
    (broken,) = [c for c in result.checks if not c.passed]
    assert (broken.artifact, broken.limit, broken.reason) == (
        "tflite-int8",
        WITHIN_BUDGET,
        "int8 share of MACs 0.42 < min_int8_share 0.9",
    )
    assert str(broken) == "tflite-int8: over budget (int8 share of MACs 0.42 < min_int8_share 0.9)"
    assert not result.passed
    assert evaluate_gate(manifest, GateConfig(max_bytes=10**9), budget=False).passed
