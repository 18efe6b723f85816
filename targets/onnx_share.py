"""How much of a QDQ ONNX file really runs in int8: its compute nodes' MACs and weights, int8 or float.

A compute node (Conv, ConvTranspose, Gemm, MatMul) runs in int8 when onnxruntime can fuse it into an integer kernel:
its activation input and its weight both come from a DequantizeLinear (the weight's from an int8 constant). MACs are
onnx-tool's per-sample count (batch 1, bias adds included), the same figure ``pipeline.measure.model_profile`` reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.measure.model_profile import onnx_node_macs
from targets.int8_search import FloatLayer, Int8Share

SHARE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})
_INT8_TYPES = frozenset({2, 3})  # onnx.TensorProto.UINT8, INT8


def onnx_int8_share(path: Path) -> Int8Share:
    """The int8 share of a QDQ ONNX file's MACs and compute-node weight elements, and its float compute nodes.

    A MatMul of two activations has no weight: it counts as int8 when both inputs are dequantized. Raises on a
    graph onnx-tool cannot infer shapes for."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute})
    producers = {output: node for node in graph.node for output in node.output}
    macs = {name: count for name, (_, count) in onnx_node_macs(model).items()}

    def dequantized(name: str) -> bool:
        producer = producers.get(name)
        return producer is not None and producer.op_type == "DequantizeLinear"

    def weight(name: str) -> tuple[int, bool] | None:
        """(elements, stored as int8) of a constant input, None for an activation."""
        if name in constants:
            return int(np.prod(constants[name].dims)), constants[name].data_type in _INT8_TYPES
        producer = producers.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in constants:
            stored = constants[producer.input[0]]
            return int(np.prod(stored.dims)), stored.data_type in _INT8_TYPES
        return None

    total = int8_macs = weights = int8_weights = 0
    float_layers = []
    for node in graph.node:
        if node.op_type not in SHARE_OPS:
            continue
        inputs = list(node.input[:2])
        found = [weight(name) for name in inputs]
        constant = [w for w in found if w is not None]
        activations = [name for name, w in zip(inputs, found) if w is None]
        is_int8 = all(dequantized(name) for name in activations) and all(stored for _, stored in constant)
        node_total = macs.get(node.output[0], 0)
        total += node_total
        weights += sum(elements for elements, _ in constant)
        if is_int8:
            int8_macs += node_total
        else:
            float_layers.append(FloatLayer(node.name, node.op_type, node_total))
        int8_weights += sum(elements for elements, stored in constant if stored)
    return Int8Share(
        macs=int8_macs / total if total else 1.0,
        weight_bytes=int8_weights / weights if weights else 1.0,
        total_macs=total,
        float_layers=tuple(float_layers),
    )
