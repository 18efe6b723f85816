"""A TFLite artifact on onnxruntime: convert it with tf2onnx, run it, and measure parity with the interpreter.

The conversion keeps the artifact as it is (NHWC input, int8 I/O and QuantizeLinear/DequantizeLinear around the
quantized ops), so onnxruntime runs the same model the LiteRT interpreter runs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.errors import ExportError, first_line
from pipeline.io import atomic_path
from pipeline.manifest import Parity, TensorSpec
from pipeline.measure.runtimes import Runner, cpu_threads, dequantize_output, quantize_input, session_options


def parity(reference: np.ndarray, candidate: np.ndarray, reference_label: str = "") -> Parity:
    """Top-1 agreement (percent) and largest absolute logit difference of ``candidate`` against ``reference``."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    return Parity(
        reference=reference_label,
        top1_agreement=round(float((reference.argmax(1) == candidate.argmax(1)).mean() * 100), 2),
        max_abs_diff=round(float(np.abs(candidate - reference).max()), 6),
    )


@contextlib.contextmanager
def _tf2onnx_quiet() -> Iterator[None]:
    """tf2onnx's log records (e.g. "Unsupported ops: …") off the terminal; a failure's reason is in its exception."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def tflite_to_onnx(tflite_path: Path, onnx_path: Path) -> None:
    """Convert a TFLite file to ONNX with tf2onnx (quantized ops kept), written atomically to ``onnx_path``."""
    import onnx
    import tf2onnx

    try:
        with warnings.catch_warnings(), _tf2onnx_quiet():
            # tf2onnx reads the file with tf.lite.Interpreter, whose deprecation notice is not ours to act on.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
            model, _ = tf2onnx.convert.from_tflite(str(tflite_path))
        # tf2onnx leaves ops it cannot map in the graph and carries on; the checker rejects them.
        onnx.checker.check_model(model)
    except Exception as e:
        hint = _tf2onnx_hint(tflite_path)
        raise ExportError(f"tf2onnx could not convert {tflite_path}: {first_line(e)}", hint=hint) from e
    with atomic_path(onnx_path) as tmp:
        tmp.write_bytes(model.SerializeToString())


def _tf2onnx_hint(tflite_path: Path) -> str:
    """What to do when tf2onnx fails: nothing, if the interpreter loads the file (tf2onnx lacks one of its ops)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_path=str(tflite_path)).allocate_tensors()
    except Exception:
        return "check that the file is a complete .tflite (re-run the export stage to rebuild it)"
    return (
        "the file itself is sound, the TFLite interpreter loads it; tf2onnx cannot map one of its ops, so only "
        "the onnxruntime-via-tf2onnx cross-check is missing"
    )


def tf2onnx_runner(onnx_path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], threads: int | None) -> Runner:
    """A tf2onnx-converted TFLite on onnxruntime's CPU provider, fed as the TFLite's manifest specs say (NHWC, int8)."""
    import onnxruntime as ort

    threads = cpu_threads(threads)
    session = ort.InferenceSession(str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def to_feed(x: np.ndarray) -> dict[str, np.ndarray]:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), np.float32)
        return {input_name: quantize_input(nhwc, inputs[0]) if inputs[0].scale is not None else nhwc}

    def predict(x: np.ndarray) -> np.ndarray:
        out = session.run([output_name], to_feed(x))[0]
        return dequantize_output(out, outputs[0]) if outputs[0].scale is not None else out

    def timed_call(x: np.ndarray) -> Callable[[], object]:
        feed = to_feed(x)
        return lambda: session.run([output_name], feed)

    return Runner("onnxruntime", "CPU", threads, predict, timed_call)
