"""tflite-int8: full-integer TFLite (int8 weights, activations, input and output), same calibration set.

TFLite's converter calibrates with min/max; degenerate calibrated ranges (a max-pool's float-min pad value) are
repaired before quantizing (``targets.layer_errors.tflite_calibrated_model``). While the int8 file's validation drop
is significantly over ``quantize.max_int8_drop``, the int8 search (``targets.int8_search``) keeps the ops that win
back the most images per MAC in float, never below ``quantize.min_int8_share`` of MACs in int8.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.config import RunConfig
from pipeline.converter_log import captured_output
from pipeline.errors import ExportError
from pipeline.measure.runtimes import Runner, onnxruntime_runner, tflite_runner
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.int8_search import FloatLayer, Int8Share, fallback_cost, land, search_int8, top1
from targets.layer_errors import (
    tflite_calibrated_model,
    tflite_float_groups,
    tflite_layer_errors,
    tflite_quantized_model,
)
from targets.tflite_io import ConversionContext, describe_tflite, saved_model_for

MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")


def _runner(path: Path) -> Runner:
    described = describe_tflite(path, {})
    return tflite_runner(path, described.inputs, described.outputs, None)


def tflite_int8_share(path: Path) -> Int8Share:
    """How much of a TFLite file's compute runs in int8, per sample (batch taken as 1).

    MACs per op: CONV_2D output elements × kh·kw·cin; DEPTHWISE_CONV_2D output elements × kh·kw; FULLY_CONNECTED and
    BATCH_MATMUL output elements × the inner dimension; TRANSPOSE_CONV input elements × kh·kw·cout. An op counts as
    int8 when its activation input and its weight operand are int8. ``weight_bytes``: share of those ops' constant
    weight elements stored as int8 (a float op's weights behind a DEQUANTIZE count as what is stored).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    producers = {int(t): op for op in ops for t in op["outputs"]}

    def shape(index: int) -> list[int]:
        return [int(d) for d in tensors[index]["shape"]]

    def per_sample(index: int) -> int:
        dims = shape(index)
        return int(np.prod(dims[1:])) if len(dims) > 1 else int(np.prod(dims))

    def is_int8(index: int) -> bool:
        return np.dtype(tensors[index]["dtype"]) == np.int8

    def stored(index: int) -> int | None:
        """The tensor a weight operand is stored as: itself, or a DEQUANTIZE's input; None for an activation."""
        producer = producers.get(index)
        if producer is None:
            return index
        if producer["op_name"] == "DEQUANTIZE" and int(producer["inputs"][0]) not in producers:
            return int(producer["inputs"][0])
        return None

    total = int8_macs = weights = int8_weights = 0
    float_layers = []
    for op in ops:
        name = op["op_name"]
        if name not in MAC_OPS:
            continue
        inputs = [int(i) for i in op["inputs"]]
        output = int(op["outputs"][0])
        if name == "TRANSPOSE_CONV":  # inputs: output shape, weights [cout, kh, kw, cin], data
            weight, data = inputs[1], inputs[2]
            cout, kh, kw, _ = shape(weight)
            macs = per_sample(data) * kh * kw * cout
        else:
            data, weight = inputs[0], inputs[1]
            if name == "CONV_2D":  # weights [cout, kh, kw, cin]
                macs = per_sample(output) * int(np.prod(shape(weight)[1:]))
            elif name == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, cout]
                macs = per_sample(output) * shape(weight)[1] * shape(weight)[2]
            else:  # FULLY_CONNECTED (weights [units, inner]), BATCH_MATMUL (inner = last input dimension)
                macs = per_sample(output) * shape(data)[-1]
        total += macs
        if is_int8(data) and is_int8(weight):
            int8_macs += macs
        else:
            float_layers.append(FloatLayer(tensors[output]["name"], name, macs))
        kept = stored(weight)
        if kept is not None:
            elements = int(np.prod(shape(kept)))
            weights += elements
            int8_weights += elements if is_int8(kept) else 0
    return Int8Share(
        macs=int8_macs / total if total else 1.0,
        weight_bytes=int8_weights / weights if weights else 1.0,
        total_macs=total,
        float_layers=tuple(float_layers),
    )


# per-channel weights first (each output channel keeps its resolution); per-tensor ones when validation cannot tell
# them apart, as the smaller file (int8_search: the smallest of the files within noise of the most accurate)
WEIGHT_OPTIONS = {"per_channel": [True, False]}


@register_target
class TfliteInt8(Target):
    name = "tflite-int8"
    description = "TFLite full-integer int8 (int8 input/output with scale and zero point), NHWC input"
    format = "tflite"
    precision = "int8"
    suffix = ".tflite"
    parent = "onnx-fp32"
    needs_calibration = True

    def config_key(self, config: RunConfig) -> dict:
        return {"opset": config.export.opset, "quantize": config.quantize.model_dump(exclude={"qat"})}

    def export(self, inputs: ExportInputs) -> ExportResult:
        saved_model = saved_model_for(inputs, self.name)
        calibration_nhwc = np.ascontiguousarray(inputs.calibration.x.transpose(0, 2, 3, 1))
        quantize_config, log = inputs.config.quantize, inputs.log_path
        work = inputs.work_dir / "tflite-int8"
        shutil.rmtree(work, ignore_errors=True)
        try:
            with captured_output(log):
                calibrated = tflite_calibrated_model(saved_model, calibration_nhwc)
        except ExportError as e:  # the converter's text names the op: one line with it, the log and a hint
            raise ConversionContext.of(inputs, self.name).error("tflite calibration", e.__cause__ or e) from e
        groups = tflite_float_groups(calibrated)

        def float_tensors(float_layers: tuple[str, ...]) -> list[str]:
            return list(dict.fromkeys(name for layer in float_layers for name in groups.get(layer, [layer])))

        def quantize(settings, float_layers: tuple[str, ...], output: Path) -> None:
            with captured_output(log):  # the quantizer prints its settings from C++
                model = tflite_quantized_model(
                    calibrated, float_tensors(float_layers), per_channel=settings["per_channel"]
                )
                output.write_bytes(model)

        def rank_layers(path: Path):
            with captured_output(log):
                return tflite_layer_errors(calibrated, calibration_nhwc)

        x_val, y_val = inputs.validation
        reference = onnxruntime_runner(inputs.reference_path or inputs.parent_path, "CPUExecutionProvider", None)
        try:
            result = search_int8(
                methods=("minmax",),
                options=WEIGHT_OPTIONS,
                quantize=quantize,
                score=lambda path: top1(_runner(path).predict, x_val),
                share=tflite_int8_share,
                rank_layers=rank_layers,
                work_dir=work,
                labels=y_val,
                reference_classes=top1(reference.predict, x_val),
                budget=quantize_config.max_int8_drop,
                max_float_layers=quantize_config.max_float_layers,
                suffix=self.suffix,
                min_int8_share=quantize_config.min_int8_share,
            )
            land(result, inputs.output_path)
            cost = fallback_cost(result, _runner, x_val[:1])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        described = describe_tflite(
            inputs.output_path,
            {
                "converter": "onnx2tf → tf.lite calibration (min/max) → mlir_quantize (full integer)",
                **result.to_info(),
                "range_repairs": [repair.to_dict() for repair in calibrated.repairs],
                "float_tensors": float_tensors(result.chosen.float_layers),
                **cost,
            },
        )
        dtypes = [spec.dtype for spec in described.inputs + described.outputs]
        float_count = described.info["tensor_dtypes"].get("float32", 0)
        if any(dtype != "int8" for dtype in dtypes) or (float_count and not result.chosen.float_layers):
            raise ExportError(
                f"tflite-int8: {inputs.output_path.name} is not full-integer: input/output {dtypes}, "
                f"tensor dtypes {described.info['tensor_dtypes']}",
                "please report the model: the quantizer left float tensors in an all-int8 file",
            )
        return described
