"""Runners: one artifact on one runtime, fed float NCHW model input, returning float logits.

Each runner does the layout change (NCHW → NHWC) and int8 (de)quantization its artifact needs, exactly as the
manifest describes, so that accuracy measured here is what an outside consumer gets by following the manifest.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.manifest import TensorSpec


def cpu_threads(threads: int | None) -> int:
    return threads or os.cpu_count() or 1


@dataclass
class Runner:
    """``predict`` maps a float NCHW batch to float logits; ``timed_call`` returns a zero-arg callable
    running one pre-built batch (inputs prepared outside the timed region)."""

    runtime: str
    provider: str
    threads: int
    predict: Callable[[np.ndarray], np.ndarray]
    timed_call: Callable[[np.ndarray], Callable[[], object]]


def quantize_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """float → int8 with the tensor's scale and zero point (the formula in the manifest)."""
    info = np.iinfo(spec.dtype)
    return np.clip(np.round(x / spec.scale) + spec.zero_point, info.min, info.max).astype(spec.dtype)


def dequantize_output(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return (q.astype(np.float32) - spec.zero_point) * spec.scale


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Give torch's process-wide thread count back after a block (or a decorated function) that times runners."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torch_runner(model, threads: int | None) -> Runner:
    """A PyTorch module in eval mode (the teacher and the float student).

    torch's thread count is process-wide: ``predict`` sets it for its own call only (a training later in the same
    process must not inherit it: its float sums, hence its weights, depend on the thread count), ``timed_call``
    sets it when the timed callable is built and leaves it for the timing loop."""
    import torch

    threads = cpu_threads(threads)
    model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        finally:
            torch.set_num_threads(previous)

    def timed_call(x: np.ndarray) -> Callable[[], object]:
        torch.set_num_threads(threads)
        tensor = torch.from_numpy(np.ascontiguousarray(x))

        def call() -> object:
            with torch.inference_mode():
                return model(tensor)

        return call

    return Runner("pytorch", "CPU", threads, predict, timed_call)


def session_options(threads: int):
    """onnxruntime session options: ``threads`` intra-op threads, one inter-op thread, errors-only logging."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def onnxruntime_providers() -> list[str]:
    """Execution providers to benchmark on: CPU always, CUDA when the installed onnxruntime has it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return ["CPUExecutionProvider"] + (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else [])


def onnxruntime_runner(path: Path, provider: str, threads: int | None) -> Runner:
    """An ONNX file on one onnxruntime execution provider (float NCHW input)."""
    import onnxruntime as ort

    threads = cpu_threads(threads)
    session = ort.InferenceSession(str(path), session_options(threads), providers=[provider])
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime did not create a {provider} session (got {session.get_providers()})")
    input_name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(x, np.float32)})[0]

    def timed_call(x: np.ndarray) -> Callable[[], object]:
        feed = {input_name: np.ascontiguousarray(x, np.float32)}
        return lambda: session.run(None, feed)

    return Runner("onnxruntime", provider.removesuffix("ExecutionProvider"), threads, predict, timed_call)


def tflite_runner(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], threads: int | None) -> Runner:
    """A TFLite file on the LiteRT interpreter with XNNPACK, fed NHWC and (for int8) quantized input."""
    from ai_edge_litert.interpreter import Interpreter

    threads = cpu_threads(threads)
    interpreters: dict[int, Interpreter] = {}

    def interpreter_for(batch: int) -> Interpreter:
        if batch not in interpreters:
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
            interpreter.allocate_tensors()
            interpreters[batch] = interpreter
        return interpreters[batch]

    def to_feed(x: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), np.float32)
        return quantize_input(nhwc, inputs[0]) if inputs[0].scale is not None else nhwc

    def loaded(x: np.ndarray) -> Interpreter:
        interpreter = interpreter_for(len(x))
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], to_feed(x))
        return interpreter

    def predict(x: np.ndarray) -> np.ndarray:
        interpreter = loaded(x)
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        return dequantize_output(out, outputs[0]) if outputs[0].scale is not None else out

    def timed_call(x: np.ndarray) -> Callable[[], object]:
        return loaded(x).invoke  # the input tensor is set once, outside the timed region

    return Runner("tflite", "XNNPACK", threads, predict, timed_call)
