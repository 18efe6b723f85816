"""What a model file says about itself: its input and output tensor specs, and counts that show what it computes
in (ONNX op types, TFLite tensor dtypes). Read with onnx / the LiteRT interpreter, imported when called."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.manifest import TensorSpec

Specs = tuple[list[TensorSpec], list[TensorSpec]]


def onnx_specs(path: Path, layout: str | None = None) -> Specs:
    """(inputs, outputs) of an ONNX graph; a dimension without a fixed size is ``"batch"``; inputs get ``layout``."""
    import onnx

    graph = onnx.load(path).graph
    return _onnx_values(graph.input, layout), _onnx_values(graph.output, None)


def _onnx_values(values, layout: str | None) -> list[TensorSpec]:
    import onnx

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else "batch" for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append(TensorSpec(name=value.name, shape=shape, dtype=dtype, layout=layout))
    return specs


def onnx_op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each op type the graph holds."""
    import onnx

    return dict(Counter(node.op_type for node in onnx.load(path).graph.node))


def tflite_specs(path: Path) -> Specs:
    """(inputs, outputs) of a TFLite file: inputs NHWC; an int8/uint8 tensor with its scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inputs = [_tflite_spec(d, "NHWC") for d in interpreter.get_input_details()]
    return inputs, [_tflite_spec(d, None) for d in interpreter.get_output_details()]


def _tflite_spec(detail: dict, layout: str | None) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    signature = [int(d) for d in detail["shape_signature"]]
    quantized = np.dtype(detail["dtype"]).kind in "iu" and scale != 0
    return TensorSpec(
        name=detail["name"],
        shape=["batch" if d < 0 else d for d in signature],
        dtype=np.dtype(detail["dtype"]).name,
        layout=layout,
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )


def tflite_dtype_counts(path: Path) -> dict[str, int]:
    """How many tensors of each dtype the TFLite file holds (proves int8 is really int8)."""
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for detail in Interpreter(model_path=str(path)).get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts
