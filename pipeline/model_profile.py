"""Parameters and multiply-accumulates per image: onnx-tool for ONNX files, torch's FLOP counter for modules.

Both count the MACs of the compute ops only (convolutions and matrix products, in any precision), so a float
model, its int8 file and the PyTorch module it came from report the same arithmetic.
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


def onnx_profile(path: Path) -> ModelProfile:
    """Profile an ONNX file at batch 1 (symbolic dimensions set to 1) with onnx-tool."""
    import onnx
    import onnx_tool

    model = onnx.load(str(path), load_external_data=False)
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
    macs = sum(node.macs[0] for node in profiled.graph.nodemap.values() if node.op_type in COMPUTE_OPS)
    return ModelProfile(params=int(profiled.graph.params), macs=int(macs))


def torch_profile(module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Profile a PyTorch module on one image of ``input_shape`` (C, H, W); MACs = FLOPs / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.zeros(1, *input_shape))
    return ModelProfile(params=sum(p.numel() for p in module.parameters()), macs=counter.get_total_flops() // 2)


def tflite_profile(path: Path) -> ModelProfile:
    """Profile a TFLite file through its tf2onnx conversion (made in a temporary directory)."""
    import tempfile

    from pipeline.tflite_onnx import tflite_to_onnx

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        tflite_to_onnx(path, onnx_path)
        return onnx_profile(onnx_path)
