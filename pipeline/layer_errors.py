"""Per-layer int8 error diagnosis with the quantizers' own debuggers, and TFLite's float fallback for chosen nodes."""

from __future__ import annotations

import csv
import difflib
import io
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.errors import ConfigError, ExportError

ORT_BATCH_SIZE = 32


@dataclass(frozen=True)
class LayerError:
    """How much signal one activation tensor loses to int8, and the node computing it (the one to keep in float).

    ``sqnr_db`` is 20·log10(‖f‖ / ‖q − f‖) over the debug samples, f the float activation and q the dequantized
    int8 one (lower is worse). ``scope`` says what q is: "cumulative" when the int8 model ran end to end, so the
    errors of earlier layers count too; "local" when this layer alone ran in int8 on the int8 model's own inputs.
    ``local_sqnr_db`` is the local figure where one is known.
    """

    tensor: str
    node: str
    op: str
    sqnr_db: float
    scope: Literal["cumulative", "local"]
    local_sqnr_db: float | None = None

    @property
    def rel_error(self) -> float:
        """‖q − f‖ / ‖f‖, the relative error ``sqnr_db`` stands for."""
        return 10 ** (-self.sqnr_db / 20)

    def to_dict(self) -> dict:
        """A JSON-ready record for the manifest (dB to 0.01, relative error to 4 significant digits)."""
        return {
            "tensor": self.tensor,
            "node": self.node,
            "op": self.op,
            "sqnr_db": round(self.sqnr_db, 2),
            "rel_error": float(f"{self.rel_error:.4g}"),
            "scope": self.scope,
            "local_sqnr_db": None if self.local_sqnr_db is None else round(self.local_sqnr_db, 2),
        }


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _worst_first(errors: list[LayerError]) -> list[LayerError]:
    return sorted(errors, key=lambda error: (error.sqnr_db, error.tensor))


def _computing_node(tensor: str, qdq_producers: dict) -> str | None:
    """Name of the QDQ model's node that computes ``tensor``, behind the tensor's own Quantize/DequantizeLinear."""
    node = qdq_producers.get(tensor)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        node = qdq_producers.get(node.input[0])
    return None if node is None else node.name


def onnx_layer_errors(
    float_model: Path, qdq_model: Path, x: np.ndarray, work_dir: Path, input_name: str | None = None
) -> list[LayerError]:
    """Every quantized activation of ``qdq_model`` against its twin in ``float_model``, worst first.

    Built on ``onnxruntime.quantization.qdq_loss_debug``. ``float_model`` must be the very file ``qdq_model`` was
    quantized from, whose tensor names the QDQ model keeps: for onnx-int8 that is ``student.preprocessed.onnx``
    (``quant_pre_process`` output), not the raw export. ``x`` is float32 NCHW, fed in batches of
    ``ORT_BATCH_SIZE``; keep it to a few hundred samples, since every activation of every sample is held in memory.

    ``sqnr_db`` is onnxruntime's cross-model ("xmodel") figure, cumulative: it shows which layer hurts the output.
    ``local_sqnr_db`` is its "qdq" figure (the tensor before vs after its own QuantizeLinear → DequantizeLinear).
    ``node`` names the float model's node that computes the tensor in the QDQ model, what
    ``quantize_static(nodes_to_exclude=...)`` takes. Where the quantizer folded the producing Relu or Clip into the
    op before it, that is the op before it (op "Conv+Relu"): excluding the Relu alone would unfold the pair and
    quantize the pre-activation too. There ``local_sqnr_db`` is None, as the figure would measure the activation
    function as well. A graph input has node "" and op "Input". The augmented models are written to a temporary
    folder in ``work_dir`` and removed.
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug

    try:
        float_graph = onnx.load(str(float_model), load_external_data=False).graph
        qdq_graph = onnx.load(str(qdq_model), load_external_data=False).graph
        name = input_name or float_graph.input[0].name
        x = np.ascontiguousarray(x, dtype=np.float32)
        batches = [{name: x[start : start + ORT_BATCH_SIZE]} for start in range(0, len(x), ORT_BATCH_SIZE)]
        activations = {}
        with tempfile.TemporaryDirectory(prefix=".layer-errors-", dir=work_dir) as scratch:
            for role, model in (("float", float_model), ("qdq", qdq_model)):
                augmented = str(Path(scratch) / f"{role}.onnx")
                qdq_loss_debug.modify_model_output_intermediate_tensors(str(model), augmented)
                activations[role] = qdq_loss_debug.collect_activations(augmented, batches)
        matching = qdq_loss_debug.create_activation_matching(activations["qdq"], activations["float"])
        figures = qdq_loss_debug.compute_activation_error({t: m for t, m in matching.items() if "float" in m})
    except Exception as e:
        raise ExportError(
            f"per-layer error of {Path(qdq_model).name} vs {Path(float_model).name} failed: {_first_line(e)}",
            "pass the float model the QDQ model was quantized from and float32 NCHW samples",
        ) from e
    float_nodes = {node.name: node for node in float_graph.node if node.name}
    float_producers = {output: node for node in float_graph.node for output in node.output}
    qdq_producers = {output: node for node in qdq_graph.node for output in node.output}
    errors = []
    for tensor, figure in figures.items():
        producer = float_producers.get(tensor)
        computing = _computing_node(tensor, qdq_producers)
        node = float_nodes.get(computing, producer)
        folded = node is not None and producer is not None and node.name != producer.name
        if node is None:
            op = "Input"
        else:
            op = f"{node.op_type}+{producer.op_type}" if folded else node.op_type
        errors.append(
            LayerError(
                tensor=tensor,
                node="" if node is None else node.name,
                op=op,
                sqnr_db=float(figure["xmodel_err"]),
                scope="cumulative",
                local_sqnr_db=None if folded else float(figure["qdq_err"]),
            )
        )
    return _worst_first(errors)


def _nhwc_samples(nhwc: np.ndarray) -> Iterator[list[np.ndarray]]:
    for sample in np.asarray(nhwc, dtype=np.float32):
        yield [sample[None]]


def _calibrated_debugger(saved_model: Path, calibration_nhwc: np.ndarray, denylisted_nodes: Sequence[str]):
    """A ``QuantizationDebugger`` on ``saved_model`` calibrated like ``convert_saved_model(..., "int8")``, its
    quantized models full-integer (int8 input and output) but for ``denylisted_nodes``."""
    import tensorflow as tf

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _nhwc_samples(calibration_nhwc)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # No inference_input/output_type: the debugger quantizes the calibrated model itself and ignores them;
    # fully_quantize=True is what makes its input and output int8.
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(denylisted_nodes), fully_quantize=True
    )
    try:
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_options=options)
    except Exception as e:
        raise ExportError(
            f"TFLite quantization debugger failed on {Path(saved_model).name}: {_first_line(e)}",
            "with every layer denylisted nothing is left to quantize: use tflite-fp32" if denylisted_nodes else None,
        ) from e
    _check_nodes(debugger.calibrated_model, denylisted_nodes)
    return debugger


def _tensor_names(model: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [detail["name"] for detail in Interpreter(model_content=model).get_tensor_details()]


def _check_nodes(calibrated_model: bytes, denylisted_nodes: Sequence[str]) -> None:
    """The converter ignores denylisted names it does not know; we refuse them instead."""
    known = set(_tensor_names(calibrated_model))
    unknown = [node for node in denylisted_nodes if node not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3)
        raise ConfigError(
            f"TFLite model has no node named {', '.join(map(repr, unknown))}",
            f"did you mean {' or '.join(map(repr, close))}?" if close else "use a `node` from tflite_layer_errors",
        )


def _sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """20·log10(‖f‖ / ‖q − f‖), with onnxruntime's epsilon floor on both norms."""
    epsilon = np.finfo(float).eps
    return 20 * math.log10(max(math.sqrt(signal_energy), epsilon) / max(math.sqrt(noise_energy), epsilon))


def tflite_layer_errors(
    saved_model: Path, calibration_nhwc: np.ndarray, debug_nhwc: np.ndarray, denylisted_nodes: Sequence[str] = ()
) -> list[LayerError]:
    """Each int8 layer of the full-integer TFLite model from ``saved_model``, worst first.

    Built on ``tf.lite.experimental.QuantizationDebugger``: calibrated on ``calibration_nhwc``, run sample by sample
    on ``debug_nhwc`` (both float32 NHWC), with int8 input and output like the tflite-int8 target. Its figures are
    local: each layer's float twin gets the same dequantized int8 inputs, so ``sqnr_db`` (= ``local_sqnr_db``)
    isolates the layer's own loss and does not accumulate. ``node`` = ``tensor``, the layer's output name in the
    calibrated model, which is what ``denylisted_nodes`` (here and in ``tflite_selective_int8``) takes; denylisted
    layers run in float and are not reported. ``op`` is the TFLite builtin (e.g. CONV_2D).
    """
    import tensorflow as tf

    calibrated = _calibrated_debugger(saved_model, calibration_nhwc, denylisted_nodes)
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics={"noise_energy": lambda diff: float(np.sum(np.square(diff, dtype=np.float64)))},
        layer_direct_compare_metrics={
            "signal_energy": lambda f, q, scale, zero_point: float(np.sum(np.square(f, dtype=np.float64)))
        },
    )
    try:
        # Only a debugger built from model content keeps every tensor alive, which the float side of
        # layer_direct_compare_metrics needs; NumericVerify's diff (noise) is kept either way.
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=calibrated.quant_model,
            debug_dataset=lambda: _nhwc_samples(debug_nhwc),
            debug_options=options,
        )
        debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
    except Exception as e:
        raise ExportError(f"TFLite quantization debugger run failed: {_first_line(e)}") from e
    known, debug_names = set(_tensor_names(calibrated.calibrated_model)), _tensor_names(calibrated.quant_model)
    errors = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        # The dump guesses the name by dropping the debug twin's last digit, which truncates an output that kept
        # its own name ("PartitionedCall:0" → "PartitionedCall:"); then the quantized tensor's name is the real one.
        name = row["tensor_name"] if row["tensor_name"] in known else debug_names[int(row["tensor_idx"])]
        sqnr_db = _sqnr_db(float(row["signal_energy"]), float(row["noise_energy"]))
        errors.append(
            LayerError(
                tensor=name,
                node=name,
                op=row["op_name"],
                sqnr_db=sqnr_db,
                scope="local",
                local_sqnr_db=sqnr_db,
            )
        )
    return _worst_first(errors)


def tflite_selective_int8(saved_model: Path, calibration_nhwc: np.ndarray, denylisted_nodes: Sequence[str]) -> bytes:
    """The TFLite model from ``saved_model``, int8 wherever it can be, ``denylisted_nodes`` kept in float.

    Input and output are int8, as in the tflite-int8 target (the converter allows that with float nodes inside).
    A denylisted layer runs in float between a DEQUANTIZE and a QUANTIZE: its output is re-quantized, with the
    same calibrated range, for each int8 consumer, so to keep an activation float (e.g. one with an outlier range)
    denylist its consumers too. Node names are the ``node`` fields of ``tflite_layer_errors``; an unknown one raises
    ``ConfigError`` (the converter would silently ignore it).
    """
    debugger = _calibrated_debugger(saved_model, calibration_nhwc, denylisted_nodes)
    try:
        return debugger.get_nondebug_quantized_model()
    except Exception as e:
        raise ExportError(f"TFLite selective int8 quantization failed: {_first_line(e)}") from e


PASS_THROUGH_OPS = {"MAX_POOL_2D", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD", "RELU", "RELU6"}


def tflite_float_groups(saved_model: Path, calibration_nhwc: np.ndarray) -> dict[str, list[str]]:
    """For each layer output, the outputs to keep float with it so that its activation really stays float: the ops
    reading it, through range-preserving ops (pools, reshapes), up to and including the next compute op.

    A layer denylisted alone has its output re-quantized with the same (possibly outlier-stretched) range before
    its int8 consumers; floating the whole group removes that re-quantization."""
    from ai_edge_litert.interpreter import Interpreter

    model = _calibrated_debugger(saved_model, calibration_nhwc, ()).calibrated_model
    interpreter = Interpreter(model_content=model)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001 (the op graph; LiteRT has no public accessor)
    readers: dict[int, list[dict]] = {}
    for op in ops:
        for tensor in op["inputs"]:
            readers.setdefault(int(tensor), []).append(op)

    def group(tensor: int) -> list[str]:
        found = [names[tensor]]
        for op in readers.get(tensor, []):
            for output in op["outputs"]:
                found += group(int(output)) if op["op_name"] in PASS_THROUGH_OPS else [names[int(output)]]
        return list(dict.fromkeys(found))

    return {names[int(out)]: group(int(out)) for op in ops for out in op["outputs"]}
