"""Versions of every tool and facts about the machine, recorded in each run's manifest."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import pipeline
from pipeline.formats import all_formats
from pipeline.manifest import PRUNED_STUDENT, QAT_STUDENT

PACKAGES = [
    "torch",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxsim",
    "onnxscript",
    "tensorflow-cpu",
    "tensorflow",
    "onnx2tf",
    "tf-keras",
    "tf2onnx",
    "ai-edge-litert",
    "numpy",
    "pydantic",
    "scikit-learn",
]


# The tools whose version changes what a stage writes, by the stage that runs them. A stage's artifact id includes
# these versions (RunDir.artifact_id), so an upgraded trainer or converter rebuilds what it shapes, and only that.
# A tool is one name with the distributions that can provide it (tensorflow-cpu and tensorflow are one module).
TOOL_DISTRIBUTIONS = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxsim": ("onnxsim",),
    "onnxscript": ("onnxscript",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "tf-keras": ("tf-keras",),
    "onnx2tf": ("onnx2tf",),
    "ai-edge-litert": ("ai-edge-litert",),
    "tf2onnx": ("tf2onnx",),
}
TRAINING_TOOLS = ("torch", "numpy")  # every trained student and teacher: weights, splits and shuffles
CALIBRATION_TOOLS = ("numpy",)  # the sample draw
# every export: torch.onnx (+ onnxscript for dynamo), onnxsim, onnx serialization, onnxruntime's quantizer and the
# int8 search's scoring, onnx2tf (on tf-keras) + TensorFlow's TFLite converter, the LiteRT interpreter that scores
# TFLite int8 attempts
EXPORT_TOOLS = (
    "torch",
    "onnx",
    "onnxsim",
    "onnxscript",
    "onnxruntime",
    "tensorflow",
    "tf-keras",
    "onnx2tf",
    "ai-edge-litert",
)
TFLITE_CONVERTER_TOOLS = ("onnx2tf", "tf-keras", "tensorflow")  # the SavedModel cached per ONNX file
TF2ONNX_TOOLS = ("tf2onnx", "onnx", "tensorflow")  # bench's TFLite → ONNX conversion, cached per TFLite file
STAGE_TOOLS = {
    "teacher": TRAINING_TOOLS,
    "student": TRAINING_TOOLS,
    "baseline": TRAINING_TOOLS,
    QAT_STUDENT: TRAINING_TOOLS,
    PRUNED_STUDENT: TRAINING_TOOLS,
    "calibration": CALIBRATION_TOOLS,
    "export": EXPORT_TOOLS,
}


def tool_version(tool: str) -> str | None:
    """Installed version of one tool of ``TOOL_DISTRIBUTIONS`` (None when none of its distributions is)."""
    for distribution in TOOL_DISTRIBUTIONS[tool]:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def tool_versions(tools: tuple[str, ...]) -> dict[str, str | None]:
    """``{tool: version}`` for ``tools`` (None for an absent one), for cache keys."""
    return {tool: tool_version(tool) for tool in tools}


def stage_tool_versions(stage: str) -> dict[str, str | None]:
    """Versions of the tools that shape a stage's output (``export:<target>`` is an export; an unknown stage
    gets every tool, so a new stage rebuilds too eagerly rather than never)."""
    return tool_versions(STAGE_TOOLS.get(stage.split(":", 1)[0], tuple(TOOL_DISTRIBUTIONS)))


def package_versions() -> dict[str, str]:
    """Installed versions of the packages edgepipe runs, the runtimes of every registered format among them
    (``Format.tools``); absent ones are left out."""
    runtimes = [name for fmt in all_formats() for tool in fmt.tools for name in TOOL_DISTRIBUTIONS.get(tool, (tool,))]
    versions = {}
    for name in dict.fromkeys([*PACKAGES, *runtimes]):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_facts() -> dict[str, object]:
    """CPU model and the SIMD flags that decide int8 kernels (AVX2, AVX-512, VNNI)."""
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "model": model,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512": any(flag.startswith("avx512") for flag in flags),
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
    }


def environment() -> dict[str, object]:
    return {
        "edgepipe": pipeline.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_facts(),
        "packages": package_versions(),
    }
