"""onnx-int8-ort-defaults: what a user gets from onnxruntime's ``quantize_static`` with every option left at its
default, on the same fp32 model and calibration set — the baseline that shows what onnx-int8's choices gain."""

from __future__ import annotations

from calibration.readers import ort_reader
from pipeline.config import RunConfig
from pipeline.converter_log import captured_output
from pipeline.errors import ExportError
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.onnx_io import describe_onnx, qdq_io_quantization
from targets.onnx_share import onnx_int8_share


@register_target
class OnnxInt8OrtDefaults(Target):
    name = "onnx-int8-ort-defaults"
    description = "reference, not for shipping: onnxruntime quantize_static with its defaults, same calibration set"
    format = "onnx"
    precision = "int8"
    suffix = ".onnx"
    parent = "onnx-fp32"
    needs_calibration = True
    reference = True

    def config_key(self, config: RunConfig) -> dict:
        return {}

    def export(self, inputs: ExportInputs) -> ExportResult:
        import onnx
        from onnxruntime.quantization import quantize_static

        input_name = onnx.load(inputs.parent_path).graph.input[0].name
        try:
            with captured_output(inputs.log_path):
                quantize_static(
                    str(inputs.parent_path), str(inputs.output_path), ort_reader(inputs.calibration, input_name)
                )
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(
                f"onnx-int8-ort-defaults: quantize_static failed: {reason}",
                "a reference only: leave onnx-int8-ort-defaults out of export.targets",
            ) from e
        try:
            share = onnx_int8_share(inputs.output_path).to_dict()
        except Exception as e:  # noqa: BLE001 (a reference row: its share is left empty with why, the file stands)
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            share = {"unmeasured": f"onnx-tool could not count its MACs: {reason}"}
        info = {
            "quantization": "onnxruntime quantize_static defaults",
            "int8_share": share,
            "io_quantization": qdq_io_quantization(inputs.output_path),
        }
        return describe_onnx(inputs.output_path, layout="NCHW", info=info)
