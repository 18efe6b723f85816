"""The progress view: plain lines, steady ETAs, the estimated total, quiet mode, the stage list of a config, library
output kept in the run's log, and the first line before any heavy import."""

from __future__ import annotations

import ctypes
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import pipeline.run
from pipeline import progress
from pipeline.cli import app
from pipeline.config_load import parse_config
from pipeline.converter_log import RUN_LOG, attach_run_log
from pipeline.errors import DataError
from pipeline.run import planned_stages

REPO = Path(__file__).resolve().parents[2]
LIBRARY_LINES = (
    "fd1 chatter from C",
    "fd2 chatter from C",
    "c stdio line",
    "python print",
    "python stderr",
    "Please consider to run pre-processing",
)  # warnings.warn: pytest records them in-process; tests/pipeline/test_converter_log.py checks them
WARNING = "edgepipe: warning: calibration.size 512 is more than the training split"


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def plain_view(clock: FakeClock) -> tuple[progress.View, io.StringIO]:
    terminal = io.StringIO()
    return progress.View("plain", terminal, clock), terminal


def test_plain_mode_says_one_line_per_event() -> None:
    """Header, stage list, stage start/end with durations, epoch lines with the time left, target lines and
    warnings: one line each, no ANSI codes, no carriage returns."""
    clock = FakeClock()
    view, terminal = plain_view(clock)
    view.header("edgepipe run → runs/x")
    stages = [progress.Stage("distill"), progress.Stage("calibrate", quick=True), progress.Stage("export", "2 targets")]
    view.plan(stages)
    with view.stage("distill"), view.task("student", total=20) as bar:
        for epoch in (1, 2):
            for _ in range(10):
                clock.tick(1)
                bar.advance(boundary=False)
            clock.tick(2)
            bar.mark()
            view.log(f"student epoch {epoch}/2: loss 0.5")
    with view.stage("calibrate"):
        view.warn(WARNING)
    with view.stage("export"), view.task("export", total=2) as bar:
        for name in ("onnx-fp32", "tflite-fp32"):
            clock.tick(65)
            bar.advance()
            view.log(f"{name} built in 1:05")
    with pytest.raises(DataError), view.stage("bench"):
        clock.tick(0.25)
        raise DataError("a test image does not decode")
    view.close(finished=False)
    assert terminal.getvalue().splitlines() == [
        "edgepipe run → runs/x",
        "stages: distill, calibrate, export (2 targets)",
        "distill: started",
        "distill: student epoch 1/2: loss 0.5 (0:12 left)",
        "distill: student epoch 2/2: loss 0.5",
        "distill: done in 24.0 s",
        "calibrate: started",
        WARNING,
        "calibrate: done in 0.0 s",
        "export: started",
        "export: onnx-fp32 built in 1:05 (1:05 left)",
        "export: tflite-fp32 built in 1:05",
        "export: done in 2:10",
        "bench: started",
        "bench: failed after 0.2 s",
    ]
    assert "\x1b" not in terminal.getvalue() and "\r" not in terminal.getvalue()


def test_training_eta_counts_down_steadily() -> None:
    """After an epoch (its validation included) the predicted end stays put until the next epoch ends: a slow
    stretch of steps does not swing the ETA, and the second epoch's measure moves it."""
    clock = FakeClock()
    bar = progress.Task("student", total=30, completed=0, clock=clock)
    assert bar.eta() is None
    for _ in range(10):
        clock.tick(1)
        bar.advance(boundary=False)
    clock.tick(2)  # validation
    bar.mark()
    assert bar.eta() == pytest.approx(24.0)  # 20 steps at 1.2 s
    clock.tick(10)  # one slow step
    bar.advance(boundary=False)
    assert bar.eta() == pytest.approx(14.0)  # the same predicted end, 10 s later
    for _ in range(9):
        clock.tick(1)
        bar.advance(boundary=False)
    clock.tick(2)
    bar.mark()
    assert bar.eta() == pytest.approx(16.5)  # 33 s for 20 steps: 1.65 s each for the last 10


def test_resumed_training_measures_only_its_own_steps() -> None:
    """A training resumed at step 50 of 100 measures the steps it ran, not the ones before."""
    clock = FakeClock()
    bar = progress.Task("student", total=100, completed=50, clock=clock)
    for _ in range(10):
        clock.tick(0.5)
        bar.advance()
    assert bar.eta() == pytest.approx(20.0)


def test_estimated_total_is_a_lower_bound_until_every_stage_is_estimated() -> None:
    """Stages without an estimate are named; quick stages count as nothing; the total is exact once done."""
    clock = FakeClock()
    view, _ = plain_view(clock)
    view.plan([progress.Stage("distill"), progress.Stage("bench"), progress.Stage("report", quick=True)])
    with view.stage("distill"), view.task("student", total=10) as bar:
        clock.tick(5)
        assert view.total_text() == "total ≥ 0:05, not counting distill, bench"
        bar.advance(5)
        assert view.total_text() == "total ≥ 0:10, not counting bench"
        clock.tick(5)
        bar.advance(5)
    with view.stage("bench"), view.task("bench", total=4) as bar:
        clock.tick(3)
        bar.advance()
        assert view.total_text() == "total ~0:22"
        clock.tick(9)
        bar.advance(3)
    with view.stage("report"):
        clock.tick(1)
    assert view.total_text() == "total 0:23"


def test_rich_render_lists_stages_bars_and_total() -> None:
    """The live display: done stages with their time, the current one with its bar, count and ETA, pending ones."""
    clock = FakeClock()
    view = progress.View("rich", io.StringIO(), clock)
    view.plan([progress.Stage("data"), progress.Stage("distill"), progress.Stage("export", "6 targets")])
    with view.stage("data"):
        clock.tick(2)
    with view.stage("distill"), view.task("student", total=100) as bar:
        clock.tick(30)
        bar.advance(50, status="epoch 5/10 loss 0.412")
        screen = Console(width=120, color_system=None, record=True, file=io.StringIO())
        screen.print(view.render())
    lines = [line.rstrip() for line in screen.export_text().splitlines()]
    assert lines[0] == "✓ data               2.0 s"
    assert lines[1] == "▸ distill            0:30"
    assert re.fullmatch(r" +student ━+ +50/100 ETA ~0:30 epoch 5/10 loss 0\.412", lines[2]), lines[2]
    assert lines[3] == "· export (6 targets)"
    assert lines[4] == "elapsed 0:32 · total ≥ 1:02, not counting export"


def test_stage_list_follows_the_config(tiny_config_dict: dict) -> None:
    """prune only with a prune: section; calibrate only when an export target or pruning's measure target is int8;
    qat only with an int8 target and quantize.qat.when not never; the target count beside export."""
    assert [stage.name for stage in planned_stages(parse_config(tiny_config_dict))] == [
        "data",
        "distill",
        "calibrate",
        "export",
        "qat",
        "bench",
        "report",
    ]
    tiny_config_dict["quantize"] = {"qat": {"when": "never"}}
    tiny_config_dict["prune"] = {"method": "magnitude", "sparsity": 0.5}
    stages = planned_stages(parse_config(tiny_config_dict))
    assert [stage.name for stage in stages] == ["data", "distill", "calibrate", "prune", "export", "bench", "report"]
    tiny_config_dict["export"]["targets"] = ["onnx-fp32", "tflite-fp32"]
    tiny_config_dict["prune"]["measure"] = {"target": "onnx-fp32"}
    stages = planned_stages(parse_config(tiny_config_dict))
    assert [stage.label for stage in stages] == ["data", "distill", "prune", "export (2 targets)", "bench", "report"]


def _fake_pipeline(config, out: Path, force: set[str]) -> Path:
    """Stages that print as libraries do (C descriptors, stdio, print, logging, warnings) and as edgepipe does."""
    progress.plan([progress.Stage("data"), progress.Stage("export", "1 target")])
    with progress.stage("data"):
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text("{}")
        attach_run_log(out)  # as RunDir does once this process holds the run's writer lock
    with progress.stage("export"), progress.task("export", total=1) as bar:
        os.write(1, b"fd1 chatter from C\n")
        os.write(2, b"fd2 chatter from C\n")
        ctypes.CDLL(None).printf(b"c stdio line\n")
        print("python print")
        print("python stderr", file=sys.stderr)
        logging.warning("Please consider to run pre-processing")
        print(WARNING, file=sys.stderr)
        progress.log("onnx-fp32 built in 0.1 s")
        bar.advance()
    return out


def _events(stderr: str) -> list[str]:
    return [re.sub(r"\d+\.\d s", "T", line) for line in stderr.splitlines()]


def test_run_keeps_library_output_in_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `run`, everything libraries print (descriptors 1 and 2, Python, logging) lands in RUN/logs/run.log with
    the event lines; the terminal gets the plain event lines, edgepipe's warning and the final line only."""
    monkeypatch.setattr(pipeline.run, "run_pipeline", _fake_pipeline)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", "digits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _events(result.stderr) == [
        f"edgepipe run → {out}",
        "stages: data, export (1 target)",
        "data: started",
        "data: done in T",
        "export: started",
        WARNING,
        "export: onnx-fp32 built in T",
        "export: done in T",
        "finished in T",
    ]
    assert result.stdout.startswith(f"edgepipe: wrote {out / 'report.md'}")
    terminal = capfd.readouterr()
    log = (out / RUN_LOG).read_text()
    for line in LIBRARY_LINES:
        assert line in log, line
        assert line not in result.output + terminal.out + terminal.err, line
    assert log.startswith("--- edgepipe run at ") and "export: onnx-fp32 built in" in log and WARNING in log


def test_quiet_says_only_warnings_and_the_final_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --quiet`: the warning on stderr, `edgepipe: wrote …` on stdout, nothing else."""
    monkeypatch.setattr(pipeline.run, "run_pipeline", _fake_pipeline)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", "digits", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stderr == WARNING + "\n"
    assert result.stdout.splitlines() == [
        f"edgepipe: wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'manifest.json'}"
    ]


def test_a_failing_stage_ends_with_the_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed stage is said, then edgepipe's one error line reaches stderr (not the log); a directory that
    never became a run keeps no log behind."""

    def failing(config, out: Path, force: set[str]) -> Path:
        with progress.stage("data"):
            raise DataError("cannot read image x.png: truncated", "remove or replace the file")

    monkeypatch.setattr(pipeline.run, "run_pipeline", failing)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", "digits", "--out", str(out)])
    assert result.exit_code == DataError.exit_code
    assert _events(result.stderr) == [
        f"edgepipe run → {out}",
        "data: started",
        "data: failed after T",
        "edgepipe: error: cannot read image x.png: truncated (hint: remove or replace the file)",
    ]
    assert not out.exists()


FIRST_LINE_CHILD = textwrap.dedent(
    """
    import json, sys
    from pipeline import progress

    seen = []
    header = progress.View.header

    def recording(self, line):
        seen.append(sorted(name for name in ("torch", "tensorflow", "onnxruntime") if name in sys.modules))
        header(self, line)

    progress.View.header = recording
    from pipeline.cli import main

    sys.argv = ["edgepipe", "run", "--data", sys.argv[1], "--out", sys.argv[2]]
    try:
        main()
    except SystemExit as e:
        code = e.code
    print(json.dumps({"at_first_line": seen, "torch_later": "torch" in sys.modules, "code": code}))
    """
)


def test_first_line_comes_before_heavy_imports(tmp_path: Path) -> None:
    """`edgepipe run` says its first line before torch, TensorFlow or onnxruntime is imported (a run that then
    fails on its data imports torch, so the order is what is tested)."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_LINE_CHILD, str(tmp_path / "absent"), str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts == {"at_first_line": [[]], "torch_later": True, "code": DataError.exit_code}, done.stderr
    assert done.stderr.splitlines()[0] == f"edgepipe run → {tmp_path / 'run'}"


def test_bench_rows_are_one_line_each(capsys: pytest.CaptureFixture) -> None:
    """Each new bench row is a line: its top-1 and headline p50 (batch 1, 1 thread), or why it was skipped; rows
    said before are not said again."""
    from pipeline.manifest import LatencyStats, Measurement, Skipped, Timing
    from pipeline.stages.bench import _say_rows

    timing = Timing.model_construct(threads=1, latency=LatencyStats.model_construct(batch=1, p50_ms=0.1234))
    earlier = Skipped(artifact="student", runtime="pytorch", reason="said before")
    rows = [
        earlier,
        Measurement.model_construct(artifact="onnx-int8", runtime="onnxruntime", accuracy=97.5, timings=[timing]),
        Skipped(artifact="tflite-int8", runtime="onnxruntime via tf2onnx", reason="tf2onnx cannot convert RELU_0_TO_1"),
    ]
    with progress.view("plain"), progress.stage("bench"):
        _say_rows({id(earlier)}, rows)
    assert capsys.readouterr().err.splitlines()[1:3] == [
        "bench: onnx-int8 on onnxruntime: top-1 97.50 %, p50 0.123 ms (batch 1, 1 thread)",
        "bench: tflite-int8 on onnxruntime via tf2onnx: skipped (tf2onnx cannot convert RELU_0_TO_1)",
    ]
