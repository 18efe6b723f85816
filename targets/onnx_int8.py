"""onnx-int8: static QDQ int8 with onnxruntime's quantizer, calibrated on the run's calibration set.

The calibration method is chosen on validation (``calibration.method: auto``), and while the int8 model loses
more than ``quantize.max_int8_drop`` points against the fp32 model, its most sensitive nodes stay in float.
"""

from __future__ import annotations

import contextlib
import io
import shutil

from calibration.methods import METHODS, ort_calibration
from calibration.readers import ort_reader
from pipeline.config import RunConfig
from pipeline.errors import ExportError
from pipeline.int8_search import fallback_cost, land, search_int8, top1
from pipeline.layer_errors import onnx_layer_errors
from pipeline.runtimes import onnxruntime_runner
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.onnx_io import describe_onnx, qdq_io_quantization


def _runner(path):
    return onnxruntime_runner(path, "CPUExecutionProvider", None)


@register_target
class OnnxInt8(Target):
    name = "onnx-int8"
    description = "ONNX static int8 (QDQ, per-channel weights) by onnxruntime.quantization; float input/output"
    format = "onnx"
    precision = "int8"
    suffix = ".onnx"
    parent = "onnx-fp32"
    needs_calibration = True

    def config_key(self, config: RunConfig) -> dict:
        return {
            "onnx_int8": config.export.onnx_int8.model_dump(),
            "calibration": config.calibration.model_dump(exclude={"size", "selection"}),
            "quantize": config.quantize.model_dump(exclude={"qat"}),
        }

    def export(self, inputs: ExportInputs) -> ExportResult:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        options, calibration = inputs.config.export.onnx_int8, inputs.config.calibration
        work = inputs.work_dir / "onnx-int8"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        prepared = work / "student.preprocessed.onnx"
        input_name = None

        def quantize(method: str, float_nodes: tuple[str, ...], output) -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their settings
                quantize_static(
                    str(prepared),
                    str(output),
                    ort_reader(inputs.calibration, input_name=input_name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=options.per_channel,
                    reduce_range=options.reduce_range,
                    activation_type=QuantType.QUInt8 if options.activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(float_nodes),
                    **ort_calibration(method, calibration),
                )

        try:
            quant_pre_process(str(inputs.parent_path), str(prepared), skip_symbolic_shape=False)
            input_name = _input_name(prepared)
            x_val, y_val = inputs.validation
            result = search_int8(
                methods=METHODS if calibration.method == "auto" else [calibration.method],
                quantize=quantize,
                score=lambda path: top1(_runner(path).predict, x_val, y_val),
                rank_layers=lambda path: onnx_layer_errors(prepared, path, inputs.calibration.x, work),
                work_dir=work,
                fp32_val_accuracy=top1(_runner(inputs.reference_path or inputs.parent_path).predict, x_val, y_val),
                budget=inputs.config.quantize.max_int8_drop,
                max_float_layers=inputs.config.quantize.max_float_layers,
                suffix=self.suffix,
            )
            land(result, inputs.output_path)
            cost = fallback_cost(result, _runner, x_val[:1])
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"onnxruntime quantize_static failed: {str(e).strip().splitlines()[0]}") from e
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = {
            "quantization": {**options.model_dump(), **calibration.model_dump(exclude={"method"})},
            **result.to_info(),
            **cost,
            "io_quantization": qdq_io_quantization(inputs.output_path),
        }
        described = describe_onnx(inputs.output_path, layout="NCHW", info=info)
        counts = described.info["op_counts"]
        if not counts.get("QuantizeLinear") or not counts.get("DequantizeLinear"):
            raise ExportError(f"{inputs.output_path.name} holds no QuantizeLinear/DequantizeLinear nodes: not int8")
        return described


def _input_name(path) -> str:
    import onnx

    return onnx.load(path).graph.input[0].name
