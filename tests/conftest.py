"""Shared fixtures: a tiny config, digits splits, every target of a tiny inline module (unit tests of targets), and
ONE finished run built once per session (end-to-end tests: what the stages write together)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from targets import TARGETS  # noqa: E402 (after the TF log settings)

ALL_TARGETS = list(TARGETS)
BUILD_FACTS = "finished_run_build.json"

TINY_CONFIG: dict = {
    "seed": 0,
    "data": {"source": "digits"},
    "teacher": {"epochs": 2, "batch_size": 64, "threads": 1},  # pinned: checkpoint bytes depend on the count
    "distill": {"epochs": 2, "batch_size": 64, "threads": 1},
    "calibration": {"size": 64},
    "export": {"targets": list(ALL_TARGETS)},
    "bench": {"warmup": 1, "min_runs": 5, "min_seconds": 0, "eval_batch": 128, "batch_sizes": [1, 16]},
}


@pytest.fixture
def tiny_config_dict() -> dict:
    """A fresh copy of the tiny digits config (safe to mutate)."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config mapping as YAML and return its path."""
    import yaml

    def write(raw: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def digits_splits():
    """The digits data split with seed 0 (what the tiny config loads)."""
    from pipeline.config import DataConfig
    from pipeline.data.splits import load_splits

    return load_splits(DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="session")
def inline_exports(tmp_path_factory: pytest.TempPathFactory, digits_splits):
    """Every target of a tiny inline module, each converted on first use through its real converter, no run
    directory (``tests/inline_targets.py``): what a unit test of a target file reads instead of ``finished_run``."""
    from inline_targets import InlineExports

    return InlineExports(tmp_path_factory.mktemp("inline-targets"), digits_splits)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run on digits (distill, calibrate, every target, qat, bench, report), built once, for end-to-end
    tests: what the stages write together (records, measurements, report, caching, release). A test of one target's
    file or of a runtime takes ``inline_exports`` instead.

    Treat it as read-only; tests that change a run use ``run_copy``.
    """
    import torch

    from pipeline.config_load import parse_config
    from pipeline.rundir import RunDir
    from pipeline.stages.bench import run_bench
    from pipeline.stages.calibrate import run_calibrate
    from pipeline.stages.distill import run_distill
    from pipeline.stages.export import run_export
    from pipeline.stages.qat import run_qat
    from pipeline.stages.report import run_report

    root = tmp_path_factory.mktemp("session") / "run"
    run = RunDir.create(root, parse_config(copy.deepcopy(TINY_CONFIG)))
    seconds, threads = {}, torch.get_num_threads()
    for stage, build_stage in [
        ("distill", lambda: run_distill(run)),
        ("calibrate", lambda: run_calibrate(run)),
        ("export", lambda: run_export(run, list(ALL_TARGETS))),
        ("qat", lambda: run_qat(run, list(ALL_TARGETS))),
        ("bench", lambda: run_bench(run)),
        ("report", lambda: run_report(run)),
    ]:
        start = time.perf_counter()
        build_stage()
        seconds[stage] = time.perf_counter() - start
    facts = {"seconds": seconds, "torch_threads": threads}
    (root.parent / BUILD_FACTS).write_text(json.dumps(facts))  # beside the run, so run_copy leaves it out
    return root


@pytest.fixture(scope="session")
def finished_run_build(finished_run: Path) -> dict:
    """How ``finished_run`` was built: ``seconds`` per stage from nothing (a cache test compares a re-run) and
    ``torch_threads``, torch's thread count around the stages (training itself runs at the pinned ``threads`` of
    TINY_CONFIG, but the teacher's logits for distillation are computed at this count: a retraining gives the same
    bytes only with the same counts)."""
    return json.loads((finished_run.parent / BUILD_FACTS).read_text())


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run (timestamps preserved) for tests that change it."""
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


@pytest.fixture(scope="session")
def manifest_json(finished_run: Path) -> dict:
    """The finished run's manifest as plain JSON, the way an outside consumer reads it."""
    import json

    return json.loads((finished_run / "manifest.json").read_text())


@pytest.fixture(scope="session")
def student_model(finished_run: Path):
    """The finished run's float student, loaded from its checkpoint."""
    import json

    from pipeline.training.models import load_checkpoint

    manifest = json.loads((finished_run / "manifest.json").read_text())
    info = manifest["artifacts"]["student"]["info"]
    return load_checkpoint(
        finished_run / manifest["artifacts"]["student"]["path"], info["arch"], info["in_channels"], info["num_classes"]
    )


@pytest.fixture
def snapshot_artifacts():
    """Map each export artifact of a run to (inode, mtime_ns, sha256); a rewrite changes the inode."""
    import json

    from pipeline.io import sha256_file

    def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
        manifest = json.loads((root / "manifest.json").read_text())
        states = {}
        for name, record in manifest["artifacts"].items():
            if record["stage"] == "export":
                stat = (root / record["path"]).stat()
                states[name] = (stat.st_ino, stat.st_mtime_ns, sha256_file(root / record["path"]))
        return states

    return snapshot


def run_tflite(path: Path, feed):
    """Run a TFLite file on one batch with the LiteRT interpreter (batch resized to the feed's)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(feed.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], feed)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.fixture(scope="session")
def tflite_invoke():
    """``tflite_invoke(path, feed) -> raw output``: LiteRT directly, no edgepipe runner."""
    return run_tflite


@pytest.fixture(scope="session")
def onnx_invoke():
    """``onnx_invoke(path, feed) -> first output``: onnxruntime CPU directly, no edgepipe runner."""
    import onnxruntime as ort

    def invoke(path: Path, feed):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: feed})[0]

    return invoke


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (as torchrun gives each process): tiny models train several times
    faster than on two contended threads. Request it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher-cnn trained for 2 epochs on digits, shared by every test that only trains students. Trained at
    2 intra-op threads (``teacher.threads``) whichever test asks first and however busy the machine (other float
    sums would give other weights, and results downstream would depend on the order tests run in)."""
    from pipeline.config_load import parse_config
    from pipeline.rundir import RunDir
    from pipeline.stages.distill import TEACHER_PATH, ensure_teacher

    root = tmp_path_factory.mktemp("teacher") / "run"
    config = {
        "seed": 0,
        "data": {"source": "digits"},
        "teacher": {"epochs": 2, "batch_size": 64, "threads": 2},
        "export": {"targets": []},
    }
    ensure_teacher(RunDir.create(root, parse_config(config)))
    return root / TEACHER_PATH


def with_p50(measurement, p50_ms: float):
    """A copy of ``measurement`` whose headline latency (batch 1, 1 thread) has p50 ``p50_ms``."""
    headline = measurement.headline
    timings = [
        t.model_copy(update={"latency": t.latency.model_copy(update={"p50_ms": p50_ms})}) if t is headline else t
        for t in measurement.timings
    ]
    return measurement.model_copy(update={"timings": timings})
