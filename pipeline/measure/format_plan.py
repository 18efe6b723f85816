"""The harness plan of a model file on its format's own runtime (``pipeline.formats``): what bench measures for an
exported file and `edgepipe bench FILE` for any file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipeline.formats import Format
from pipeline.manifest import TensorSpec
from pipeline.measure.harness import Plan
from pipeline.measure.memory_probe import ProbeSpec
from pipeline.measure.runtimes import Runner


def format_probe(
    fmt: Format,
    path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    shape: list[int],
    provider: str,
    batch: int = 1,
) -> ProbeSpec | None:
    """The memory probe of the file (``shape``: C, H, W of one image); None when the format has none."""
    if fmt.probe_import is None:
        return None
    return ProbeSpec(
        kind=fmt.name,
        path=str(path),
        input_shape=shape,
        batch=batch,
        provider=provider,
        inputs=inputs,
        outputs=outputs,
    )


def format_plan(
    fmt: Format,
    artifact: str,
    path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    shape: list[int],
    provider: str,
    file_bytes: Callable[[], int],
    batch: int = 1,
    fit: Callable[[Runner], Runner] = lambda runner: runner,
) -> Plan:
    """``artifact`` (the file at ``path``, fed as ``inputs`` say) on ``provider`` of its format's runtime.

    Args:
        shape: (C, H, W) of one image, for the memory probe.
        file_bytes: the size the row reports.
        batch: the batch the memory probe runs (a file that fixes its batch size takes that).
        fit: wraps each runner (a fixed batch size's padding).

    A file whose input layout is not the format's own (an NHWC ONNX file) gets no memory probe: the probe measures
    the runtime fed as it takes files natively."""
    probe = format_probe(fmt, path, inputs, outputs, shape, provider, batch) if inputs[0].layout == fmt.layout else None
    return Plan(
        artifact=artifact,
        runtime=fmt.plan_runtime(provider),
        make_runner=lambda threads: fit(fmt.runner(path, inputs, outputs, threads, provider)),
        file_bytes=file_bytes,
        profile=(lambda: fmt.profile(path)) if fmt.profile else None,
        probe=probe,
    )
