"""Peak resident memory of a fresh process that imports a runtime, loads one model and runs one batch.

The parent calls :func:`probe_memory`; it starts ``python -m pipeline.measure.memory_probe SPEC_JSON``, which reports
its peak resident set after the runtime import and again after load + run. The peak is Linux's VmHWM of the
process's own address space: ``ru_maxrss`` would also count the parent's pages at fork time.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from pipeline.manifest import TensorSpec


class ProbeSpec(BaseModel):
    """What the fresh process loads: an ONNX or TFLite file, or a model of a run (``run_dir`` + ``name``)."""

    kind: Literal["onnx", "tflite", "tf2onnx", "torch"]
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
    elif spec.kind == "onnx":
        import onnxruntime  # noqa: F401

        runtime = _maxrss_mib()
        runner = runtimes.onnxruntime_runner(spec.path, spec.provider, spec.threads)
    elif spec.kind == "tf2onnx":
        import onnxruntime  # noqa: F401

        from pipeline.measure.tflite_onnx import tf2onnx_runner

        runtime = _maxrss_mib()
        runner = tf2onnx_runner(Path(spec.path), spec.inputs, spec.outputs, spec.threads)
    else:
        import ai_edge_litert.interpreter  # noqa: F401

        runtime = _maxrss_mib()
        runner = runtimes.tflite_runner(spec.path, spec.inputs, spec.outputs, spec.threads)
    runner.predict(np.zeros((spec.batch, *spec.input_shape), np.float32))
    return MemoryUse(runtime_mib=round(runtime, 1), peak_mib=round(_maxrss_mib(), 1))


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
