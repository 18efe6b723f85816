"""The stage cache of `edgepipe run`: an unchanged config reuses every built file, a changed calibration size
rebuilds only what depends on the calibration set, `--force STAGE` redoes that stage alone, and an upgraded
converter changes the ids of exactly the artifacts it shapes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeline.run
from pipeline.cli import app
from pipeline.config_load import parse_config
from pipeline.io import sha256_file
from pipeline.run import run_pipeline
from pipeline.stages.bench import TF2ONNX_RUNTIME
from targets import TARGETS

STAGES = ("distill", "calibrate", "export", "bench", "report")
INT8 = {name for name in TARGETS if TARGETS.get(name).needs_calibration}


def snapshot_files(root: Path) -> dict[str, tuple[int, int, str]]:
    """(inode, mtime_ns, sha256) of every recorded file of the run (checkpoints, calibration set, exports)."""
    manifest = json.loads((root / "manifest.json").read_text())
    states = {}
    for name, record in manifest["artifacts"].items():
        stat = (root / record["path"]).stat()
        states[name] = (stat.st_ino, stat.st_mtime_ns, sha256_file(root / record["path"]))
    return states


def ids(root: Path) -> dict[str, str]:
    return {
        name: record["id"] for name, record in json.loads((root / "manifest.json").read_text())["artifacts"].items()
    }


def rewritten(before: dict, after: dict) -> set[str]:
    """Names whose file was written again (a new inode: every write goes to a temp file renamed over it)."""
    assert set(after) >= set(before)
    return {name for name in after if name not in before or after[name][:2] != before[name][:2]}


@pytest.fixture
def stage_seconds(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Wall seconds of each stage `run_pipeline` calls next (filled in as the stages run)."""
    seconds: dict[str, float] = {}
    for stage in STAGES:
        function = getattr(pipeline.run, f"run_{stage}")

        def timed(*args, _stage=stage, _function=function, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                seconds[_stage] = time.perf_counter() - start

        monkeypatch.setattr(pipeline.run, f"run_{stage}", timed)
    return seconds


def test_unchanged_config_reuses_every_stage(
    run_copy: Path, tiny_config_dict: dict, snapshot_artifacts, finished_run_build, stage_seconds
) -> None:
    """`run` again on the same config: no checkpoint, calibration set or export is written again, and distill +
    calibrate + export take a small fraction of the time they took to build the run."""
    before, exports_before = snapshot_files(run_copy), snapshot_artifacts(run_copy)
    ids_before = ids(run_copy)
    run_pipeline(parse_config(tiny_config_dict), run_copy, force=set())
    assert snapshot_files(run_copy) == before
    assert snapshot_artifacts(run_copy) == exports_before
    assert ids(run_copy) == ids_before
    built = sum(finished_run_build["seconds"][stage] for stage in ("distill", "calibrate", "export"))
    reused = sum(stage_seconds[stage] for stage in ("distill", "calibrate", "export"))
    print(
        f"\nbuilt: {json.dumps({k: round(v, 2) for k, v in finished_run_build['seconds'].items()})}"
        f"\nre-run: {json.dumps({k: round(v, 2) for k, v in stage_seconds.items()})}"
        f"\ndistill+calibrate+export: built {built:.2f} s, reused {reused:.2f} s ({reused / built:.1%})"
    )
    assert reused < 0.1 * built, (reused, built)


def test_calibration_size_rebuilds_only_calibration_and_int8(
    run_copy: Path, tiny_config_dict: dict, snapshot_artifacts, stage_seconds
) -> None:
    """A new calibration.size redraws the calibration set and rebuilds the int8 targets; the checkpoints and float
    artifacts keep their inode, mtime and content; bench and report run again."""
    before, exports_before = snapshot_files(run_copy), snapshot_artifacts(run_copy)
    report_before = (run_copy / "report.md").stat().st_ino
    tiny_config_dict["calibration"]["size"] = 32
    run_pipeline(parse_config(tiny_config_dict), run_copy, force=set())
    after = snapshot_files(run_copy)
    assert rewritten(before, after) == {"calibration"} | INT8
    for name in set(before) - {"calibration"} - INT8:
        assert after[name] == before[name], f"{name} was touched"
    exports_after = snapshot_artifacts(run_copy)
    assert {name for name in exports_after if exports_after[name] != exports_before.get(name)} == INT8
    manifest = json.loads((run_copy / "manifest.json").read_text())
    assert manifest["artifacts"]["calibration"]["info"]["size"] == 32
    assert set(stage_seconds) == set(STAGES)  # bench and report ran again ...
    assert (run_copy / "report.md").stat().st_ino != report_before  # ... and the report was rewritten
    measured = {m["artifact"]: m["file_bytes"] for m in manifest["measurements"] if m["runtime"] != TF2ONNX_RUNTIME}
    for name in INT8:
        assert measured[name] == manifest["artifacts"][name]["bytes"]  # the new int8 files were measured


@pytest.mark.parametrize(
    ("stage", "redone"),
    [("calibrate", {"calibration"}), ("export", set(TARGETS)), ("distill", {"teacher", "student"})],
)
def test_force_redoes_only_that_stage(
    stage: str, redone: set[str], run_copy: Path, tiny_config_dict: dict, write_config, finished_run_build
) -> None:
    """`edgepipe run CONFIG --out DIR --force STAGE` writes that stage's files again and no other: the same seed
    (and thread count) gives the same bytes, so nothing downstream of the forced stage is rebuilt."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(finished_run_build["torch_threads"])
    try:
        _force_redoes_only(stage, redone, run_copy, tiny_config_dict, write_config)
    finally:
        torch.set_num_threads(threads)


def _force_redoes_only(stage: str, redone: set[str], run_copy: Path, tiny_config_dict: dict, write_config) -> None:
    before = snapshot_files(run_copy)
    ids_before = ids(run_copy)
    result = CliRunner().invoke(
        app, ["run", str(write_config(tiny_config_dict)), "--out", str(run_copy), "--force", stage]
    )
    assert result.exit_code == 0, result.output + result.stderr
    after = snapshot_files(run_copy)
    assert rewritten(before, after) == redone
    assert {name: state[2] for name, state in after.items()} == {name: state[2] for name, state in before.items()}
    assert ids(run_copy) == ids_before


def test_upgraded_converter_rebuilds_what_it_shapes(
    run_copy: Path, tiny_config_dict: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new onnx2tf version changes the ids of every export (it is an export tool) and of nothing trained or
    drawn; a new torch version changes every id (it trains and exports)."""
    import pipeline.environment as environment
    from pipeline.rundir import RunDir

    installed = environment.tool_version
    run = RunDir.open(run_copy)
    key = ({"any": "config"}, ["parent"])
    stages = ["teacher", "student", "calibration", "export:onnx-fp32", "export:tflite-int8"]
    original = {stage: run.artifact_id(stage, *key) for stage in stages}

    for tool, changed in [
        ("onnx2tf", {"export:onnx-fp32", "export:tflite-int8"}),
        ("torch", set(stages) - {"calibration"}),
    ]:
        monkeypatch.setattr(
            environment, "tool_version", lambda name, _tool=tool: "999.0" if name == _tool else installed(name)
        )
        upgraded = {stage: run.artifact_id(stage, *key) for stage in stages}
        assert {stage for stage in stages if upgraded[stage] != original[stage]} == changed, tool
    monkeypatch.setattr(environment, "tool_version", installed)
    assert {stage: run.artifact_id(stage, *key) for stage in stages} == original


def test_upgraded_onnx2tf_converts_again(run_copy: Path, monkeypatch: pytest.MonkeyPatch, snapshot_artifacts) -> None:
    """With another onnx2tf version installed, exporting tflite-fp32 rebuilds it (and its parent onnx-fp32) and
    converts the ONNX file again instead of reusing the SavedModel cached under work/ by the old version."""
    import pipeline.environment as environment
    from pipeline.rundir import RunDir
    from pipeline.stages.export import run_export

    saved_models = set((run_copy / "work").glob("saved_model-*"))
    assert saved_models
    before = snapshot_artifacts(run_copy)
    installed = environment.tool_version
    monkeypatch.setattr(environment, "tool_version", lambda name: "999.0" if name == "onnx2tf" else installed(name))
    run_export(RunDir.open(run_copy), ["tflite-fp32"])
    after = snapshot_artifacts(run_copy)
    assert rewritten(before, after) == {"onnx-fp32", "tflite-fp32"}
    assert after["tflite-fp32"][2] == before["tflite-fp32"][2]  # the same converter really ran: same bytes
    assert len(set((run_copy / "work").glob("saved_model-*")) - saved_models) == 1


def test_parent_redone_to_other_bytes_changes_child_ids(run_copy: Path) -> None:
    """Ids follow content: a parent whose recorded sha256 changed (rebuilt to other bytes, e.g. a forced retraining
    on another thread count) gives its children new ids, so they are rebuilt rather than reused."""
    from pipeline.rundir import RunDir

    run = RunDir.open(run_copy)
    student = run.manifest.artifacts["student"]
    export_id = run.artifact_id("export:onnx-fp32", {"opset": 18}, [student.id])
    assert run.artifact_id("export:onnx-fp32", {"opset": 18}, [student.id]) == export_id
    run.manifest.artifacts["student"] = student.model_copy(update={"sha256": "0" * 64})
    assert run.artifact_id("export:onnx-fp32", {"opset": 18}, [student.id]) != export_id
