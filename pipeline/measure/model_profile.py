"""Parameters and multiply-accumulates per image: onnx-tool for ONNX files, the interpreter's own graph for TFLite
files, torch's FLOP counter for modules.

All count the MACs of the compute ops only (convolutions and matrix products, in any precision; the ONNX and TFLite
counts include bias adds, PyTorch's do not), so a float model, its int8 files and the PyTorch module it came from
report the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

COMPUTE_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Einsum",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)


@dataclass(frozen=True)
class ModelProfile:
    params: int
    macs: int


def onnx_tool_graph(model):
    """onnx-tool's profiled graph of ``model`` (an onnx ModelProto) at batch 1: symbolic dimensions set to 1, shapes
    inferred, per-node MACs in ``node.macs[0]``. Raises whatever onnx-tool raises on a graph it cannot infer."""
    import onnx
    import onnx_tool

    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        feeds[value.name] = np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    profiled = onnx_tool.Model(model)
    profiled.graph.shape_infer(feeds)
    profiled.graph.profile()
    return profiled.graph


def einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """Multiply-accumulates of ``Einsum(equation)`` on inputs of ``shapes``: the product of every index's size (each
    combination of indices is one multiply-add), an ellipsis counting as the product of the dims it stands for."""
    sizes: dict[str, int] = {}
    for term, shape in zip(equation.replace(" ", "").split("->")[0].split(","), shapes):
        if "..." in term:
            start = term.index("...")
            covered = len(shape) - (len(term) - 3)
            sizes["..."] = max(sizes.get("...", 1), int(np.prod(shape[start : start + covered])))
            term, shape = term.replace("...", ""), list(shape[:start]) + list(shape[start + covered :])
        sizes.update(zip(term, (int(d) for d in shape)))
    return int(np.prod(list(sizes.values()))) if sizes else 0


def _einsum_node_macs(model) -> dict[str, int]:
    """MACs of each Einsum node (onnx-tool counts none), by its first output's name, from ONNX shape inference at
    batch 1."""
    import onnx

    einsums = [node for node in model.graph.node if node.op_type == "Einsum"]
    if not einsums:
        return {}
    static = onnx.ModelProto.FromString(model.SerializeToString())
    for value in static.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(static).graph
    shapes = {t.name: list(t.dims) for t in inferred.initializer}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    equation = {node.output[0]: onnx.helper.get_attribute_value(node.attribute[0]) for node in einsums}
    return {
        node.output[0]: einsum_macs(equation[node.output[0]].decode(), [shapes.get(name, []) for name in node.input])
        for node in einsums
    }


def _onnx_counts(model) -> tuple[int, dict[str, tuple[str, int]]]:
    """(parameters, {first output name: (op type, MACs per sample)} of the compute nodes) of ``model``, left
    unchanged: onnx-tool's counts at batch 1, Einsum's from its equation."""
    import onnx

    graph = onnx_tool_graph(onnx.ModelProto.FromString(model.SerializeToString()))  # onnx-tool edits what it gets
    macs = {node.output[0]: (node.op_type, int(node.macs[0])) for node in graph.nodemap.values()}
    macs.update({name: ("Einsum", count) for name, count in _einsum_node_macs(model).items()})
    return int(graph.params), {name: (op, count) for name, (op, count) in macs.items() if op in COMPUTE_OPS}


def onnx_node_macs(model) -> dict[str, tuple[str, int]]:
    """(op type, MACs per sample) of each compute node of ``model`` (an onnx ModelProto), by its first output's name."""
    return _onnx_counts(model)[1]


def onnx_profile(path: Path) -> ModelProfile:
    """Profile an ONNX file per image with onnx-tool (symbolic dimensions set to 1; Einsum from its equation); a
    file whose first input fixes the batch at B counts B images, so its MACs are divided by B."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    params, macs = _onnx_counts(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    batch = max(dims[0].dim_value, 1) if dims else 1  # 0: a symbolic batch, counted at 1
    return ModelProfile(params=params, macs=sum(count for _, count in macs.values()) // batch)


def torch_profile(module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Profile a PyTorch module on one image of ``input_shape`` (C, H, W); MACs = FLOPs / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.zeros(1, *input_shape))
    return ModelProfile(params=sum(p.numel() for p in module.parameters()), macs=counter.get_total_flops() // 2)


def _tflite_op_macs(op: str, inputs: list[np.ndarray | None], output: np.ndarray) -> int:
    """MACs of one TFLite compute op from its tensor shapes (None: an absent optional input); 0 for other ops.

    Bias adds count one MAC per output element, as onnx-tool counts them for Conv and Gemm."""
    out = int(np.prod(output))
    bias = out if len(inputs) > (3 if op == "TRANSPOSE_CONV" else 2) and inputs[-1] is not None else 0
    if op == "CONV_2D":  # filter [O, KH, KW, I / groups]
        return out * int(np.prod(inputs[1][1:])) + bias
    if op == "DEPTHWISE_CONV_2D":  # filter [1, KH, KW, O]
        return out * int(np.prod(inputs[1][1:3])) + bias
    if op == "FULLY_CONNECTED":  # weights [O, I]
        return out * int(inputs[1][-1]) + bias
    if op == "BATCH_MATMUL":  # lhs [..., M, K] (or [..., K, M] when transposed)
        lhs = inputs[0]
        return out * int(lhs[-1] if lhs[-2] == output[-2] else lhs[-2])
    if op == "TRANSPOSE_CONV":  # (output shape, filter [O, KH, KW, I], input, bias)
        return int(np.prod(inputs[2])) * int(np.prod(inputs[1][:3])) + bias
    return 0


def tflite_profile(path: Path) -> ModelProfile:
    """Profile a TFLite file from its own graph at batch 1: parameters are the elements of its constant tensors
    (weights, biases and small shape constants, in whatever precision they are stored), MACs those of its
    convolutions and matrix products, from the interpreter's tensor shapes (no conversion to ONNX)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()  # every tensor's shape, at the file's default (batch 1) input shape
    shapes = {t["index"]: t["shape"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the op graph (a delegate would hide it behind one op)
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    constants = {int(i) for op in ops for i in op["inputs"] if i >= 0} - produced - graph_inputs
    batch = max(int(interpreter.get_input_details()[0]["shape"][0]), 1)
    macs = sum(
        _tflite_op_macs(op["op_name"], [shapes.get(int(i)) for i in op["inputs"]], shapes[int(op["outputs"][0])])
        for op in ops
    )
    return ModelProfile(params=sum(int(np.prod(shapes[i])) for i in constants), macs=macs // batch)
