"""Per-layer int8 error diagnosis with the quantizers' own debuggers; TFLite's calibration (with degenerate ranges
repaired) and its full-integer quantization with chosen nodes kept in float."""

from __future__ import annotations

import csv
import difflib
import io
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.errors import ConfigError, ExportError, first_line

ORT_BATCH_SIZE = 32


@dataclass(frozen=True)
class LayerError:
    """How much signal one activation tensor loses to int8, and the node computing it (the one to keep in float).

    ``sqnr_db`` is 20·log10(‖f‖ / ‖q − f‖) over the debug samples, f the float activation and q the dequantized
    int8 one (lower is worse). ``scope`` says what q is: "cumulative" when the int8 model ran end to end, so the
    errors of earlier layers count too; "local" when this layer alone ran in int8 on the int8 model's own inputs.
    ``local_sqnr_db`` is the local figure where one is known.

    A tensor whose float and int8 values are both all zero loses nothing: its ``sqnr_db`` is ``math.inf`` (None in
    ``to_dict``) and it ranks last. ``degenerate`` marks a tensor whose int8 range is broken (non-finite, set by a
    ±float-max constant, or ≥ ``DEGENERATE_RATIO`` × its op's inputs' range): it ranks first, whatever its SQNR.
    ``note`` says why, for the manifest.
    """

    tensor: str
    node: str
    op: str
    sqnr_db: float
    scope: Literal["cumulative", "local"]
    local_sqnr_db: float | None = None
    degenerate: bool = False
    note: str | None = None

    @property
    def rel_error(self) -> float:
        """‖q − f‖ / ‖f‖, the relative error ``sqnr_db`` stands for (0 for an exact tensor)."""
        return 10 ** (-self.sqnr_db / 20)

    def to_dict(self) -> dict:
        """A JSON-ready record for the manifest (dB to 0.01, relative error to 4 significant digits; an exact
        tensor's dB are None)."""
        return {
            "tensor": self.tensor,
            "node": self.node,
            "op": self.op,
            "sqnr_db": _db(self.sqnr_db),
            "rel_error": float(f"{self.rel_error:.4g}"),
            "scope": self.scope,
            "local_sqnr_db": None if self.local_sqnr_db is None else _db(self.local_sqnr_db),
            "degenerate": self.degenerate,
            "note": self.note,
        }


EXACT_NOTE = "exact: the float and int8 tensors are all zero"


def _db(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None


def _worst_first(errors: list[LayerError]) -> list[LayerError]:
    """Degenerate ranges first, then by SQNR (lowest first); exact tensors (inf dB) last."""
    return sorted(errors, key=lambda error: (not error.degenerate, error.sqnr_db, error.tensor))


def _all_zero(*batches: Sequence[np.ndarray] | None) -> bool:
    """Each argument present and every value of every batch in it zero."""
    return all(arrays is not None and not any(np.any(array) for array in arrays) for arrays in batches)


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
        matching = {tensor: pair for tensor, pair in matching.items() if "float" in pair}
        figures = qdq_loss_debug.compute_activation_error(matching)
    except Exception as e:
        raise ExportError(
            f"per-layer error of {Path(qdq_model).name} vs {Path(float_model).name} failed: {first_line(e)}",
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
        # onnxruntime floors both norms at epsilon, so an all-zero tensor (a dead branch) reads 0 dB, the worst.
        exact = _all_zero(matching[tensor]["float"], matching[tensor].get("post_qdq"))
        errors.append(
            LayerError(
                tensor=tensor,
                node="" if node is None else node.name,
                op=op,
                sqnr_db=math.inf if exact else float(figure["xmodel_err"]),
                scope="cumulative",
                local_sqnr_db=None if folded else math.inf if exact else float(figure["qdq_err"]),
                note=EXACT_NOTE if exact else None,
            )
        )
    return _worst_first(errors)


def _nhwc_samples(nhwc: np.ndarray) -> Iterator[list[np.ndarray]]:
    for sample in np.asarray(nhwc, dtype=np.float32):
        yield [sample[None]]


# A calibrated bound this large comes from a ±float-max constant (onnx2tf pads max-pooling with float32's minimum).
DEGENERATE_MAGNITUDE = 1e30
# A range this many times wider than the widest of its op's inputs' ranges is degenerate.
DEGENERATE_RATIO = 1e6
# Ops whose output values are values of their activation inputs or their own constants (a pad value): a degenerate
# output range over sound input ranges comes from such a constant, and the inputs' range is the right one.
RANGE_KEEPING_OPS = frozenset(
    {"PAD", "PADV2", "MAX_POOL_2D", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "SLICE", "STRIDED_SLICE"}
)


@dataclass(frozen=True)
class RangeRepair:
    """A calibrated activation range replaced by its op's input range (``tflite_calibrated_model``)."""

    tensor: str
    op: str
    calibrated: tuple[float, float]
    repaired: tuple[float, float]

    def to_dict(self) -> dict:
        return {
            "tensor": self.tensor,
            "op": self.op,
            "calibrated": [float(f"{v:.4g}") for v in self.calibrated],
            "repaired": [float(f"{v:.4g}") for v in self.repaired],
        }


@dataclass(frozen=True)
class CalibratedModel:
    """A float TFLite model carrying each activation's calibrated min/max (what ``mlir_quantize`` quantizes).

    ``repairs``: ranges ``tflite_calibrated_model`` replaced; ``degenerate``: tensor name → why its range is still
    degenerate (ranked first by ``tflite_layer_errors``)."""

    content: bytes = field(repr=False)
    repairs: tuple[RangeRepair, ...] = ()
    degenerate: dict[str, str] = field(default_factory=dict)


def _range_of(tensor) -> tuple[float, float] | None:
    quantization = tensor.quantization
    if quantization is None or quantization.min is None or quantization.max is None or not len(quantization.min):
        return None
    return float(np.min(quantization.min)), float(np.max(quantization.max))


def _degeneracy(bounds: tuple[float, float], inputs: list[tuple[float, float]]) -> str | None:
    """Why a calibrated range [lo, hi] cannot be quantized to int8 usefully, or None."""
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"non-finite calibrated range [{lo:.4g}, {hi:.4g}]"
    if max(abs(lo), abs(hi)) >= DEGENERATE_MAGNITUDE:
        return f"calibrated range [{lo:.4g}, {hi:.4g}] set by a ±float-max constant"
    widest = max((b - a for a, b in inputs), default=0.0)
    if widest > 0 and hi - lo > DEGENERATE_RATIO * widest:
        return f"calibrated range [{lo:.4g}, {hi:.4g}] ≥ {DEGENERATE_RATIO:.0e}× its inputs' (width {widest:.4g})"
    return None


def _repair_ranges(calibrated: bytes) -> CalibratedModel:
    """Replace each degenerate range of a ``RANGE_KEEPING_OPS`` output over sound inputs with the union of its
    inputs' ranges; report the other degenerate ranges.

    Max-pooling with padding converts (onnx2tf) to PADV2 with float32's minimum as pad value, then MAX_POOL_2D.
    Calibrated as is, the pad's range is ~[-3.4e38, max]: the int8 scale ~1e36 is shared by the pool and the op
    before (int8 pads and pools keep their input's scale) and the model collapses to chance. With the input's range,
    the pad value quantizes to the range's minimum, which no window's maximum is below: the pool is unchanged.
    Floating the pad does not help: the quantizer ties the scales before it drops the denylisted ops.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    repairs, degenerate = [], {}
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            op = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
            inputs = [r for r in (_range_of(subgraph.tensors[i]) for i in operator.inputs if i >= 0) if r]
            sound = [r for r in inputs if _degeneracy(r, []) is None]
            for index in operator.outputs:
                tensor = subgraph.tensors[index]
                bounds = _range_of(tensor)
                why = None if bounds is None else _degeneracy(bounds, sound)
                if why is None:
                    continue
                name = tensor.name.decode()
                if op in RANGE_KEEPING_OPS and sound and len(sound) == len(inputs):
                    lo, hi = min(a for a, _ in sound), max(b for _, b in sound)
                    tensor.quantization.min, tensor.quantization.max = [lo], [hi]
                    repairs.append(RangeRepair(name, op, bounds, (lo, hi)))
                else:
                    degenerate[name] = why
    if not repairs:
        return CalibratedModel(calibrated, (), degenerate)
    return CalibratedModel(flatbuffer_utils.convert_object_to_bytearray(model), tuple(repairs), degenerate)


CALIBRATED_CACHE_SIZE = 4  # calibrated models kept per process (a target's search, its QAT-KD variant)
_CALIBRATED: dict[tuple[str, str], CalibratedModel] = {}


def tflite_calibrated_model(saved_model: Path, calibration_nhwc: np.ndarray) -> CalibratedModel:
    """``saved_model`` converted to TFLite and calibrated (min/max per activation) on ``calibration_nhwc`` (float32
    NHWC, fed one sample at a time like ``convert_saved_model(..., "int8")``), degenerate ranges repaired
    (``_repair_ranges``). Cached per SavedModel and calibration set for the process.

    Raises:
        ExportError: the converter cannot calibrate the model.
    """
    import hashlib

    calibration_nhwc = np.ascontiguousarray(calibration_nhwc, dtype=np.float32)
    key = (str(Path(saved_model).resolve()), hashlib.sha256(calibration_nhwc.tobytes()).hexdigest())
    if key in _CALIBRATED:
        return _CALIBRATED[key]
    import tensorflow as tf

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _nhwc_samples(calibration_nhwc)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_calibrate_only = True  # noqa: SLF001 (what QuantizationDebugger does)
    try:
        calibrated = converter.convert()
    except Exception as e:
        raise ExportError(f"TFLite calibration of {Path(saved_model).name} failed: {first_line(e)}") from e
    while len(_CALIBRATED) >= CALIBRATED_CACHE_SIZE:
        _CALIBRATED.pop(next(iter(_CALIBRATED)))  # oldest first
    _CALIBRATED[key] = _repair_ranges(calibrated)
    return _CALIBRATED[key]


def tflite_quantized_model(
    calibrated: CalibratedModel, denylisted_nodes: Sequence[str] = (), debug: bool = False, per_channel: bool = True
) -> bytes:
    """The full-integer TFLite model (int8 weights, activations, input and output) from ``calibrated``, the
    ``denylisted_nodes`` kept in float; with ``debug``, instrumented with NumericVerify ops (what
    ``QuantizationDebugger`` reads); ``per_channel=False``: one weight scale per tensor (the TFLite int8 spec allows
    both), a smaller file.

    A denylisted layer runs in float between a DEQUANTIZE and a QUANTIZE: its output is re-quantized, with the
    same calibrated range, for each int8 consumer, so to keep an activation float (e.g. one with an outlier range)
    denylist its consumers too (``tflite_float_groups``). Node names are the ``node`` fields of
    ``tflite_layer_errors``.

    Raises:
        ConfigError: a denylisted name the model lacks (the quantizer would silently ignore it).
        ExportError: the quantizer fails.
    """
    from tensorflow.lite.python import convert

    _check_nodes(calibrated.content, denylisted_nodes)
    try:
        return convert.mlir_quantize(
            calibrated.content,
            fully_quantize=True,  # int8 input and output too
            disable_per_channel=not per_channel,
            enable_numeric_verify=debug,
            denylisted_nodes=list(denylisted_nodes),
        )
    except Exception as e:
        raise ExportError(
            f"TFLite int8 quantization failed: {first_line(e)}",
            "with every layer denylisted nothing is left to quantize: use tflite-fp32" if denylisted_nodes else None,
        ) from e


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
    """20·log10(‖f‖ / ‖q − f‖), with onnxruntime's epsilon floor on both norms; inf when both are zero (exact)."""
    if signal_energy == 0 and noise_energy == 0:
        return math.inf
    epsilon = np.finfo(float).eps
    return 20 * math.log10(max(math.sqrt(signal_energy), epsilon) / max(math.sqrt(noise_energy), epsilon))


def _repair_note(repair: RangeRepair) -> str:
    (lo, hi), (new_lo, new_hi) = repair.calibrated, repair.repaired
    return f"range repaired: calibrated [{lo:.4g}, {hi:.4g}] → its input's [{new_lo:.4g}, {new_hi:.4g}]"


def _held(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> tuple[float, float]:
    """(signal, noise) energy of ``f`` held to the int8 tensor's representable range, against ``q`` dequantized."""
    lo, hi = (-128 - zero_point) * scale, (127 - zero_point) * scale
    held = np.clip(f.astype(np.float64), lo, hi)
    noise = (q.astype(np.float64) - zero_point) * scale - held
    return float(np.sum(np.square(held))), float(np.sum(np.square(noise)))


def _int8_samples(nhwc: np.ndarray, model: bytes) -> Iterator[list[np.ndarray]]:
    """``nhwc`` one sample at a time, quantized with the model's int8 input scale and zero point.

    QuantizationDebugger quantizes a float sample itself only when the zero point is truthy (a numpy truth test on
    the zero-point array), then fails to set the int8 tensor with float data when it is 0; int8 samples it sets as
    they are."""
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_content=model).get_input_details()[0]
    scale, zero_point = detail["quantization"]
    for [sample] in _nhwc_samples(nhwc):
        if detail["dtype"] == np.int8:
            sample = np.clip(np.round(sample / scale + zero_point), -128, 127).astype(np.int8)
        yield [sample]


def tflite_layer_errors(
    calibrated: CalibratedModel, debug_nhwc: np.ndarray, denylisted_nodes: Sequence[str] = ()
) -> list[LayerError]:
    """Every op output of the full-integer TFLite model from ``calibrated`` (pads, pools, means, reshapes as well
    as compute ops), worst first: degenerate ranges, then by SQNR.

    Built on ``tf.lite.experimental.QuantizationDebugger``, run sample by sample on ``debug_nhwc`` (float32 NHWC),
    with int8 input and output like the tflite-int8 target. Its figures are local: each layer's float twin gets the
    same dequantized int8 inputs, so ``sqnr_db`` (= ``local_sqnr_db``) isolates the layer's own loss and does not
    accumulate. ``node`` = ``tensor``, the layer's output name in the calibrated model, which is what
    ``denylisted_nodes`` (here and in ``tflite_quantized_model``) takes; denylisted layers run in float and are not
    reported. ``op`` is the TFLite builtin (e.g. CONV_2D). A tensor that is all zero in float and int8 is exact
    (``sqnr_db`` inf); one in ``calibrated.degenerate`` is marked degenerate.

    Raises:
        ConfigError: an unknown denylisted name. ExportError: the debugger fails.
    """
    import tensorflow as tf

    debug_model = tflite_quantized_model(calibrated, denylisted_nodes, debug=True)
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics={"noise_energy": lambda diff: float(np.sum(np.square(diff, dtype=np.float64)))},
        layer_direct_compare_metrics={
            "signal_energy": lambda f, q, scale, zero_point: float(np.sum(np.square(f, dtype=np.float64))),
            "held_signal_energy": lambda f, q, scale, zero_point: _held(f, q, scale, zero_point)[0],
            "held_noise_energy": lambda f, q, scale, zero_point: _held(f, q, scale, zero_point)[1],
        },
    )
    try:
        # Only a debugger built from model content keeps every tensor alive, which the float side of
        # layer_direct_compare_metrics needs; NumericVerify's diff (noise) is kept either way. The debugger's own
        # metrics square float32 diffs, which overflow on a float-max pad value: numpy's warnings are noise here.
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model,
            debug_dataset=lambda: _int8_samples(debug_nhwc, debug_model),
            debug_options=options,
        )
        with np.errstate(over="ignore", invalid="ignore"):
            debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
    except Exception as e:
        raise ExportError(f"TFLite quantization debugger run failed: {first_line(e)}") from e
    known, debug_names = set(_tensor_names(calibrated.content)), _tensor_names(debug_model)
    repaired = {repair.tensor: repair for repair in calibrated.repairs}
    errors = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        # The dump guesses the name by dropping the debug twin's last digit, which truncates an output that kept
        # its own name ("PartitionedCall:0" → "PartitionedCall:"); then the quantized tensor's name is the real one.
        name = row["tensor_name"] if row["tensor_name"] in known else debug_names[int(row["tensor_idx"])]
        # A repaired range no longer holds the float twin's pad value (float-max): measure what it can hold.
        held = "held_" if name in repaired else ""
        sqnr_db = _sqnr_db(float(row[f"{held}signal_energy"]), float(row[f"{held}noise_energy"]))
        why = calibrated.degenerate.get(name)
        errors.append(
            LayerError(
                tensor=name,
                node=name,
                op=row["op_name"],
                sqnr_db=sqnr_db,
                scope="local",
                local_sqnr_db=sqnr_db,
                degenerate=why is not None,
                note=why
                or (EXACT_NOTE if math.isinf(sqnr_db) else None)
                or (_repair_note(repaired[name]) if name in repaired else None),
            )
        )
    return _worst_first(errors)


PASS_THROUGH_OPS = {"MAX_POOL_2D", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD", "PADV2", "RELU", "RELU6"}


def tflite_float_groups(calibrated: CalibratedModel) -> dict[str, list[str]]:
    """For each layer output, the outputs to keep float with it so that its activation really stays float: the ops
    reading it, through range-preserving ops (pads, pools, reshapes), up to and including the next compute op.

    A layer denylisted alone has its output re-quantized with the same (possibly outlier-stretched) range before
    its int8 consumers; floating the whole group removes that re-quantization."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated.content)
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
