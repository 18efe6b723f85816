"""onnx-int8: static QDQ int8 with onnxruntime's quantizer, calibrated on the run's calibration set.

The int8 search (``targets.int8_search``) chooses on validation the calibration method (``calibration.method:
auto``) and each ``export.onnx_int8`` setting left at ``auto`` — per-channel weights, ``reduce_range``, the activation
type — trying the portable value first (a tie keeps it: the file ships to phones, not to the build host's CPU).
While the int8 file's drop is significantly over ``quantize.max_int8_drop``, the nodes that win back the most
validation images per MAC moved to float stay in float, never below ``quantize.min_int8_share`` of MACs in int8.
Floating a node floats its output: in a QDQ graph a tensor read by any int8 node is still quantized, so the node's
readers up to the next compute op stay float with it (``float_groups``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import traceback
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from calibration.methods import CALIBRATION_METHODS, ort_calibration
from calibration.readers import ort_reader
from pipeline.config import RunConfig
from pipeline.converter_log import captured_output
from pipeline.environment import cpu_facts
from pipeline.errors import DataError, ExportError
from pipeline.measure.runtimes import onnxruntime_runner
from targets.base import ExportInputs, ExportResult, Target, register_target
from targets.int8_search import fallback_cost, land, search_int8, top1
from targets.layer_errors import onnx_layer_errors
from targets.onnx_io import describe_onnx, qdq_io_quantization, slim_onnx
from targets.onnx_share import SHARE_OPS, onnx_int8_share

# Each setting's values, the portable one first: per-channel weights keep each output channel's resolution on every
# runtime; full 8-bit weights (reduce_range is a workaround for x86 without VNNI) are what ARM and VNNI kernels
# take; uint8 activations are onnxruntime's U8S8 path on x86 and ARM alike (FIELD-NOTES: S8 activations ran up to
# 3× slower at batch 32 on a digits-sized model, never faster).
PORTABLE_FIRST = {"per_channel": (True, False), "reduce_range": (False, True), "activation_type": ("uint8", "int8")}
# onnxruntime quantize_static's own defaults (per-tensor weights, S8S8): a combination the one-option-at-a-time
# search does not reach, tried as a whole when every option is auto, so the shipped file never loses to it on
# validation.
ORT_DEFAULTS = {"method": "minmax", "per_channel": False, "reduce_range": False, "activation_type": "int8"}
HOST_FLAGS = ("model", "avx2", "avx512", "vnni")  # the build host's CPU facts recorded beside the chosen settings
STAGE_HINTS = {  # {other} is the exporter the run does not use
    "pre-process": "onnxruntime's shape inference cannot handle an op of the graph; try export.exporter: {other}, "
    "or leave onnx-int8 out of export.targets",
    "calibration": "check the calibration set and calibration.method (minmax needs the least memory)",
    "quantize_static": "onnxruntime's quantizer cannot handle the op named; try export.exporter: {other}, or leave "
    "onnx-int8 out of export.targets",
    "scoring": "onnxruntime cannot run the quantized file; try export.exporter: {other}, or leave onnx-int8 out of "
    "export.targets",
    "layer errors": "set quantize.max_float_layers: 0 to skip the float fallback",
    "int8 share": "onnx-tool cannot infer the quantized graph's shapes; leave onnx-int8 out of export.targets",
    "int8 search": "leave onnx-int8 out of export.targets, and please report the model",
}
_NODE = re.compile(r"Node \(([^)]*)\)")
_OP = re.compile(r"Op(?:Type)? ?\(([^)]*)\)")


class OnnxQuantConfig(BaseModel):
    """onnx-int8's options (``export.onnx_int8``); ``auto`` lets the int8 search choose on validation, the portable
    value first (a tie keeps it): the file ships to phones, not to the build host's CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_channel: bool | Literal["auto"] = Field(
        "auto", description="Per-channel int8 weights; auto: chosen on validation (true first)."
    )
    reduce_range: bool | Literal["auto"] = Field(
        "auto",
        description="7-bit weights, a workaround for u8s8 saturation on x86 CPUs without VNNI (AVX2); auto: chosen "
        "on validation (false first).",
    )
    activation_type: Literal["auto", "uint8", "int8"] = Field(
        "auto", description="Activation type in the QDQ model; auto: chosen on validation (uint8 first)."
    )


def _all_auto(options: OnnxQuantConfig, calibration) -> bool:
    return calibration.method == "auto" and all(getattr(options, key) == "auto" for key in PORTABLE_FIRST)


def search_options(config: OnnxQuantConfig) -> dict[str, list]:
    """The int8 search's ``options``: every ``auto`` setting with its values, portable first; a fixed one alone."""
    return {
        key: list(values) if getattr(config, key) == "auto" else [getattr(config, key)]
        for key, values in PORTABLE_FIRST.items()
    }


def failure(stage: str, error: Exception, exporter: str = "dynamo", log_path: Path | None = None) -> ExportError:
    """One line naming the stage and, where onnxruntime's message gives them, the node and op; ``exporter``: the
    run's torch.onnx exporter (the hint offers the other one); ``log_path``: where the quantizer's output went."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    where = [f"{label} {m.group(1)}" for label, m in (("node", _NODE.search(text)), ("op", _OP.search(text))) if m]
    place = f" at {', '.join(where)}" if where else ""
    other = "torchscript" if exporter == "dynamo" else "dynamo"
    log = f"; quantizer output in {log_path}" if log_path is not None else ""
    return ExportError(f"onnx-int8: {stage} failed{place}: {first}{log}", STAGE_HINTS[stage].format(other=other))


@contextlib.contextmanager
def stage(name: str, exporter: str = "dynamo", log_path: Path | None = None) -> Iterator[None]:
    """Raise any failure inside as one ``ExportError`` naming ``name`` (``quantize_static`` failures raised in its
    calibrator are named ``calibration``); ``exporter`` and ``log_path`` as for ``failure``."""
    try:
        yield
    except (ExportError, DataError):  # an unreadable validation image is the data's fault, not this target's
        raise
    except Exception as e:
        in_calibrator = any(f.filename.endswith("calibrate.py") for f in traceback.extract_tb(e.__traceback__))
        named = "calibration" if name == "quantize_static" and in_calibrator else name
        raise failure(named, e, exporter, log_path) from e


def pre_process(source: Path, prepared: Path, exporter: str = "dynamo", log_path: Path | None = None) -> dict:
    """onnxruntime's ``quant_pre_process``; when its symbolic shape inference fails (e.g. the dynamo exporter's
    Resize with a dynamic batch), again without it. Returns what was done, for the record; its output goes to
    ``log_path``. Runs in ``prepared``'s folder: a failed symbolic inference saves its partial model to the
    current directory."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared = source.resolve(), prepared.resolve()
    try:
        with captured_output(log_path), contextlib.chdir(prepared.parent):
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        return {"skip_symbolic_shape": False}
    except Exception as e:  # noqa: BLE001 (any failure of the symbolic pass: retried without it below)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    with stage("pre-process", exporter, log_path), captured_output(log_path):
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    return {"skip_symbolic_shape": True, "symbolic_shape_inference_error": reason}


def float_groups(path: Path) -> dict[str, tuple[str, ...]]:
    """Per node name: the node, then every node reading its outputs, followed through non-compute ops up to and
    including the next compute ops (Conv, Gemm, MatMul) — what must stay float so that no value it computes is
    quantized again."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    readers = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    groups = {}
    for node in nodes:
        group, pending = [node.name], list(node.output)
        while pending:
            for reader in readers[pending.pop()]:
                if reader.name not in group:
                    group.append(reader.name)
                    if reader.op_type not in SHARE_OPS:
                        pending.extend(reader.output)
        groups[node.name] = tuple(group)
    return groups


def _runner(path):
    return onnxruntime_runner(path, "CPUExecutionProvider", None)


@register_target
class OnnxInt8(Target):
    name = "onnx-int8"
    description = "ONNX static int8 (QDQ), settings chosen on validation by onnxruntime.quantization; float I/O"
    format = "onnx"
    precision = "int8"
    suffix = ".onnx"
    parent = "onnx-fp32"
    needs_calibration = True
    options = OnnxQuantConfig

    def config_key(self, config: RunConfig) -> dict:
        return {
            "onnx_int8": self.options_of(config).model_dump(),
            "calibration": config.calibration.model_dump(exclude={"size", "selection"}),
            "quantize": config.quantize.model_dump(exclude={"qat"}),
        }

    def export(self, inputs: ExportInputs) -> ExportResult:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        options, calibration = self.options_of(inputs.config), inputs.config.calibration
        work = inputs.work_dir / "onnx-int8"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        prepared = work / "student.preprocessed.onnx"
        exporter, log = inputs.config.export.exporter, inputs.log_path
        activation_types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}

        def quantize(settings, float_layers: tuple[str, ...], output: Path) -> None:
            float_nodes = dict.fromkeys(node for layer in float_layers for node in groups.get(layer, (layer,)))
            with stage("quantize_static", exporter, log), captured_output(log):
                quantize_static(
                    str(prepared),
                    str(output),
                    ort_reader(inputs.calibration, input_name=input_name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=settings["per_channel"],
                    reduce_range=settings["reduce_range"],
                    activation_type=activation_types[settings["activation_type"]],
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(float_nodes),
                    **ort_calibration(settings["method"], calibration),
                )
            slim_onnx(output)

        def score(path: Path):
            with stage("scoring", exporter, log):
                return top1(_runner(path).predict, x_val)

        def share(path: Path):
            with stage("int8 share", exporter, log):
                return onnx_int8_share(path)

        def rank_layers(path: Path):
            with stage("layer errors", exporter, log):
                return onnx_layer_errors(prepared, path, inputs.calibration.x, work)

        try:
            pre = pre_process(inputs.parent_path, prepared, exporter, log)
            input_name, groups = _input_name(prepared), float_groups(prepared)
            x_val, y_val = inputs.validation
            result = search_int8(
                methods=CALIBRATION_METHODS.names() if calibration.method == "auto" else [calibration.method],
                quantize=quantize,
                score=score,
                share=share,
                rank_layers=rank_layers,
                work_dir=work,
                labels=y_val,
                reference_classes=score(inputs.reference_path or inputs.parent_path),
                budget=inputs.config.quantize.max_int8_drop,
                max_float_layers=inputs.config.quantize.max_float_layers,
                suffix=self.suffix,
                options=search_options(options),
                presets=[ORT_DEFAULTS] if _all_auto(options, calibration) else [],
                min_int8_share=inputs.config.quantize.min_int8_share,
            )
            land(result, inputs.output_path)
            cost = fallback_cost(result, _runner, x_val[:1])
        except (ExportError, DataError):
            raise
        except Exception as e:
            raise failure("int8 search", e, exporter, log) from e
        finally:
            shutil.rmtree(work, ignore_errors=True)
        chosen = result.chosen.settings
        cpu = cpu_facts()
        info = {
            "quantization": {
                "format": "QDQ",
                "weight_type": "int8",
                **{key: chosen[key] for key in PORTABLE_FIRST},
                "configured": options.model_dump(),
                **calibration.model_dump(exclude={"method"}),
            },
            "pre_process": pre,
            "host_cpu": {key: cpu.get(key) for key in HOST_FLAGS},
            **result.to_info(),
            "float_nodes": list(dict.fromkeys(n for f in result.chosen.float_layers for n in groups.get(f, (f,)))),
            **cost,
            "io_quantization": qdq_io_quantization(inputs.output_path),
        }
        described = describe_onnx(inputs.output_path, layout="NCHW", info=info)
        counts = described.info["op_counts"]
        if not counts.get("QuantizeLinear") or not counts.get("DequantizeLinear"):
            raise ExportError(
                "onnx-int8: quantize_static wrote no QuantizeLinear/DequantizeLinear nodes: not int8",
                "the graph has no op onnxruntime quantizes; leave onnx-int8 out of export.targets",
            )
        return described


def _input_name(path) -> str:
    import onnx

    return onnx.load(path).graph.input[0].name
