"""`edgepipe doctor`: is everything a run needs installed? Versions, the default data, and any GPU.

Each required component that is missing (or installed but fails to import) gets one fix line; a missing GPU is
only reported, never a failure (every stage runs on the CPU).
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from dataclasses import dataclass
from importlib import metadata

from pipeline.errors import first_line

REQUIREMENTS_FIX = "pip install -r requirements.txt"
CONVERTERS_FIX = "pip install --no-deps -r requirements-converters.txt"
DATA_FIX = "apt-get install dataset-fashion-mnist  (or run with --data digits)"


@dataclass(frozen=True)
class Component:
    """A Python package edgepipe needs: its label, importable module, distribution names and how to install it."""

    label: str
    module: str
    distributions: tuple[str, ...]
    fix: str


COMPONENTS = (
    Component("torch", "torch", ("torch",), REQUIREMENTS_FIX),
    Component("onnx", "onnx", ("onnx",), REQUIREMENTS_FIX),
    Component("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu"), REQUIREMENTS_FIX),
    Component("onnxsim", "onnxsim", ("onnxsim",), REQUIREMENTS_FIX),
    Component("onnxscript", "onnxscript", ("onnxscript",), REQUIREMENTS_FIX),
    Component("tensorflow", "tensorflow", ("tensorflow-cpu", "tensorflow"), REQUIREMENTS_FIX),
    Component("onnx2tf", "onnx2tf", ("onnx2tf",), CONVERTERS_FIX),
    Component("tf-keras", "tf_keras", ("tf-keras",), CONVERTERS_FIX),
    Component("tf2onnx", "tf2onnx", ("tf2onnx",), REQUIREMENTS_FIX),
    Component("tflite interpreter", "ai_edge_litert", ("ai-edge-litert",), REQUIREMENTS_FIX),
    Component("onnx-tool", "onnx_tool", ("onnx-tool",), REQUIREMENTS_FIX),
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report; ``fix`` is set when the check failed (and says how to fix it)."""

    label: str
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.fix is None


def _distribution_version(names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_component(component: Component) -> Check:
    """Installed (found by the import system), its version, and whether it really imports."""
    if importlib.util.find_spec(component.module) is None:
        return Check(component.label, "missing", f"{component.label}: {component.fix}")
    found = _distribution_version(component.distributions)
    try:
        module = importlib.import_module(component.module)
    except Exception as e:  # a broken install raises anything: ImportError, OSError, AttributeError...
        return Check(component.label, f"fails to import: {first_line(e)}", f"{component.label}: {component.fix}")
    version = found[1] if found else getattr(module, "__version__", "unknown version")
    distribution = f" ({found[0]})" if found and found[0] != component.label else ""
    detail = f"{version}{distribution}"
    if component.module == "onnxruntime":
        detail += f"; providers: {', '.join(onnxruntime_providers())}"
    return Check(component.label, detail)


def onnxruntime_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def check_default_data() -> Check:
    """The embedded default's data: Fashion-MNIST from Debian's dataset-fashion-mnist (IDX files)."""
    from pipeline.data.splits import FASHION_MNIST_DIR, _find_idx

    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    missing = [stem for stem in stems if _find_idx(FASHION_MNIST_DIR, stem) is None]
    if missing:
        return Check("fashion-mnist", f"missing under {FASHION_MNIST_DIR} ({', '.join(missing)})", f"data: {DATA_FIX}")
    return Check("fashion-mnist", f"installed under {FASHION_MNIST_DIR}")


def gpu_facts(checks: list[Check]) -> str:
    """Whether torch, onnxruntime and the driver see a GPU (informational: every stage runs on the CPU)."""
    torch_ok = any(check.label == "torch" and check.ok for check in checks)
    ort_ok = any(check.label == "onnxruntime" and check.ok for check in checks)
    facts = []
    if torch_ok:
        import torch

        if torch.cuda.is_available():
            facts.append(f"torch.cuda: {torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}")
        else:
            facts.append("torch.cuda: no GPU")
    cuda_ep = ort_ok and "CUDAExecutionProvider" in onnxruntime_providers()
    if ort_ok:
        facts.append(f"onnxruntime CUDAExecutionProvider: {'yes' if cuda_ep else 'no (CPU wheel)'}")
    smi = shutil.which("nvidia-smi")
    facts.append(f"nvidia-smi: {smi or 'not found'}")
    return "; ".join(facts)


def diagnose() -> tuple[list[Check], str]:
    """Every check, in report order, and the GPU line."""
    checks = [check_component(component) for component in COMPONENTS]
    checks.append(check_default_data())
    return checks, gpu_facts(checks)


def render(checks: list[Check], gpu: str) -> str:
    """The report as aligned text lines (status, label, detail)."""
    import platform
    import sys

    import pipeline

    width = max(len(check.label) for check in checks)
    lines = [f"edgepipe {pipeline.__version__}, Python {platform.python_version()} ({sys.executable})"]
    for check in checks:
        lines.append(f"{'ok' if check.ok else 'FAIL':<8}{check.label:<{width}}  {check.detail}")
    lines.append(f"{'info':<8}{'gpu':<{width}}  {gpu}")
    return "\n".join(lines)
