"""Shared ONNX helpers: tensor specs of a graph and op-type counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.manifest import TensorSpec
from targets.base import ExportResult


def _specs(values, layout: str | None) -> list[TensorSpec]:
    import onnx

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else "batch" for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append(TensorSpec(name=value.name, shape=shape, dtype=dtype, layout=layout))
    return specs


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each op type the graph holds."""
    import onnx

    return dict(Counter(node.op_type for node in onnx.load(path).graph.node))


def describe_onnx(path: Path, layout: str, info: dict) -> ExportResult:
    """Tensor specs and op counts of an ONNX file."""
    import onnx

    graph = onnx.load(path).graph
    return ExportResult(
        inputs=_specs(graph.input, layout),
        outputs=_specs(graph.output, None),
        info={**info, "op_counts": op_counts(path)},
    )
