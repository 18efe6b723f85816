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
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
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


def onnx_profile(path: Path) -> ModelProfile:
    """Profile an ONNX file at batch 1 (symbolic dimensions set to 1) with onnx-tool."""
    import onnx

    graph = onnx_tool_graph(onnx.load(str(path), load_external_data=False))
    macs = sum(node.macs[0] for node in graph.nodemap.values() if node.op_type in COMPUTE_OPS)
    return ModelProfile(params=int(graph.params), macs=int(macs))


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
