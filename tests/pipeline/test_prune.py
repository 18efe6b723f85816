"""The prune stage: structured pruning halves MACs, magnitude pruning halves the gzip'd download, a latency budget
derived from the test's own measurement is met, and bad settings give one-line errors or a report."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CONFIG
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import PruneMeasureConfig
from pipeline.config_load import parse_config
from pipeline.converter_log import RUN_LOG
from pipeline.errors import ConfigError
from pipeline.io import sha256_file
from pipeline.manifest import PRUNED_STUDENT
from pipeline.measure.model_profile import onnx_profile, torch_profile
from pipeline.measure.prune_measure import BuiltFile, gzip_bytes, p50_ms
from pipeline.report.html import render_html
from pipeline.rundir import RunDir
from pipeline.stages.bench import run_bench
from pipeline.stages.calibrate import run_calibrate
from pipeline.stages.distill import run_distill
from pipeline.stages.export import run_export
from pipeline.stages.prune import run_prune
from pipeline.stages.qat import ensure_qat_student
from pipeline.stages.report import run_report
from pipeline.training.run_models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK_MEASURE = {"warmup": 2, "min_runs": 10, "min_seconds": 0, "rounds": 1}


def _config(**prune) -> dict:
    """The tiny digits config with ONNX targets only (no TFLite: these tests are about the student) and ``prune``."""
    raw = copy.deepcopy(TINY_CONFIG)
    raw["export"] = {"targets": ["onnx-fp32", "onnx-int8"]}
    raw["bench"] |= {"threads": [1], "batch_sizes": [1], "memory": False}
    if prune:
        raw["prune"] = {"finetune": {"epochs": 1}, "measure": dict(QUICK_MEASURE)} | prune
    return raw


def _unpruned(root: Path, teacher_checkpoint: Path, **distill) -> Path:
    """A tiny digits run with its distilled student exported to onnx-fp32 and onnx-int8, no prune section."""
    raw = _config()
    raw["teacher"] = {"checkpoint": str(teacher_checkpoint)}
    raw["distill"] |= distill
    run = RunDir.create(root, parse_config(raw))
    run_distill(run)
    run_calibrate(run)
    run_export(run)
    return root


@pytest.fixture(scope="module")
def unpruned_run(tmp_path_factory: pytest.TempPathFactory, teacher_checkpoint: Path) -> Path:
    """The tiny digits run with the default student-cnn."""
    return _unpruned(tmp_path_factory.mktemp("prune") / "run", teacher_checkpoint)


@pytest.fixture(scope="module")
def wide_unpruned_run(tmp_path_factory: pytest.TempPathFactory, teacher_checkpoint: Path) -> Path:
    """The same with a 4× wider student: ~4 MMAC an image, so at batch 32 its convolutions, not onnxruntime's
    per-call overhead (~0.1 ms), dominate the p50 and cutting channels can cut the time."""
    return _unpruned(tmp_path_factory.mktemp("prune-wide") / "run", teacher_checkpoint, arch_kwargs={"width": 4})


def _continued(unpruned: Path, root: Path, prune: dict) -> RunDir:
    """A private copy of ``unpruned`` continued with ``prune:`` added to its config."""
    shutil.copytree(unpruned, root)
    raw = yaml.safe_load((root / "config.yaml").read_text())
    raw["prune"] = _config(**prune)["prune"]
    return RunDir.create(root, parse_config(raw))  # as `edgepipe run CONFIG --out DIR` continues a run


@pytest.fixture
def pruning_run(unpruned_run: Path, tmp_path: Path):
    """``make(**prune)``: the unpruned run continued with ``prune:``."""
    return lambda **prune: _continued(unpruned_run, tmp_path / "run", prune)


def _onnx(run: RunDir, name: str) -> Path:
    return run.path(run.manifest.artifacts[name].path)


def _benched_report(run: RunDir) -> str:
    """Bench the run (tiny settings) and return its report.md text."""
    run = RunDir.open(run.root)
    run_bench(run)
    return run_report(run)


def test_structured_halves_macs(pruning_run) -> None:
    """macs_ratio 0.5 leaves at most half the MACs and fewer parameters, in PyTorch and in the exported onnx-fp32 file
    (the cheap check that the file can only get faster); the pruned student reloads from its checkpoint, ships, and
    is what QAT-KD fine-tunes."""
    run = pruning_run(method="structured", macs_ratio=0.5)
    unpruned_fp32 = onnx_profile(_onnx(run, "onnx-fp32"))
    record = run_prune(run)
    student, pruned = record.info["variants"]
    assert pruned["macs"] <= 0.5 * student["macs"] and pruned["macs"] > 0.3 * student["macs"]
    assert pruned["params"] < student["params"]
    shape = tuple(run.splits.test.x.shape[1:])
    assert torch_profile(load_model(run, PRUNED_STUDENT), shape).macs == pruned["macs"]
    assert run.shipped_student() == run.manifest.shipped_student == PRUNED_STUDENT
    (fp32,) = run_export(run, ["onnx-fp32"])
    assert fp32.info["source"] == PRUNED_STUDENT and fp32.path.endswith("student-pruned-onnx-fp32.onnx")
    profile = onnx_profile(run.path(fp32.path))
    assert profile.macs <= 0.5 * unpruned_fp32.macs and profile.params < unpruned_fp32.params
    assert fp32.info["verification"]["max_abs_diff_vs_student"] < 1e-3
    assert run_prune(RunDir.open(run.root)).sha256 == record.sha256  # cached: same inputs, nothing redone
    qat = ensure_qat_student(run, reduce_range=True, left_out={})  # QAT-KD starts from the shipped (pruned) student
    assert qat.parent == PRUNED_STUDENT
    assert torch_profile(load_model(run, "student-qat"), shape).macs == pruned["macs"]


def test_magnitude_80_halves_gzip(pruning_run) -> None:
    """80 % global magnitude sparsity makes the gzip'd onnx-fp32 file at least 2× smaller; the file keeps its dense
    MACs, and the report says plainly that dense runtimes run it no faster."""
    run = pruning_run(method="magnitude", sparsity=0.8)
    unpruned = _onnx(run, "onnx-fp32")
    unpruned_gzip, unpruned_macs = gzip_bytes(unpruned), onnx_profile(unpruned).macs
    record = run_prune(run)
    pruned_variant = record.info["variants"][1]
    assert pruned_variant["sparsity"] >= 79.9
    assert any(layer["sparsity"] > 0 for layer in pruned_variant["layers"])
    (fp32,) = run_export(run, ["onnx-fp32"])
    pruned = run.path(fp32.path)
    assert 2 * gzip_bytes(pruned) <= unpruned_gzip, (gzip_bytes(pruned), unpruned_gzip)
    assert fp32.info["gzip_bytes"] == gzip_bytes(pruned)
    assert onnx_profile(pruned).macs == unpruned_macs
    text = _benched_report(run)
    assert "## Pruning" in text and "no faster" in text


def test_latency_budget_is_met(wide_unpruned_run: Path, tmp_path: Path) -> None:
    """A budget of 0.7× the unpruned onnx-int8 p50 (batch 32, one thread), measured here, ends with a student that
    meets it; the report shows the search path (a table, and a figure in the HTML)."""
    measure = {"target": "onnx-int8", "batch": 32, "threads": 1, "warmup": 5, "min_runs": 30, "min_seconds": 0.2}
    unpruned = RunDir.open(wide_unpruned_run)
    record = unpruned.manifest.artifacts["onnx-int8"]
    built = BuiltFile("onnx-int8", unpruned.path(record.path), "onnx", record.inputs, record.outputs)
    x = unpruned.splits.normalize(unpruned.splits.val.x)
    budget = 0.7 * p50_ms({"unpruned": built.runner(1)}, x, PruneMeasureConfig(**measure))["unpruned"]
    prune = {"method": "structured", "latency_budget_ms": round(budget, 4), "step": 0.2, "measure": measure}
    run = _continued(wide_unpruned_run, tmp_path / "run", prune)
    info = run_prune(run).info
    search = info["search"]
    assert search["met"] and info["shipped"]
    chosen = search["path"][search["chosen_step"]]
    assert chosen["meets_budget"] and chosen["p50_ms"] <= search["budget_ms"]
    # the search stops at the first candidate that meets the budget (step 0, the unpruned student, may on a machine
    # busier during the test's own measurement than during the search's)
    assert chosen is search["path"][-1] and not any(entry["meets_budget"] for entry in search["path"][:-1])
    assert [entry["channel_ratio"] for entry in search["path"]] == pytest.approx(
        [min(0.2 * step, 0.9) for step in range(len(search["path"]))]  # 0.2 a step, up to max_ratio
    )
    text = _benched_report(run)
    manifest = RunDir.open(run.root).manifest
    assert "**met**" in text and "| step | channel ratio |" in text
    assert 'id="figure-prune-path"' in render_html(manifest)


def test_budget_nobody_meets_is_reported(pruning_run) -> None:
    """An impossible budget ends the stage with a report of how close the search got; the run keeps shipping the
    unpruned student."""
    run = pruning_run(method="structured", latency_budget_ms=1e-6, step=0.3, max_ratio=0.6, search_epochs=0)
    record = run_prune(run)
    assert not record.info["search"]["met"] and not record.info["shipped"]
    assert len(record.info["search"]["path"]) == 3
    assert run.shipped_student() == run.manifest.shipped_student == "student"
    (fp32,) = run_export(run, ["onnx-fp32"])
    assert fp32.info["source"] == "student"
    text = _benched_report(run)
    assert "**not met**" in text and "closest the search got" in text


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"method": "magnitude", "sparsity": 1.0}, "prune.sparsity must lie in [0, 1)"),
        ({"method": "magnitude", "sparsity": -0.1}, "prune.sparsity must lie in [0, 1)"),
        ({"method": "structured", "channel_ratio": 1.0}, "prune.channel_ratio must lie in [0, 1)"),
        ({"method": "magnitude", "sparsity": 0.5, "layers": {"0": 1.5}}, "prune.layers['0'] must lie in [0, 1)"),
        ({"method": "structured"}, "exactly one of channel_ratio, macs_ratio, latency_budget_ms"),
        ({"method": "structured", "channel_ratio": 0.3, "macs_ratio": 0.5}, "exactly one of"),
        ({"method": "magnitude", "sparsity": 0.5, "channel_ratio": 0.5}, "is for method: structured"),
        ({"method": "structured", "latency_budget_ms": 0}, "greater than 0"),
        ({"method": "structured", "channel_ratio": 0.3, "measure": {"target": "onnx-int9"}}, "unknown target"),
    ],
)
def test_bad_settings_are_config_errors(prune: dict, message: str) -> None:
    """Out-of-range or conflicting prune settings are ConfigErrors naming the key (one line)."""
    raw = copy.deepcopy(TINY_CONFIG) | {"prune": prune}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert message in caught.value.one_line() and "\n" not in caught.value.one_line()


def test_unknown_layer_is_one_line_error(pruning_run) -> None:
    """`edgepipe prune` with a layer the student does not have exits 2 with one line listing the layers, and
    writes nothing but the command's lines in the run's log."""
    run = pruning_run(method="magnitude", sparsity=0.5, layers={"conv9": 0.5})
    log = run.root / RUN_LOG
    before = {p: sha256_file(p) for p in run.root.rglob("*") if p.is_file() and p != log}
    result = CliRunner().invoke(app, ["prune", str(run.root)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgepipe: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "prune.layers" in lines[0] and "'conv9'" in lines[0] and "layers: 0, 4, 8, 13" in lines[0]
    assert {p: sha256_file(p) for p in run.root.rglob("*") if p.is_file() and p != log} == before


def test_run_puts_both_students_side_by_side(tmp_path: Path, teacher_checkpoint: Path) -> None:
    """`run` with prune: prunes between distill and quantize, exports the pruned student under the usual target
    names, benches it beside the unpruned student, and a second run reuses everything."""
    from pipeline.run import run_pipeline

    raw = _config(method="structured", channel_ratio=0.5)
    raw["teacher"] = {"checkpoint": str(teacher_checkpoint)}
    raw["export"]["targets"] = ["onnx-fp32"]
    out = tmp_path / "run"
    run_pipeline(parse_config(raw), out, set())
    manifest = RunDir.open(out).manifest
    assert manifest.artifacts["onnx-fp32"].info["source"] == PRUNED_STUDENT
    pytorch = {m.artifact for m in manifest.measurements if m.runtime == "pytorch"}
    assert {"student", PRUNED_STUDENT} <= pytorch
    text = (out / "report.md").read_text()
    assert "## Pruning" in text and "| `student-pruned` |" in text and "| student-pruned | pytorch" in text
    checkpoint = out / manifest.artifacts[PRUNED_STUDENT].path
    before = checkpoint.stat().st_mtime_ns
    run_pipeline(parse_config(raw), out, set())
    assert checkpoint.stat().st_mtime_ns == before
