"""Runners: one artifact on one runtime, fed float NCHW model input, returning float logits.

Each runner does the layout change (NCHW → NHWC) and int8 (de)quantization its artifact needs, exactly as the
manifest describes, so that accuracy measured here is what an outside consumer gets by following the manifest.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.manifest import TensorSpec
from pipeline.measure.machine_load import usable_cores


def cpu_threads(threads: int | None) -> int:
    """``threads``, or when None every core this process may use (CPU affinity, cgroup quota)."""
    return threads or usable_cores()


def _nothing() -> None:
    return None


@dataclass
class Runner:
    """``predict`` maps a float NCHW batch to float logits; ``timed_call`` returns a zero-arg callable
    running one pre-built batch (inputs prepared outside the timed region); ``enter`` makes the runner's
    process-wide settings current (torch's thread count) before its timed calls, when runners take turns."""

    runtime: str
    provider: str
    threads: int
    predict: Callable[[np.ndarray], np.ndarray]
    timed_call: Callable[[np.ndarray], Callable[[], object]]
    enter: Callable[[], None] = _nothing


def fed(runner: Runner, convert: Callable[[np.ndarray], np.ndarray], outputs=lambda y: y) -> Runner:
    """``runner`` with each input converted first (outside any timed region) and its outputs after."""
    return Runner(
        runner.runtime,
        runner.provider,
        runner.threads,
        lambda x: outputs(runner.predict(convert(x))),
        lambda x: runner.timed_call(convert(x)),
        runner.enter,
    )


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


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
    process must not inherit it: its float sums, hence its weights, depend on the thread count); ``timed_call``
    sets it when the timed callable is built and ``enter`` sets it again before each window of timed calls (runners
    of several thread counts take turns); both leave it for the timing loop."""
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

    return Runner("pytorch", "CPU", threads, predict, timed_call, lambda: torch.set_num_threads(threads))


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


@functools.lru_cache(maxsize=4)
def _tensorflow_model(path: str) -> tuple[Callable, list[TensorSpec], list[TensorSpec], int]:
    """A Keras file or SavedModel directory as (function of one float batch, input specs, output specs,
    parameter count)."""
    import tensorflow as tf

    def spec(name: str, shape, dtype) -> TensorSpec:
        dims = list(shape)
        return TensorSpec(name=name, shape=[d if d is not None else "batch" for d in dims], dtype=str(dtype))

    if Path(path).is_file():
        import keras

        model = keras.saving.load_model(path, compile=False)
        inputs = [spec(t.name, t.shape, t.dtype) for t in model.inputs]
        outputs = [spec(t.name, t.shape, t.dtype) for t in model.outputs]
        signature = [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)]
        call = tf.function(lambda t: model(t, training=False), input_signature=signature)
        return call, inputs, outputs, int(model.count_params())
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    in_specs = signature.structured_input_signature[1]
    out_name = sorted(signature.structured_outputs)[0]
    inputs = [spec(name, s.shape, s.dtype.name) for name, s in sorted(in_specs.items())]
    outputs = [spec(out_name, s.shape, s.dtype.name) for s in [signature.structured_outputs[out_name]]]
    in_name = inputs[0].name
    params = sum(int(np.prod(v.shape)) for v in loaded.variables)
    return (lambda t: signature(**{in_name: t})[out_name]), inputs, outputs, params


def tensorflow_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of a Keras file or SavedModel directory."""
    _, inputs, outputs, _ = _tensorflow_model(str(path))
    return inputs, outputs


def tensorflow_parameters(path: Path) -> int:
    """Parameter count of a Keras file or SavedModel directory."""
    return _tensorflow_model(str(path))[3]


def tensorflow_runner(path: Path, layout: str, threads: int | None) -> Runner:
    """A Keras file or SavedModel on TensorFlow (CPU), fed float NCHW (laid out as ``layout``).

    TensorFlow fixes its thread pool when it first runs an op; ``threads`` is applied when it can still be, and
    the runner reports the thread count TensorFlow really uses."""
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # raised once TensorFlow's context exists
        tf.config.threading.set_intra_op_parallelism_threads(cpu_threads(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    actual = tf.config.threading.get_intra_op_parallelism_threads() or cpu_threads(None)
    call = _tensorflow_model(str(path))[0]

    def to_feed(x: np.ndarray):
        x = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
        return tf.constant(np.ascontiguousarray(x, np.float32))

    def predict(x: np.ndarray) -> np.ndarray:
        return call(to_feed(x)).numpy()

    def timed_call(x: np.ndarray) -> Callable[[], object]:
        feed = to_feed(x)
        return lambda: call(feed).numpy()  # .numpy(): wait for the result, as the other runtimes do

    return Runner("tensorflow", "CPU", actual, predict, timed_call)
