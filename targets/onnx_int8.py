"""onnx-int8: static QDQ int8 with onnxruntime's quantizer, calibrated on the run's calibration set."""

from __future__ import annotations

from pipeline.config import ExportConfig
from pipeline.errors import ExportError
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.onnx_io import describe_onnx
from calibration.readers import ort_reader


@register_target
class OnnxInt8(Target):
    name = "onnx-int8"
    description = "ONNX static int8 (QDQ, per-channel weights) by onnxruntime.quantization; float input/output"
    format = "onnx"
    precision = "int8"
    suffix = ".onnx"
    parent = "onnx-fp32"
    needs_calibration = True

    def config_key(self, config: ExportConfig) -> dict:
        return config.onnx_int8.model_dump()

    def export(self, inputs: ExportInputs) -> ExportResult:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        options = inputs.config.onnx_int8
        prepared = inputs.work_dir / "student.preprocessed.onnx"
        try:
            quant_pre_process(str(inputs.parent_path), str(prepared), skip_symbolic_shape=False)
            quantize_static(
                str(prepared),
                str(inputs.output_path),
                ort_reader(inputs.calibration, input_name=_input_name(prepared)),
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QUInt8 if options.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[options.calibrate_method],
            )
        except Exception as e:
            raise ExportError(f"onnxruntime quantize_static failed: {str(e).strip().splitlines()[0]}") from e
        result = describe_onnx(inputs.output_path, layout="NCHW", info={"quantization": options.model_dump()})
        counts = result.info["op_counts"]
        if not counts.get("QuantizeLinear") or not counts.get("DequantizeLinear"):
            raise ExportError(f"{inputs.output_path.name} holds no QuantizeLinear/DequantizeLinear nodes: not int8")
        return result


def _input_name(path) -> str:
    import onnx

    return onnx.load(path).graph.input[0].name
