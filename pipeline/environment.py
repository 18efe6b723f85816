"""Versions of every tool and facts about the machine, recorded in each run's manifest."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import pipeline

PACKAGES = [
    "torch",
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


def package_versions() -> dict[str, str]:
    """Installed versions of the packages edgepipe runs (absent ones are left out)."""
    versions = {}
    for name in PACKAGES:
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
