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


def qdq_io_quantization(path: Path) -> dict:
    """Scale and zero point of the QuantizeLinear on the graph input and the DequantizeLinear on the graph output
    (a QDQ model's float I/O is quantized inside the graph with these)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants.update(
        {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    )
    found = {}
    for role, values, op, side in (
        ("input", graph.input, "QuantizeLinear", 0),
        ("output", graph.output, "DequantizeLinear", 1),
    ):
        names = {v.name for v in values}
        for node in graph.node:
            tensor = node.input[0] if side == 0 else node.output[0]
            if node.op_type == op and tensor in names and node.input[1] in constants:
                zero_point = constants.get(node.input[2]) if len(node.input) > 2 else None
                found[role] = {
                    "tensor": tensor,
                    "scale": float(constants[node.input[1]]),
                    "zero_point": int(zero_point) if zero_point is not None else 0,
                    "dtype": zero_point.dtype.name if zero_point is not None else "uint8",
                }
    return found
