"""onnx-fp32: the student exported with torch.onnx (dynamic batch), simplified by onnxsim, checked by onnx."""

from __future__ import annotations

import logging
import warnings

from pipeline.config import RunConfig
from pipeline.errors import ExportError
from targets.base import ExportInputs, ExportResult, Target, register_target
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
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if inputs.config.export.exporter == "dynamo":
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
            simplified, ok = onnxsim.simplify(onnx.load(raw_path))
        except Exception as e:  # exporters raise many types; report the first line
            raise ExportError(
                f"torch.onnx.export failed: {str(e).strip().splitlines()[0]}",
                "try export.exporter: torchscript, or another opset",
            ) from e
        if not ok:
            raise ExportError("onnxsim could not validate the simplified ONNX graph")
        onnx.checker.check_model(simplified, full_check=True)
        onnx.save(simplified, inputs.output_path)
        return describe_onnx(inputs.output_path, layout="NCHW", info={"exporter": inputs.config.export.exporter})
