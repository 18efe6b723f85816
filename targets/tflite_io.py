"""Shared TFLite path: ONNX → TensorFlow SavedModel with onnx2tf (once per ONNX file), then TF's converter."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.converter_log import captured_output, log_tail
from pipeline.environment import TFLITE_CONVERTER_TOOLS, tool_versions
from pipeline.errors import ExportError
from pipeline.io import hash_json
from pipeline.measure.file_specs import tflite_dtype_counts, tflite_specs
from targets.base import ExportInputs, ExportResult
from targets.converter_errors import converter_error

ONNX2TF_VERSION_NOTE = "onnx2tf 1.29.24 (installed with --no-deps; see requirements-converters.txt)"
# SavedModel key → (target, error) of conversions that failed in this process (every TFLite target shares one)
_FAILED_CONVERSIONS: dict[str, tuple[str, ExportError]] = {}


@contextlib.contextmanager
def _onnx2tf_environment(calibration_nhwc: np.ndarray | None) -> Iterator[None]:
    """Run onnx2tf offline and reproducibly: our interpreter's bin first on PATH (it shells out to onnxsim), its
    test-image download replaced by our own calibration samples (it fetches them for static RGB inputs), and
    Keras's layer-name counters reset (the names are written into the TFLite files)."""
    import onnx2tf.onnx2tf as onnx2tf_module

    def offline_test_data() -> np.ndarray:
        if calibration_nhwc is None:
            raise ExportError("onnx2tf asked for sample images and no calibration set is available")
        return calibration_nhwc

    saved_path, saved_download = os.environ.get("PATH", ""), onnx2tf_module.download_test_image_data
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{saved_path}"
    onnx2tf_module.download_test_image_data = offline_test_data
    # Keras numbers layers process-wide (model_5, tf.nn.convolution_3, …) and those names end up in every TFLite
    # file: without a reset, a second conversion in one process writes different bytes for the same model.
    onnx2tf_module.tf_keras.backend.clear_session()
    try:
        yield
    finally:
        os.environ["PATH"] = saved_path
        onnx2tf_module.download_test_image_data = saved_download


@dataclass(frozen=True)
class ConversionContext:
    """What a TFLite conversion failure is reported with: the target, the ONNX file converted (to name its failing
    node), the run's torch.onnx exporter (the hint suggests the other) and the log the converters write to."""

    target: str
    onnx_path: Path
    exporter: str
    log_path: Path | None

    @classmethod
    def of(cls, inputs: ExportInputs, target: str) -> ConversionContext:
        """The context of ``target`` built from ``inputs`` (its parent is the ONNX file)."""
        return cls(target, inputs.parent_path, inputs.config.export.exporter, inputs.log_path)

    def error(self, stage: str, error: BaseException | str) -> ExportError:
        """The one-line failure of ``stage``, the op read from the error and the log."""
        return converter_error(
            self.target, stage, error, self.exporter, self.onnx_path, self.log_path, log_tail(self.log_path)
        )


@contextlib.contextmanager
def _interrupt_survives() -> Iterator[None]:
    """onnx2tf catches every exception in bare ``except:`` blocks, KeyboardInterrupt too, and carries on: remember a
    Ctrl-C (SIGINT) that arrives during the call and raise KeyboardInterrupt once it returns or fails."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def remember(signum, frame) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield
    except BaseException:
        if seen:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if seen:
        raise KeyboardInterrupt


def saved_model_for(inputs: ExportInputs, target: str = "tflite") -> Path:
    """The SavedModel converted from the parent ONNX, shared by every TFLite target (keyed by its sha256 and the
    converter's versions: an upgraded onnx2tf converts again).

    onnx2tf's output (and TensorFlow's, C++ included) goes to ``inputs.log_path``; its scratch folder is removed
    whatever happens.

    Raises:
        ExportError: onnx2tf is missing or fails (one line: ``target``, stage, op, log file; a hint).
    """
    key = hash_json({"onnx": inputs.parent_sha256, "tools": tool_versions(TFLITE_CONVERTER_TOOLS)})
    final = inputs.work_dir / f"saved_model-{key}"
    if (final / "saved_model.pb").is_file():
        return final
    if key in _FAILED_CONVERSIONS:  # the same file and tools fail the same way: say so without a second try
        first_target, error = _FAILED_CONVERSIONS[key]
        raise ExportError(f"{target}: as {first_target}, {str(error).removeprefix(first_target + ': ')}", error.hint)
    context = ConversionContext.of(inputs, target)
    scratch = inputs.work_dir / f".onnx2tf-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with captured_output(inputs.log_path):
            try:
                import onnx2tf
            except ImportError as e:
                raise ExportError(
                    f"{target}: onnx2tf is not installed", "pip install --no-deps -r requirements-converters.txt"
                ) from e
            scratch.mkdir(parents=True)
            onnx_copy = scratch / "model.onnx"  # onnx2tf rewrites its input in place
            shutil.copyfile(inputs.parent_path, onnx_copy)
            calibration = None if inputs.calibration is None else inputs.calibration.x.transpose(0, 2, 3, 1)
            with _onnx2tf_environment(calibration), _interrupt_survives():
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_copy),
                    output_folder_path=str(scratch / "saved_model"),
                    output_signaturedefs=True,
                    non_verbose=True,
                    verbosity="error",
                )
        if not (scratch / "saved_model" / "saved_model.pb").is_file():
            raise context.error("onnx2tf", f"wrote no SavedModel for {inputs.parent_path.name}")
        os.replace(scratch / "saved_model", final)
    except ExportError as e:
        _FAILED_CONVERSIONS[key] = (target, e)
        raise
    except (Exception, SystemExit) as e:  # onnx2tf raises many types and calls sys.exit; the op and log say more
        error = context.error("onnx2tf", e)
        _FAILED_CONVERSIONS[key] = (target, error)
        raise error from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def convert_saved_model(
    saved_model: Path,
    output_path: Path,
    precision: str,
    calibration=None,
    context: ConversionContext | None = None,
) -> None:
    """TFLite file at ``output_path`` from ``saved_model``: fp32, fp16 weights, or full-integer int8.

    The converter's output (MLIR diagnostics, the int8 calibration's lines) goes to ``context.log_path``.

    Raises:
        ExportError: the converter fails (one line naming the op where it can be found, and a hint).
    """
    try:
        with captured_output(context.log_path if context else None):
            import tensorflow as tf

            from calibration.readers import representative_dataset

            logging.getLogger("tensorflow").setLevel(logging.ERROR)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
            if precision == "fp16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif precision == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: representative_dataset(calibration)
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
            flatbuffer = converter.convert()
    except Exception as e:
        stage = f"tflite-converter ({precision})"
        raise (context.error(stage, e) if context else converter_error("tflite", stage, e, None)) from e
    output_path.write_bytes(flatbuffer)


def describe_tflite(path: Path, info: dict) -> ExportResult:
    """Tensor specs (with int8 scale and zero point) and dtype counts of a TFLite file."""
    inputs, outputs = tflite_specs(path)
    return ExportResult(inputs=inputs, outputs=outputs, info={**info, "tensor_dtypes": tflite_dtype_counts(path)})


def export_tflite(inputs: ExportInputs, precision: str, target: str) -> ExportResult:
    """The whole TFLite export of one precision for ``target`` (its name in failures)."""
    saved_model = saved_model_for(inputs, target)
    convert_saved_model(
        saved_model, inputs.output_path, precision, inputs.calibration, ConversionContext.of(inputs, target)
    )
    return describe_tflite(inputs.output_path, {"converter": "onnx2tf → tf.lite.TFLiteConverter"})
