"""Peak resident memory of a fresh process that imports a runtime, loads one model and runs one batch.

The parent calls :func:`probe_memory`; it starts ``python -m pipeline.measure.memory_probe SPEC_JSON``, which reports
its peak resident set after the runtime import and again after load + run. The peak is Linux's VmHWM of the
process's own address space: ``ru_maxrss`` would also count the parent's pages at fork time.
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from pipeline.manifest import TensorSpec

if TYPE_CHECKING:
    from pipeline.measure.runtimes import Runner


class ProbeSpec(BaseModel):
    """What the fresh process loads: a file of a ``pipeline.formats`` format (``kind`` names it), a TFLite file's
    tf2onnx conversion (``tf2onnx``), or a model of a run (``torch``: ``run_dir`` + ``name``)."""

    kind: str = Field(description="torch, tf2onnx, or a FORMATS name (onnx, tflite).")
    path: str = ""
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    input_shape: list[int]
    threads: int = 1
    batch: int = Field(1, ge=1, description="Images in the batch run (a file that fixes its batch size takes that).")
    provider: str = "CPUExecutionProvider"
    run_dir: str = ""
    name: str = ""


class MemoryUse(BaseModel):
    runtime_mib: float
    peak_mib: float


def _maxrss_mib() -> float:
    """Peak resident MiB of this address space (VmHWM; ru_maxrss where /proc is absent)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_and_run(spec: ProbeSpec) -> MemoryUse:
    from pipeline.measure import runtimes

    if spec.kind == "torch":
        import torch  # noqa: F401 (the runtime import is part of the baseline)

        runtime = _maxrss_mib()
        from pipeline.rundir import RunDir
        from pipeline.training.run_models import load_model

        runner = runtimes.torch_runner(load_model(RunDir.open(Path(spec.run_dir)), spec.name), spec.threads)
    elif spec.kind == "tf2onnx":
        import onnxruntime  # noqa: F401

        from pipeline.measure.tflite_onnx import tf2onnx_runner

        runtime = _maxrss_mib()
        runner = tf2onnx_runner(Path(spec.path), spec.inputs, spec.outputs, spec.threads)
    else:
        runtime, runner = _format_runner(spec)
    runner.predict(np.zeros((spec.batch, *spec.input_shape), np.float32))
    return MemoryUse(runtime_mib=round(runtime, 1), peak_mib=round(_maxrss_mib(), 1))


def _format_runner(spec: ProbeSpec) -> tuple[float, Runner]:
    """(peak MiB after the format's runtime import, a runner of the file) for a ``kind`` naming a format."""
    from pipeline.formats import FORMATS

    fmt = FORMATS.get(spec.kind)
    if fmt.probe_import is None:
        raise ValueError(f"the {fmt.label} format has no memory probe")
    importlib.import_module(fmt.probe_import)  # the runtime import is part of the baseline
    runtime = _maxrss_mib()
    return runtime, fmt.runner(Path(spec.path), spec.inputs, spec.outputs, spec.threads, spec.provider)


def probe_memory(spec: ProbeSpec, timeout: float = 300) -> MemoryUse:
    """Run the probe in a fresh interpreter; a failure raises RuntimeError with the child's last line."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.measure.memory_probe", spec.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed: {tail}")
    return MemoryUse.model_validate_json(lines[-1])


if __name__ == "__main__":
    print(json.dumps(_load_and_run(ProbeSpec.model_validate_json(sys.argv[1])).model_dump()))
