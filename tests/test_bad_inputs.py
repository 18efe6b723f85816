"""Bad inputs to every command: one `edgepipe: error:` line, the documented exit code, and the run directory
left exactly as it was (same file names and sha256, no temp file of ``pipeline.io.atomic_path`` left over).

Each case is a function that builds its bad input and returns the ``Call`` to make; most run in-process through
typer's CliRunner. Unreadable files and read-only directories need an unprivileged process: as root (where
chmod blocks nothing) those cases run ``python -m pipeline`` under ``setpriv`` without CAP_DAC_OVERRIDE, and
are skipped when that is not possible. A full disk is a real tmpfs when this process may mount one, else the
temp file's creation fails with ENOSPC (monkeypatched, in-process).
"""

from __future__ import annotations

import copy
import errno
import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.converter_log import RUN_LOG
from pipeline.io import sha256_file
from targets import TARGETS

REPO = Path(__file__).resolve().parents[1]
ERROR = "edgepipe: error:"
TEMP_FILE = re.compile(r"^\..+\.tmp")  # atomic_path's ".<name>.<random>.tmp<suffix>", release's ".<out>.<hex>.tmp"
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
CONFIG, DATA, MODEL, RUN_STATE = 2, 3, 4, 6  # pipeline/errors.py
TARGET_NAMES = tuple(TARGETS.names())  # an unknown target's error lists them all


@dataclass
class Call:
    """One command line, what it must leave unchanged, and how to run it."""

    args: list
    watch: list[Path] = field(default_factory=list)  # directories whose files must be byte-identical afterwards
    fresh: Path | None = None  # an --out that did not exist: absent afterwards, or holding only whole files
    unprivileged: bool = False  # needs a process that chmod can stop (not root)
    after: Callable[[], None] | None = None  # extra check


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Env:
    """What a case builds its bad input from: a scratch dir, the tiny digits config and, lazily, a finished run."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, config: dict) -> None:
        self.request, self.tmp, self.config = request, tmp, config
        self.cleanups: list[Callable[[], None]] = []
        self.mounted = False  # full_disk made a real full filesystem

    def fresh_run(self, config: Path, *options: object, unprivileged: bool = False) -> Call:
        """``edgepipe run CONFIG --out OUT [options]`` into an --out that does not exist yet."""
        out = self.tmp / "out"
        return Call(["run", config, "--out", out, *options], fresh=out, unprivileged=unprivileged)

    def write_config(self, raw: object = None, name: str = "config.yaml", **sections: dict) -> Path:
        """The tiny config with ``sections`` merged in, or ``raw`` (text or a mapping) as given."""
        if raw is None:
            raw = merged(self.config, sections)
        path = self.tmp / name
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
        return path

    @functools.cached_property
    def run(self) -> Path:
        """A private copy of the session's finished run."""
        return self.request.getfixturevalue("run_copy")

    @functools.cached_property
    def finished(self) -> Path:
        """The session's finished run (read-only: cases only read its artifacts)."""
        return self.request.getfixturevalue("finished_run")

    def edit_run_config(self, run: Path, **sections: dict) -> None:
        raw = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump(merged(raw, sections), sort_keys=False))

    def npz(self, name: str, x: np.ndarray, y: np.ndarray | None = None) -> Path:
        path = self.tmp / name
        arrays = {"x": x} if y is None else {"x": x, "y": y}
        np.savez(path, **arrays)
        return path

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def artifact(self, name: str) -> Path:
        return next((self.finished / "artifacts").glob(f"student-{name}.*"))

    def unreadable(self, path: Path) -> Path:
        path.chmod(0)
        self.cleanups.append(lambda: path.chmod(0o644))
        return path

    def read_only(self, root: Path) -> Path:
        """Take write permission off ``root`` and every directory under it."""
        dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]
        for directory in dirs:
            directory.chmod(0o555)
        self.cleanups.append(lambda: [d.chmod(0o755) for d in dirs])
        return root

    def full_disk(self, run: Path) -> Path:
        """Move ``run`` onto a filesystem with no space left and return its new path."""
        mount = self.tmp / "small-fs"
        mount.mkdir()
        size_kib = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) // 1024 + 1024
        mounted = (
            os.geteuid() == 0
            and shutil.which("mount")
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)], capture_output=True
            ).returncode
            == 0
        )
        if not mounted:  # creating the temp file is where a full ext4 fails first once its blocks are gone
            monkeypatch = self.request.getfixturevalue("monkeypatch")

            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr("pipeline.io.tempfile.mkstemp", no_space)
            return run
        self.mounted = True
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(mount)], check=False))
        moved = mount / run.name
        shutil.copytree(run, moved)
        try:  # the copy's small files (logs) round up to whole blocks: the disk may already be full here
            with open(mount / "filler", "wb") as filler:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        return moved


def merged(base: dict, sections: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


CASES: list = []


def case(exit_code: int, *marks: pytest.MarkDecorator, says: tuple[str, ...] = ()) -> Callable:
    """Register a case function ``(env) -> Call`` expecting ``exit_code`` and an error line holding every fragment
    of ``says``."""

    def add(build: Callable[[Env], Call]) -> Callable[[Env], Call]:
        name = build.__name__.replace("_", "-")
        CASES.append(pytest.param(build, exit_code, says, id=name, marks=marks))
        return build

    return add


def _absent(path: Path) -> Callable[[], None]:
    def check() -> None:
        assert not path.exists(), f"{path} was created"

    return check


# --- config (exit 2) -----------------------------------------------------------------------------------------


@case(CONFIG)
def run_config_missing(env: Env) -> Call:
    return env.fresh_run(env.tmp / "absent.yaml")


@case(CONFIG)
def run_config_bad_yaml_syntax(env: Env) -> Call:
    return env.fresh_run(env.write_config("seed: 0\ndata: {source: digits\n"))


@case(CONFIG)
def run_config_not_a_mapping(env: Env) -> Call:
    return env.fresh_run(env.write_config("- seed\n- data\n"))


@case(CONFIG)
def run_config_wrong_type(env: Env) -> Call:
    return env.fresh_run(env.write_config(distill={"epochs": "ten"}))


@case(CONFIG)
def run_config_section_not_a_mapping(env: Env) -> Call:
    return env.fresh_run(env.write_config(teacher=5))


@case(CONFIG)
def run_config_unknown_top_level_key(env: Env) -> Call:
    return env.fresh_run(env.write_config(sed=1))


@case(CONFIG)
def run_config_negative_epochs(env: Env) -> Call:
    return env.fresh_run(env.write_config(teacher={"epochs": -3}))


@case(CONFIG)
def run_config_calibration_size_zero(env: Env) -> Call:
    return env.fresh_run(env.write_config(calibration={"size": 0}))


@case(CONFIG, says=("distill.temprature",))
def run_config_unknown_nested_key(env: Env) -> Call:
    call = env.fresh_run(env.write_config(distill={"temprature": 3.0}))
    call.after = _absent(call.fresh)
    return call


@case(CONFIG)
def run_config_unknown_target(env: Env) -> Call:
    return env.fresh_run(env.write_config(export={"targets": ["onnx-fp32", "tflite-int4"]}))


@case(CONFIG, says=("'nope'", *TARGET_NAMES))
def export_unknown_target(env: Env) -> Call:
    return Call(["export", env.finished, "--target", "nope"], watch=[env.finished])


@case(CONFIG, says=("unknown stage 'distil' for --force", "distill, calibrate, prune, export, qat, bench, report"))
def run_force_unknown_stage(env: Env) -> Call:
    return env.fresh_run(env.write_config(), "--force", "distil")


@case(CONFIG, says=("has no prune: section",))
def prune_run_without_prune_section(env: Env) -> Call:
    return Call(["prune", env.run], watch=[env.run])


@case(CONFIG)
def run_config_unknown_arch(env: Env) -> Call:
    return env.fresh_run(env.write_config(teacher={"arch": "teacher-rnn"}))


@case(CONFIG)
def run_config_unreadable(env: Env) -> Call:
    return env.fresh_run(env.unreadable(env.write_config()), unprivileged=True)


@case(CONFIG)
def distill_config_option_bad_yaml(env: Env) -> Call:
    config = env.write_config("teacher: [epochs: 2\n")
    return Call(["distill", env.run, "--config", config], watch=[env.run])


@case(CONFIG, says=("names no int8 target in export.targets", "nothing to quantize"))
def quantize_without_int8_targets(env: Env) -> Call:
    env.edit_run_config(env.run, export={"targets": ["onnx-fp32", "tflite-fp16"]})
    return Call(["quantize", env.run], watch=[env.run])


@case(CONFIG)
def quantize_run_config_unknown_key(env: Env) -> Call:
    env.edit_run_config(env.run, calibration={"sise": 64})
    return Call(["quantize", env.run], watch=[env.run])


@case(CONFIG)
def export_run_config_wrong_type(env: Env) -> Call:
    env.edit_run_config(env.run, export={"opset": "latest"})
    return Call(["export", env.run, "--target", "onnx-fp32"], watch=[env.run])


@case(CONFIG, says=("needs --data",))
def bench_file_without_data(env: Env) -> Call:
    return Call(["bench", env.artifact("onnx-fp32")], watch=[env.finished])


@case(CONFIG)
def bench_file_zero_threads(env: Env) -> Call:
    return Call(["bench", env.artifact("onnx-int8"), "--data", "digits", "--threads", "0"], watch=[env.finished])


@case(CONFIG)
def bench_run_dir_with_file_options(env: Env) -> Call:
    return Call(["bench", env.run, "--batch", "4"], watch=[env.run])


@case(CONFIG, says=("config.yaml",))
def bench_run_dir_with_data(env: Env) -> Call:
    return Call(["bench", env.finished, "--data", "digits"], watch=[env.finished])


@case(CONFIG, says=("threads",))
def bench_file_threads_not_a_number(env: Env) -> Call:
    return Call(["bench", env.artifact("onnx-fp32"), "--data", "digits", "--threads", "many"], watch=[env.finished])


@case(CONFIG)
def report_threshold_without_compare(env: Env) -> Call:
    return Call(["report", env.run, "--max-size-increase", "3"], watch=[env.run])


# --- data (exit 3) -------------------------------------------------------------------------------------------


def _nan_images(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, 8, 8), np.nan, np.float32), np.arange(n) % 10


@case(DATA, says=("/nonexistent", "does not exist"))
def run_data_path_missing(env: Env) -> Call:
    call = env.fresh_run(env.write_config(), "--data", "/nonexistent")
    call.after = _absent(call.fresh)  # a bad data source leaves no run directory behind
    return call


@case(DATA)
def run_data_all_nan(env: Env) -> Call:
    return env.fresh_run(env.write_config(), "--data", env.npz("nan.npz", *_nan_images()))


@case(DATA)
def bench_file_data_all_nan(env: Env) -> Call:
    data = env.npz("nan.npz", *_nan_images())
    return Call(["bench", env.artifact("onnx-fp32"), "--data", data], watch=[env.finished])


@case(DATA)
def quantize_data_with_infinity(env: Env) -> Call:
    x = np.random.default_rng(0).random((200, 8, 8)).astype(np.float32)
    x[5, 3, 3] = np.inf
    env.edit_run_config(env.run, data={"source": str(env.npz("inf.npz", x, np.arange(200) % 10))})
    return Call(["quantize", env.run, "--force"], watch=[env.run])


@case(DATA)
def run_data_too_few_samples(env: Env) -> Call:
    data = env.npz("three.npz", np.zeros((3, 8, 8), np.uint8), np.array([0, 1, 2]))
    return env.fresh_run(env.write_config(), "--data", data)


@case(DATA)
def run_data_npz_without_labels(env: Env) -> Call:
    data = env.npz("x-only.npz", np.zeros((50, 8, 8), np.uint8))
    return env.fresh_run(env.write_config(), "--data", data)


@case(DATA)
def run_data_npz_random_bytes(env: Env) -> Call:
    data = env.file("noise.npz", np.random.default_rng(1).bytes(3000))
    return env.fresh_run(env.write_config(), "--data", data)


@case(DATA)
def bench_file_data_four_channels(env: Env) -> Call:
    data = env.npz("rgba.npz", np.zeros((50, 8, 8, 4), np.uint8), np.arange(50) % 10)
    return Call(["bench", env.artifact("onnx-fp32"), "--data", data], watch=[env.finished])


@case(DATA, says=("outputs 10 classes but the data has 12",))
def bench_file_data_more_classes_than_outputs(env: Env) -> Call:
    data = env.npz("twelve.npz", np.zeros((120, 8, 8), np.uint8), np.arange(120) % 12)
    return Call(["bench", env.artifact("tflite-int8"), "--data", data], watch=[env.finished])


@case(DATA)
def bench_file_data_unreadable(env: Env) -> Call:
    data = env.unreadable(env.npz("digits.npz", np.zeros((50, 8, 8), np.uint8), np.arange(50) % 10))
    return Call(["bench", env.artifact("onnx-fp32"), "--data", data], watch=[env.finished], unprivileged=True)


@case(DATA)
def quantize_calibration_larger_than_train_split(env: Env) -> Call:
    env.edit_run_config(env.run, calibration={"size": 5000})
    return Call(["quantize", env.run], watch=[env.run])


# --- model and checkpoint (exit 4) ---------------------------------------------------------------------------


def _teacher_bytes(env: Env) -> bytes:
    return (env.finished / "checkpoints" / "teacher.pt").read_bytes()


class MakesMarker:
    """Unpickling this runs ``open(marker, "w")``: what a weights_only load must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_checkpoint(env: Env, name: str) -> tuple[Path, Path]:
    marker = env.tmp / f"{name}.marker"
    path = env.tmp / name
    torch.save({"state_dict": {"0.weight": torch.zeros(1)}, "meta": MakesMarker(marker)}, path)
    return path, marker


def _no_marker(marker: Path) -> Callable[[], None]:
    def check() -> None:
        assert not marker.exists(), "loading the checkpoint ran code from its pickle"

    return check


@case(MODEL)
def run_teacher_checkpoint_missing(env: Env) -> Call:
    config = env.write_config(teacher={"checkpoint": str(env.tmp / "absent.pt")})
    return env.fresh_run(config)


@case(MODEL)
def run_teacher_checkpoint_truncated(env: Env) -> Call:
    whole = _teacher_bytes(env)
    checkpoint = env.file("truncated.pt", whole[: len(whole) // 2])
    return env.fresh_run(env.write_config(teacher={"checkpoint": str(checkpoint)}))


@case(MODEL)
def run_teacher_checkpoint_random_bytes(env: Env) -> Call:
    checkpoint = env.file("noise.pt", np.random.default_rng(2).bytes(4096))
    return env.fresh_run(env.write_config(teacher={"checkpoint": str(checkpoint)}))


@case(MODEL)
def run_teacher_checkpoint_runs_code_when_unpickled(env: Env) -> Call:
    out = env.tmp / "out"
    checkpoint, marker = _malicious_checkpoint(env, "evil.pt")
    config = env.write_config(teacher={"checkpoint": str(checkpoint)})
    return Call(["run", config, "--out", out], fresh=out, after=_no_marker(marker))


@case(MODEL)
def run_teacher_checkpoint_wrong_class_count(env: Env) -> Call:
    from pipeline.training.models import build_model

    checkpoint = env.tmp / "five-classes.pt"
    torch.save(build_model("teacher-cnn", 1, 5).state_dict(), checkpoint)
    return env.fresh_run(env.write_config(teacher={"checkpoint": str(checkpoint)}))


@case(MODEL)
def distill_teacher_checkpoint_wrong_channels(env: Env) -> Call:
    from pipeline.training.models import build_model

    checkpoint = env.tmp / "rgb.pt"
    torch.save(build_model("teacher-cnn", 3, 10).state_dict(), checkpoint)
    env.edit_run_config(env.run, teacher={"checkpoint": str(checkpoint)})
    return Call(["distill", env.run], watch=[env.run])


@case(MODEL)
def distill_teacher_checkpoint_not_a_state_dict(env: Env) -> Call:
    checkpoint = env.tmp / "list.pt"
    torch.save([1, 2, 3], checkpoint)
    env.edit_run_config(env.run, teacher={"checkpoint": str(checkpoint)})
    return Call(["distill", env.run], watch=[env.run])


@case(MODEL)
def distill_teacher_checkpoint_unreadable(env: Env) -> Call:
    checkpoint = env.unreadable(env.file("teacher.pt", _teacher_bytes(env)))
    env.edit_run_config(env.run, teacher={"checkpoint": str(checkpoint)})
    return Call(["distill", env.run], watch=[env.run], unprivileged=True)


@case(MODEL)
def run_teacher_arch_needs_other_input_shape(env: Env) -> Call:
    (env.tmp / "fixed_input.py").write_text(
        "from torch import nn\n\n\n"
        "def make(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))  # 1×8×8 only\n"
    )
    teacher = {"arch": f"{env.tmp / 'fixed_input.py'}:make", "checkpoint": None}
    return env.fresh_run(env.write_config(teacher=teacher, data={"image_size": [12, 12]}))


@case(MODEL)
def export_student_checkpoint_runs_code_when_unpickled(env: Env) -> Call:
    checkpoint, marker = _malicious_checkpoint(env, "evil-student.pt")
    shutil.copyfile(checkpoint, env.run / "checkpoints" / "student.pt")
    return Call(["export", env.run, "--target", "onnx-fp32"], watch=[env.run], after=_no_marker(marker))


@case(MODEL)
def export_student_checkpoint_truncated(env: Env) -> Call:
    student = env.run / "checkpoints" / "student.pt"
    student.write_bytes(student.read_bytes()[:1000])
    return Call(["export", env.run, "--target", "onnx-fp32"], watch=[env.run])


@case(MODEL)
def bench_file_random_bytes_onnx(env: Env) -> Call:
    model = env.file("noise.onnx", np.random.default_rng(3).bytes(2000))
    return Call(["bench", model, "--data", "digits"])


@case(MODEL)
def bench_file_truncated_tflite(env: Env) -> Call:
    model = env.file("cut.tflite", env.artifact("tflite-int8").read_bytes()[:5000])
    return Call(["bench", model, "--data", "digits"])


@case(MODEL, says=("unknown model format",))
def bench_file_unknown_format(env: Env) -> Call:
    return Call(["bench", env.finished / "checkpoints" / "student.pt", "--data", "digits"], watch=[env.finished])


@case(MODEL, says=("unknown model format",))
def bench_file_manifest_json(env: Env) -> Call:
    return Call(["bench", env.finished / "manifest.json", "--data", "digits"], watch=[env.finished])


@case(MODEL, says=("does not exist",))
def bench_file_missing(env: Env) -> Call:
    return Call(["bench", env.tmp / "absent.tflite", "--data", "digits"])


@case(CONFIG)  # a path argument the command cannot read is a usage error (click checks it before edgepipe runs)
def bench_file_unreadable(env: Env) -> Call:
    model = env.unreadable(env.file("student.onnx", env.artifact("onnx-fp32").read_bytes()))
    return Call(["bench", model, "--data", "digits"], unprivileged=True)


# --- run directory (exit 6) ----------------------------------------------------------------------------------


def _missing_run_dir(command: str) -> Callable[[Env], Call]:
    def build(env: Env) -> Call:
        return Call([command, env.tmp / "no-such-run"], after=_absent(env.tmp / "no-such-run"))

    build.__name__ = f"{command}_run_dir_missing"
    return build


for _command in ("distill", "calibrate", "quantize", "prune", "export", "bench", "report"):
    case(RUN_STATE, says=("no-such-run", "not an edgepipe run directory"))(_missing_run_dir(_command))


@case(RUN_STATE)
def distill_manifest_truncated(env: Env) -> Call:
    manifest = env.run / "manifest.json"
    manifest.write_text(manifest.read_text()[:500])
    return Call(["distill", env.run], watch=[env.run])


@case(RUN_STATE)
def report_manifest_unreadable(env: Env) -> Call:
    env.unreadable(env.run / "manifest.json")
    return Call(["report", env.run], watch=[env.run], unprivileged=True)


@case(RUN_STATE)
def report_config_missing(env: Env) -> Call:
    (env.run / "config.yaml").unlink()
    return Call(["report", env.run], watch=[env.run])


@case(RUN_STATE)
def export_student_checkpoint_missing(env: Env) -> Call:
    (env.run / "checkpoints" / "student.pt").unlink()
    return Call(["export", env.run, "--target", "onnx-fp32"], watch=[env.run])


@case(RUN_STATE, says=("has no manifest.json",))
def report_compare_run_missing(env: Env) -> Call:
    return Call(["report", env.run, "--compare", env.tmp / "no-run"], watch=[env.run])


@case(RUN_STATE)
def report_compare_manifest_not_json(env: Env) -> Call:
    other = env.tmp / "other"
    other.mkdir()
    (other / "manifest.json").write_text("{not json")
    return Call(["report", env.run, "--compare", other], watch=[env.run, other])


# --- writes that cannot land (exit 6) ------------------------------------------------------------------------


@case(RUN_STATE)
def report_read_only_run_dir(env: Env) -> Call:
    return Call(["report", env.read_only(env.run)], watch=[env.run], unprivileged=True)


@case(RUN_STATE)
def run_out_under_read_only_dir(env: Env) -> Call:
    parent = env.tmp / "read-only"
    parent.mkdir()
    out = env.read_only(parent) / "run"
    return Call(["run", env.write_config(), "--out", out], fresh=out, unprivileged=True)


@case(RUN_STATE)
def bench_json_under_a_file(env: Env) -> Call:
    blocker = env.file("a-file", b"not a directory")
    args = ["bench", env.artifact("onnx-int8"), "--data", "digits", "--threads", "1", "--batch", "1"]
    return Call([*args, "--json", blocker / "bench.json"], watch=[env.finished])


@case(RUN_STATE)
def report_disk_full(env: Env) -> Call:
    run = env.full_disk(env.run)
    return Call(["report", run], watch=[run])


@case(RUN_STATE)
def quantize_disk_full(env: Env) -> Call:
    run = env.full_disk(env.run)
    return Call(["quantize", run, "--force"], watch=[run])


# --- command-line usage (exit 2) -----------------------------------------------------------------------------


@case(CONFIG)
def targets_unknown_option(env: Env) -> Call:
    return Call(["targets", "--format", "json"])


@case(CONFIG)
def report_negative_threshold(env: Env) -> Call:
    return Call(["report", env.run, "--compare", env.run, "--max-accuracy-drop", "-1"], watch=[env.run])


@case(CONFIG)
def export_missing_run_dir_argument(env: Env) -> Call:
    return Call(["export"])


# --- release (when `edgepipe release` exists) ----------------------------------------------------------------

HAS_RELEASE = any((c.name or c.callback.__name__) == "release" for c in app.registered_commands)
needs_release = pytest.mark.skipif(not HAS_RELEASE, reason="`edgepipe release` does not exist yet")


@case(CONFIG, needs_release, says=("'tflite-int9'", "tflite-int8", "did you mean"))
def release_unknown_artifact(env: Env) -> Call:
    out = env.tmp / "bundle"
    return Call(["release", env.finished, "--target", "tflite-int9", "--out", out], watch=[env.finished], fresh=out)


@case(CONFIG, needs_release, says=("reference",))
def release_reference_artifact(env: Env) -> Call:
    out = env.tmp / "bundle"
    args = ["release", env.finished, "--target", "onnx-int8-ort-defaults", "--out", out]
    return Call(args, watch=[env.finished], fresh=out)


@case(CONFIG, needs_release)
def release_missing_target(env: Env) -> Call:
    out = env.tmp / "bundle"
    return Call(["release", env.finished, "--out", out], watch=[env.finished], fresh=out)


@case(CONFIG, needs_release, says=("--out",))
def release_missing_out(env: Env) -> Call:
    return Call(["release", env.finished, "--target", "onnx-int8"], watch=[env.finished])


@case(CONFIG, needs_release)
def release_out_inside_run(env: Env) -> Call:
    out = env.run / "bundle"
    return Call(["release", env.run, "--target", "onnx-int8", "--out", out], watch=[env.run])


@case(RUN_STATE, needs_release)
def release_artifact_changed_since_export(env: Env) -> Call:
    out = env.tmp / "bundle"
    artifact = next((env.run / "artifacts").glob("student-onnx-int8.*"))
    artifact.write_bytes(artifact.read_bytes()[:-10])
    return Call(["release", env.run, "--target", "onnx-int8", "--out", out], watch=[env.run], fresh=out)


@case(RUN_STATE, needs_release)
def release_disk_full(env: Env) -> Call:
    run = env.full_disk(env.run)
    if not env.mounted:
        pytest.skip("the bundle is not written through atomic_path: a full disk needs a real (tmpfs) filesystem")
    out = run.parent / "bundle"
    return Call(["release", run, "--target", "onnx-int8", "--out", out], watch=[run], fresh=out)


@case(RUN_STATE, needs_release)
def release_out_under_read_only_dir(env: Env) -> Call:
    parent = env.tmp / "read-only"
    parent.mkdir()
    out = env.read_only(parent) / "bundle"
    return Call(["release", env.run, "--target", "onnx-int8", "--out", out], watch=[env.run], unprivileged=True)


# --- the check -----------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str] | None:
    """Every file under ``root`` (hidden ones too) with its sha256; None when ``root`` does not exist."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _run_log(root: Path) -> bytes:
    """The run log under ``root`` (empty when there is none)."""
    log = root / RUN_LOG
    return log.read_bytes() if log.is_file() else b""


@functools.cache
def can_drop_dac() -> bool:
    return bool(shutil.which("setpriv")) and subprocess.run([*DROP_DAC, "true"], capture_output=True).returncode == 0


def invoke(call: Call) -> Result:
    """In-process through CliRunner; unprivileged cases as root: `python -m pipeline` without DAC override."""
    args = [str(arg) for arg in call.args]
    if not (call.unprivileged and os.geteuid() == 0):
        result = CliRunner().invoke(app, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # an escaped exception: show its traceback
        return Result(result.exit_code, result.stdout, result.stderr)
    if not can_drop_dac():
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE, so chmod blocks nothing")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    done = subprocess.run(
        [*DROP_DAC, sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env, cwd=REPO
    )
    return Result(done.returncode, done.stdout, done.stderr)


def assert_whole_files_only(out: Path) -> None:
    """A fresh --out is absent, or holds only a started run: config.yaml, a loadable manifest and the command's log
    (logs/run.log), no artifact."""
    if not out.exists():
        return
    from pipeline.manifest import Manifest

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert set(files) <= {"config.yaml", "manifest.json", "logs/run.log"}, files
    if "manifest.json" in files:
        assert Manifest.load(out / "manifest.json").artifacts == {}
    if "config.yaml" in files:
        assert isinstance(yaml.safe_load((out / "config.yaml").read_text()), dict)


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path, tiny_config_dict: dict):
    environment = Env(request, tmp_path, tiny_config_dict)
    yield environment
    for cleanup in reversed(environment.cleanups):
        cleanup()


@pytest.mark.parametrize(("build", "exit_code", "says"), CASES)
def test_bad_input(env: Env, build: Callable[[Env], Call], exit_code: int, says: tuple[str, ...]) -> None:
    """One `edgepipe: error:` line holding the case's fragments, the documented exit code, every watched file
    untouched (a run's log only appended to: it records the failed command), no temp file."""
    call = build(env)
    before = {root: snapshot(root) for root in call.watch}
    logs_before = {root: _run_log(root) for root in call.watch}
    result = invoke(call)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR)]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exit_code == exit_code, errors[0]
    assert all(fragment in errors[0] for fragment in says), (says, errors[0])
    for root, files in before.items():
        log = _run_log(root)
        assert log.startswith(logs_before[root]), f"{root}/{RUN_LOG} was rewritten, not appended to"
        after = snapshot(root)
        if after is not None and files is not None:
            after.pop(RUN_LOG, None), files.pop(RUN_LOG, None)
        assert after == files, f"{root} changed"
    if call.fresh is not None:
        assert_whole_files_only(call.fresh)
    scratch = [p for p in env.tmp.rglob("*") if TEMP_FILE.match(p.name)]  # files, and release's staging dirs
    assert not scratch, f"temp files left behind: {scratch}"
    if call.after:
        call.after()


def test_matrix_covers_every_command() -> None:
    """At least 30 cases, and every command that takes input appears in one."""
    assert len(CASES) >= 30
    used = {param.values[0].__name__.split("_")[0] for param in CASES}
    assert {"run", "distill", "calibrate", "quantize", "prune", "export", "bench", "report", "targets"} <= used
