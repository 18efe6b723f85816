"""Shared ONNX helpers: an exported file's description (tensor specs, op counts) and its QDQ I/O quantization."""

from __future__ import annotations

from pathlib import Path

from pipeline.measure.file_specs import onnx_op_counts, onnx_specs
from targets.base import ExportResult


def describe_onnx(path: Path, layout: str, info: dict) -> ExportResult:
    """Tensor specs and op counts of an ONNX file."""
    inputs, outputs = onnx_specs(path, layout)
    return ExportResult(inputs=inputs, outputs=outputs, info={**info, "op_counts": onnx_op_counts(path)})


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
