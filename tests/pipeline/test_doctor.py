"""`edgepipe doctor`: passes in this environment with the real versions; a missing or broken package, or missing
default data, exits 9 with one fix line per missing thing; a missing GPU is only reported."""

from __future__ import annotations

import importlib
import importlib.util
import re
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeline.data.splits
from pipeline.cli import app
from pipeline.doctor import COMPONENTS, CONVERTERS_FIX
from pipeline.errors import SetupError

FASHION_MNIST_INSTALLED = (pipeline.data.splits.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file() or (
    pipeline.data.splits.FASHION_MNIST_DIR / "train-images-idx3-ubyte"
).is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_INSTALLED, reason="dataset-fashion-mnist is not installed (apt-get needs root)"
)


def doctor():
    """`edgepipe doctor` in-process (monkeypatches apply)."""
    return CliRunner().invoke(app, ["doctor"])


def report_line(stdout: str, label: str) -> str:
    (line,) = [line for line in stdout.splitlines() if re.match(rf"^\S+\s+{re.escape(label)}\s{{2}}", line)]
    return line


def fix_lines(stderr: str) -> list[str]:
    return [line.removeprefix("edgepipe: fix: ") for line in stderr.splitlines() if line.startswith("edgepipe: fix:")]


def installed_version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    raise AssertionError(f"none of {distributions} is installed")


@needs_fashion_mnist
def test_doctor_passes_here_with_the_real_versions() -> None:
    """Everything is installed here: exit 0, every component ok with its installed version, no fix lines."""
    import onnxruntime

    result = doctor()
    assert result.exit_code == 0, result.output + result.stderr
    assert not fix_lines(result.stderr) and "error" not in result.stderr
    for component in COMPONENTS:
        line = report_line(result.stdout, component.label)
        assert line.startswith("ok "), line
        assert installed_version(*component.distributions) in line, line
    for label, distribution in [("torch", "torch"), ("onnx2tf", "onnx2tf"), ("tf2onnx", "tf2onnx")]:
        assert metadata.version(distribution) in report_line(result.stdout, label)
    providers = report_line(result.stdout, "onnxruntime").split("providers: ")[1]
    assert providers.split(", ") == onnxruntime.get_available_providers()
    assert report_line(result.stdout, "fashion-mnist").startswith("ok ")
    assert str(pipeline.data.splits.FASHION_MNIST_DIR) in result.stdout


def test_missing_converter_exits_9_with_its_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A package the import system cannot find fails the check: exit 9, one fix line naming it, one error line."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "onnx2tf" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(pipeline.data.splits, "FASHION_MNIST_DIR", tmp_path)  # data missing too: a second fix line
    result = doctor()
    assert result.exit_code == SetupError.exit_code == 9
    assert report_line(result.stdout, "onnx2tf").split() == ["FAIL", "onnx2tf", "missing"]
    assert report_line(result.stdout, "tf-keras").startswith("ok ")
    assert fix_lines(result.stderr) == [
        f"onnx2tf: {CONVERTERS_FIX}",
        "data: apt-get install dataset-fashion-mnist  (or run with --data digits)",
    ]
    assert CONVERTERS_FIX == "pip install --no-deps -r requirements-converters.txt"
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("edgepipe: error:")]
    assert "2 of 12 checks failed: onnx2tf, fashion-mnist" in error
    assert "Traceback" not in result.output + result.stderr


def test_package_that_fails_to_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed but broken (its import raises): the check fails with the import error's first line."""
    real_import = importlib.import_module

    def import_module(name, *args, **kwargs):
        if name == "tf2onnx":
            raise ImportError("numpy.core.multiarray failed to import\nmore detail")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_module)
    result = doctor()
    assert result.exit_code == 9
    line = report_line(result.stdout, "tf2onnx")
    assert line.startswith("FAIL") and line.endswith("fails to import: numpy.core.multiarray failed to import")
    assert "tf2onnx: pip install -r requirements.txt" in fix_lines(result.stderr)


@needs_fashion_mnist
def test_missing_gpu_is_informational(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CUDA anywhere still exits 0; the gpu line says what was looked for."""
    import shutil

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "nvidia-smi" else real_which(name))
    result = doctor()
    assert result.exit_code == 0, result.stderr
    gpu = report_line(result.stdout, "gpu")
    assert gpu.startswith("info ")
    assert "torch.cuda: no GPU" in gpu and "nvidia-smi: not found" in gpu
    assert "onnxruntime CUDAExecutionProvider: " in gpu


def test_visible_gpu_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU torch can see is named on the gpu line (simulated: this machine has none)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    result = doctor()
    assert "torch.cuda: 1 × NVIDIA H100 80GB HBM3" in report_line(result.stdout, "gpu")


def test_help_lists_doctor() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "doctor" in result.stdout
