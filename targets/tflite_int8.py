"""tflite-int8: full-integer TFLite (int8 weights, activations, input and output), same calibration set.

TFLite's converter calibrates with min/max. While the int8 model loses more than ``quantize.max_int8_drop``
points against the fp32 model on validation, its most sensitive ops stay in float (selective quantization).
"""

from __future__ import annotations

import shutil

from pipeline.config import RunConfig
from pipeline.errors import ExportError
from pipeline.int8_search import fallback_cost, land, search_int8, top1
from pipeline.layer_errors import tflite_float_groups, tflite_layer_errors, tflite_selective_int8
from pipeline.runtimes import onnxruntime_runner, tflite_runner
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.tflite_io import convert_saved_model, describe_tflite, saved_model_for


def _runner(path):
    described = describe_tflite(path, {})
    return tflite_runner(path, described.inputs, described.outputs, None)


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
        saved_model = saved_model_for(inputs)
        calibration_nhwc = inputs.calibration.x.transpose(0, 2, 3, 1)
        work = inputs.work_dir / "tflite-int8"
        shutil.rmtree(work, ignore_errors=True)

        groups: dict[str, list[str]] = {}

        def quantize(method: str, float_layers: tuple[str, ...], output) -> None:
            if float_layers:
                groups.update(groups or tflite_float_groups(saved_model, calibration_nhwc))
                denylist = list(dict.fromkeys(name for layer in float_layers for name in groups.get(layer, [layer])))
                output.write_bytes(tflite_selective_int8(saved_model, calibration_nhwc, denylist))
            else:
                convert_saved_model(saved_model, output, "int8", inputs.calibration)

        x_val, y_val = inputs.validation
        try:
            result = search_int8(
                methods=("minmax",),
                quantize=quantize,
                score=lambda path: top1(_runner(path).predict, x_val, y_val),
                rank_layers=lambda path: tflite_layer_errors(saved_model, calibration_nhwc, calibration_nhwc),
                work_dir=work,
                fp32_val_accuracy=top1(
                    onnxruntime_runner(
                        inputs.reference_path or inputs.parent_path, "CPUExecutionProvider", None
                    ).predict,
                    x_val,
                    y_val,
                ),
                budget=inputs.config.quantize.max_int8_drop,
                max_float_layers=inputs.config.quantize.max_float_layers,
                suffix=self.suffix,
            )
            land(result, inputs.output_path)
            cost = fallback_cost(result, _runner, x_val[:1])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        described = describe_tflite(
            inputs.output_path,
            {
                "converter": "onnx2tf → tf.lite.TFLiteConverter (min/max calibration)",
                **result.to_info(),
                "float_tensors": [name for layer in result.chosen.float_layers for name in groups.get(layer, [layer])],
                **cost,
            },
        )
        dtypes = [spec.dtype for spec in described.inputs + described.outputs]
        float_tensors = described.info["tensor_dtypes"].get("float32", 0)
        if any(dtype != "int8" for dtype in dtypes) or (float_tensors and not result.chosen.float_layers):
            raise ExportError(
                f"{inputs.output_path.name} is not full-integer: input/output {dtypes}, "
                f"tensor dtypes {described.info['tensor_dtypes']}"
            )
        return described
