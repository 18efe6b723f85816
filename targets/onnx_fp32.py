"""onnx-fp32: the student exported with torch.onnx (dynamic batch), simplified by onnxsim, checked by onnx."""

from __future__ import annotations

import logging
import warnings

from pipeline.config import RunConfig
from pipeline.converter_log import captured_output, log_tail
from pipeline.errors import ExportError
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.converter_errors import converter_error
from targets.onnx_io import describe_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@register_target
class OnnxFp32(Target):
    name = "onnx-fp32"
    description = "ONNX float32, simplified (onnxsim) and checked; dynamic batch, NCHW input"
    format = "onnx"
    precision = "fp32"
    suffix = ".onnx"
    parent = "student"
    max_abs_diff = 1e-3
    rtol = 1e-5

    def config_key(self, config: RunConfig) -> dict:
        return {"opset": config.export.opset, "exporter": config.export.exporter}

    def export(self, inputs: ExportInputs) -> ExportResult:
        import onnx
        import onnxsim
        import torch

        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        prep = inputs.preprocessing
        example = torch.zeros(2, prep.channels, prep.height, prep.width)
        raw_path = inputs.work_dir / "student.raw.onnx"
        exporter = inputs.config.export.exporter
        try:
            with captured_output(inputs.log_path), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    batch_axis = {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim("batch")},), "verbose": False}
                else:
                    batch_axis = {
                        "dynamo": False,
                        "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    }
                torch.onnx.export(
                    inputs.model,
                    (example,),
                    raw_path,
                    opset_version=inputs.config.export.opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    **batch_axis,
                )
        except Exception as e:  # exporters raise many types; the op, the first line and the log say what failed
            raise converter_error(
                self.name, "torch.onnx", e, exporter, log_path=inputs.log_path, log_text=log_tail(inputs.log_path)
            ) from e
        try:
            with captured_output(inputs.log_path):
                simplified, ok = onnxsim.simplify(onnx.load(raw_path))
        except Exception as e:
            raise converter_error(
                self.name, "onnxsim", e, exporter, raw_path, inputs.log_path, log_tail(inputs.log_path)
            ) from e
        if not ok:
            raise ExportError(f"{self.name}: onnxsim could not validate the simplified ONNX graph")
        onnx.checker.check_model(simplified, full_check=True)
        onnx.save(simplified, inputs.output_path)
        return describe_onnx(inputs.output_path, layout="NCHW", info={"exporter": exporter})
