"""Shared ONNX helpers: an exported file's description (tensor specs, op counts), its QDQ I/O quantization, and
dropping what no runtime reads from a quantizer's output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.measure.file_specs import onnx_op_counts, onnx_specs
from targets.base import ExportResult


def describe_onnx(path: Path, layout: str, info: dict) -> ExportResult:
    """Tensor specs and op counts of an ONNX file."""
    inputs, outputs = onnx_specs(path, layout)
    return ExportResult(inputs=inputs, outputs=outputs, info={**info, "op_counts": onnx_op_counts(path)})


def slim_onnx(path: Path) -> int:
    """Drop, in place, what onnxruntime's quantizer leaves in a file that no runtime reads: opset imports no node
    uses (its pre-processing declares eight, e.g. ``ai.onnx.training``) and ``value_info`` (intermediate shape
    hints). Nodes, initializers, I/O and metadata are untouched, so outputs are bit-identical; about 0.7 KB on the
    embedded default's 48 KB file. Files with external data are left as they are. Returns the bytes saved."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return 0
    used = {"ai.onnx"} | {node.domain or "ai.onnx" for node in _nodes(model)}
    imports = [o for o in model.opset_import if (o.domain or "ai.onnx") in used]
    if len(imports) == len(model.opset_import) and not model.graph.value_info:
        return 0
    before = path.stat().st_size
    del model.opset_import[:]
    model.opset_import.extend(imports)
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    return before - path.stat().st_size


def _nodes(model) -> Iterator:
    """Every node of the model: the graph's, its subgraphs' (If, Loop, Scan) and its local functions'."""
    import onnx

    graphs = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


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
