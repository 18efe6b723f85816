"""Converter failures read well: one line with target, stage, op and a hint for the case; the converter's output
in the run's log, none on the terminal; no scratch folder left. fp16's tolerance scales with the logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from pipeline.config_load import parse_config
from pipeline.errors import ExportError
from pipeline.io import sha256_file
from pipeline.manifest import Preprocessing
from targets import TARGETS, ExportInputs
from targets.converter_errors import failing_op
from targets.tflite_fp16 import TfliteFp16

PREPROCESSING = Preprocessing(mean=[0.5], std=[0.5], channels=1, height=8, width=8)


def exact_gelu() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )


def adaptive_to_3() -> nn.Module:
    """AdaptiveAvgPool2d to a size that does not divide the 8×8 map (pytorch/pytorch#42653)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(), nn.Linear(72, 10)
    )


def export_inputs(work: Path, exporter: str, target: str, **fields) -> ExportInputs:
    config = parse_config({"seed": 0, "data": {"source": "digits"}, "export": {"exporter": exporter}})
    return ExportInputs(
        work_dir=work,
        config=config,
        preprocessing=PREPROCESSING,
        log_path=work / "logs" / f"{target}.log",
        **fields,
    )


def onnx_file(model: nn.Module, work: Path, exporter: str) -> Path:
    """The onnx-fp32 target's file of ``model``."""
    path = work / "model.onnx"
    model.eval()
    TARGETS.get("onnx-fp32")().export(
        export_inputs(
            work, exporter, "onnx-fp32", parent_path=Path("-"), parent_sha256="-", output_path=path, model=model
        )
    )
    return path


def tflite_failure(model: nn.Module, tmp_path: Path, capfd) -> tuple[ExportError, Path]:
    """The tflite-fp32 target's error on ``model`` (dynamo export), with the terminal output checked empty."""
    work = tmp_path / "work"
    work.mkdir()
    parent = onnx_file(model, work, "dynamo")
    capfd.readouterr()
    inputs = export_inputs(
        work,
        "dynamo",
        "tflite-fp32",
        parent_path=parent,
        parent_sha256=sha256_file(parent),
        output_path=work / "m.tflite",
    )
    with pytest.raises(ExportError) as caught:
        TARGETS.get("tflite-fp32")().export(inputs)
    out, err = capfd.readouterr()
    assert out == "" and err == "", "converter output reached the terminal"
    assert not list(work.glob(".onnx2tf-*")), "scratch folder left behind"
    assert inputs.log_path.is_file() and inputs.log_path.stat().st_size > 0
    return caught.value, inputs.log_path


def test_exact_gelu_names_erf_and_suggests_tanh(tmp_path: Path, capfd) -> None:
    """nn.GELU() (Erf) → one line naming the target, the TFLite converter, the ONNX Erf node and the log; the hint
    says approximate='tanh'; the MLIR dump is in the log, not on the terminal."""
    error, log = tflite_failure(exact_gelu(), tmp_path, capfd)
    line = error.one_line()
    assert "\n" not in line and len(line) < 600
    assert line.startswith("tflite-fp32: tflite-converter")
    assert "ONNX Erf (node_" in line and str(log) in line
    assert "approximate='tanh'" in error.hint
    assert "tf.Erf" in log.read_text()


def test_onnx2tf_failure_names_onnx_nodes_and_other_exporter(tmp_path: Path, capfd) -> None:
    """Adaptive pooling to 3×3 exported by dynamo (Gather/Where) → onnx2tf fails on tfl.select_v2: the line names
    the ONNX Where nodes, the hint suggests torchscript (not dynamo, in use) and the TFLite builtin list."""
    error, log = tflite_failure(adaptive_to_3(), tmp_path, capfd)
    line = error.one_line()
    assert line.startswith("tflite-fp32: onnx2tf failed at op ONNX Where (node_")
    assert "tfl.select_v2" in line and str(log) in line
    assert "export.exporter: torchscript" in error.hint and "dynamo" not in error.hint
    assert "ops_compatibility" in error.hint
    parent = tmp_path / "work" / "model.onnx"  # the next TFLite target of the same file fails without a second try
    fp16 = export_inputs(
        tmp_path / "work",
        "dynamo",
        "tflite-fp16",
        parent_path=parent,
        parent_sha256=sha256_file(parent),
        output_path=tmp_path / "work" / "m16.tflite",
    )
    with pytest.raises(ExportError, match=r"^tflite-fp16: as tflite-fp32, onnx2tf failed at op ONNX Where") as again:
        TARGETS.get("tflite-fp16")().export(fp16)
    assert str(log) in str(again.value) and again.value.hint == error.hint


def test_torch_export_failure_suggests_the_exporter_not_in_use(tmp_path: Path, capfd) -> None:
    """The torchscript exporter refuses adaptive pooling to a non-divisor: the line names the aten op and the
    module, the hint suggests dynamo; the graph dump goes to the log."""
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ExportError) as caught:
        onnx_file(adaptive_to_3(), work, "torchscript")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    line = caught.value.one_line()
    assert line.startswith("onnx-fp32: torch.onnx failed at op aten::adaptive_avg_pool2d (module AdaptiveAvgPool2d 2)")
    assert "export.exporter: dynamo" in caught.value.hint and "torchscript" not in caught.value.hint
    assert "aten::adaptive_avg_pool2d" in (work / "logs" / "onnx-fp32.log").read_text()


def test_failing_op_reads_onnx2tf_trace_log() -> None:
    """onnx2tf's own trace log names the failing ONNX node: that name wins over any MLIR text."""
    log = "ERROR: The trace log is below.\n...\nERROR: onnx_op_name: /features/Resize_3\n"
    op = failing_op("some error", log)
    assert op is not None and op.describe() == "op ONNX node /features/Resize_3"


def test_fp16_tolerance_scales_with_the_logits() -> None:
    """A correct fp16 file of a real model differed by 0.0715 at |logit| ~10: within tolerance now; small logits
    keep the absolute floor; int8 targets are not checked."""
    large = np.array([[10.2, -3.0, 1.0]], dtype=np.float32)
    small = np.array([[0.3, -0.2, 0.1]], dtype=np.float32)
    fp16 = TfliteFp16()
    assert fp16.tolerance(large) == pytest.approx(0.05 + 0.01 * 10.2)
    assert fp16.tolerance(large) > 0.0715
    assert fp16.tolerance(small) == pytest.approx(0.05 + 0.01 * 0.3)
    assert fp16.tolerance(small) < 0.0715
    assert TARGETS.get("tflite-int8")().tolerance(large) is None
    assert TARGETS.get("onnx-fp32")().tolerance(small) == pytest.approx(1e-3, rel=1e-2)


def test_verify_uses_and_records_the_relative_tolerance(monkeypatch, tmp_path: Path) -> None:
    """Exporter.verify passes an fp16 file 0.0715 off at |logit| ~10, records the tolerance it used, and still
    rejects a difference beyond it."""
    from types import SimpleNamespace

    from pipeline.stages import export
    from targets.base import ExportResult

    reference = np.tile(np.array([[10.0, -4.0, 2.0]], dtype=np.float32), (8, 1))
    exporter = export.Exporter.__new__(export.Exporter)
    exporter.run, exporter.suffix = SimpleNamespace(path=lambda relative: tmp_path / relative), ""
    exporter.__dict__["verify_batch"] = (np.zeros((8, 1, 8, 8), np.float32), reference)
    result = ExportResult(inputs=[], outputs=[], info={})

    class Runner:
        def __init__(self, offset: float) -> None:
            self.offset = offset

        def predict(self, x: np.ndarray) -> np.ndarray:
            return reference + self.offset

    monkeypatch.setattr(export, "artifact_runner", lambda *args: Runner(0.0715))
    verification = exporter.verify(TfliteFp16(), Path("m.tflite"), result)
    assert verification["tolerance"] == pytest.approx(0.15)
    assert verification["max_abs_diff_vs_student"] == pytest.approx(0.0715)
    monkeypatch.setattr(export, "artifact_runner", lambda *args: Runner(0.2))
    with pytest.raises(ExportError, match="tolerance 0.15"):
        exporter.verify(TfliteFp16(), Path("m.tflite"), result)


def test_converter_exit_is_explained_from_its_log(tmp_path: Path) -> None:
    """onnx2tf calls sys.exit(1) after printing an ERROR line: the failure quotes that line, not '1'."""
    from targets.converter_errors import converter_error

    log = tmp_path / "tflite-fp32.log"
    text = "\x1b[31mERROR:\x1b[0m The specified *.onnx file does not exist.\n"
    error = converter_error("tflite-fp32", "onnx2tf", SystemExit(1), "torchscript", log_path=log, log_text=text)
    assert str(error).startswith("tflite-fp32: onnx2tf failed: The specified *.onnx file does not exist.")
    assert "export.exporter: dynamo" in error.hint
    assert "onnx2tf failed (SystemExit)" in log.read_text()


def test_ctrl_c_inside_a_converter_that_swallows_it_still_interrupts() -> None:
    """onnx2tf's bare ``except:`` blocks eat KeyboardInterrupt; the guard raises it once the call returns."""
    import os
    import signal

    from targets.tflite_io import _interrupt_survives

    def swallowing_converter() -> str:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here and raises KeyboardInterrupt
        except:  # noqa: E722 (what onnx2tf does)
            pass
        return "carried on"

    with pytest.raises(KeyboardInterrupt), _interrupt_survives():
        swallowing_converter()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_torch_export_failure_reads_its_exception_summary_and_user_frame() -> None:
    """torch.export's banner (with ANSI colours) is replaced by the exception it summarizes and the model's line."""
    from targets.converter_errors import converter_error

    banner = (
        "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting the model.\n"
        "## Exception summary\n\n<class 'torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode'>: "
        "Could not guard on data-dependent expression Eq(u0, 1)\n"
        '  File "/home/me/models/net.py", line 8, in forward\n    if h.sum() > 0:\n'
        '  File "/venv/lib/python3.11/site-packages/torch/_export/x.py", line 9, in f\n'
    )
    line = converter_error("onnx-fp32", "torch.onnx", RuntimeError(banner), "dynamo").one_line()
    assert "\x1b" not in line and "step 1/3" not in line
    assert "GuardOnDataDependentSymNode: Could not guard on data-dependent expression" in line
    assert "(model code /home/me/models/net.py:8)" in line and "torch.where" in line


def test_dynamic_batch_failure_says_so_instead_of_switching_exporters() -> None:
    """onnx2tf failing on a symbolic batch dimension fails the same way with either exporter: the hint names the
    cause instead of sending the user to the other exporter."""
    from targets.converter_errors import converter_error

    log = (
        "Expected int32 passed to parameter 'input_sizes' of op 'Conv2DBackpropInput', got ['batch', 8, 8, 16] of "
        "type 'list' instead. Error: Expected int32, but got batch of type 'str'.\n"
    )
    error = converter_error(
        "tflite-fp32", "onnx2tf", RuntimeError("layer tf.nn.conv2d_transpose"), "dynamo", None, None, log
    )
    assert "dynamic batch dimension" in error.hint and "torchscript" not in error.hint
