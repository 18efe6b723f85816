"""Per-layer int8 errors: both debuggers name real nodes, rank an outlier layer worst, and TFLite keeps it float;
degenerate TFLite ranges (a max-pool's float-min pad) are repaired or ranked first; an all-zero tensor is exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from calibration.readers import ort_reader
from calibration.sampling import CalibrationSet
from pipeline.errors import ConfigError
from targets.layer_errors import (
    CalibratedModel,
    LayerError,
    onnx_layer_errors,
    tflite_calibrated_model,
    tflite_layer_errors,
    tflite_quantized_model,
)
from targets.tflite_int8 import tflite_int8_share

pytestmark = pytest.mark.usefixtures("one_thread")

OUTLIER_GAIN = 100.0


class TinyCnn(nn.Module):
    """conv-relu-conv-relu-pool-linear on 1×8×8. Channel 0 of the second conv fires (OUTLIER_GAIN × the excess)
    only where an input pixel exceeds 4, which the clipped test samples never do and two calibration samples do:
    calibration stretches that activation's int8 range far beyond what the other samples use."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.conv1.weight[0], self.conv1.bias[0] = 0, 0
            self.conv1.weight[0, 0, 1, 1] = 1  # channel 0 = relu(pixel)
            self.conv2.weight[0], self.conv2.bias[0] = 0, -4 * OUTLIER_GAIN
            self.conv2.weight[0, 0, 1, 1] = OUTLIER_GAIN  # relu(gain · (pixel - 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def typical_samples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 1, 8, 8)).astype(np.float32).clip(-3, 3)


@pytest.fixture(scope="module")
def model() -> TinyCnn:
    return TinyCnn().eval()


@pytest.fixture(scope="module")
def calibration_x() -> np.ndarray:
    x = typical_samples(32, seed=1)
    x[:2, 0, 4, 4] = 5.0  # the rare outliers
    return x


@pytest.fixture(scope="module")
def debug_x() -> np.ndarray:
    return typical_samples(16, seed=2)


def quantize_onnx(float_model: Path, output: Path, calibration_x: np.ndarray, nodes_to_exclude=()) -> Path:
    """QDQ int8 the way targets/onnx_int8.py does (per-channel weights, int8 activations, MinMax)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    calibration = CalibrationSet(calibration_x, np.arange(len(calibration_x)), np.zeros(len(calibration_x)))
    quantize_static(
        str(float_model),
        str(output),
        ort_reader(calibration, input_name="input"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(nodes_to_exclude),
    )
    return output


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory, model: TinyCnn, calibration_x: np.ndarray) -> tuple[Path, Path]:
    """(preprocessed float, QDQ int8 quantized from it)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = tmp_path_factory.mktemp("onnx")
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(root / "student.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    quant_pre_process(str(root / "student.onnx"), str(root / "student.preprocessed.onnx"), skip_symbolic_shape=False)
    preprocessed = root / "student.preprocessed.onnx"
    return preprocessed, quantize_onnx(preprocessed, root / "student.int8.onnx", calibration_x)


@pytest.fixture(scope="module")
def onnx_errors(onnx_models, debug_x: np.ndarray, tmp_path_factory) -> tuple[list[LayerError], Path]:
    work_dir = tmp_path_factory.mktemp("work")
    return onnx_layer_errors(*onnx_models, debug_x, work_dir), work_dir


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, model: TinyCnn) -> Path:
    """The same network as a TensorFlow SavedModel on NHWC input (no onnx2tf, to stay fast)."""
    import tensorflow as tf

    def constant(parameter: torch.Tensor, *order: int) -> tf.Tensor:
        return tf.constant(parameter.detach().numpy().transpose(*order))

    class Cnn(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = constant(model.conv1.weight, 2, 3, 1, 0), constant(model.conv1.bias, 0)
            self.conv2 = constant(model.conv2.weight, 2, 3, 1, 0), constant(model.conv2.bias, 0)
            self.fc = constant(model.fc.weight, 1, 0), constant(model.fc.bias, 0)

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def __call__(self, x):
            for kernel, bias in (self.conv1, self.conv2):
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME") + bias)
            return tf.matmul(tf.reduce_mean(x, [1, 2]), self.fc[0]) + self.fc[1]

    cnn = Cnn()
    path = tmp_path_factory.mktemp("tf") / "saved_model"
    tf.saved_model.save(cnn, str(path), signatures=cnn.__call__)
    return path


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def calibrated(saved_model: Path, calibration_x: np.ndarray) -> CalibratedModel:
    return tflite_calibrated_model(saved_model, nhwc(calibration_x))


@pytest.fixture(scope="module")
def tflite_errors(calibrated: CalibratedModel, debug_x: np.ndarray) -> list[LayerError]:
    return tflite_layer_errors(calibrated, nhwc(debug_x))


def interpreter(content: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=content)


def assert_worst_first(errors: list[LayerError]) -> None:
    assert errors
    assert all(math.isfinite(error.sqnr_db) and not error.degenerate for error in errors)
    assert [error.sqnr_db for error in errors] == sorted(error.sqnr_db for error in errors)


def test_onnx_layer_errors_name_float_nodes(onnx_models, onnx_errors) -> None:
    """Each entry names a quantized tensor and the preprocessed float model's node computing it, worst first."""
    import onnx

    errors, work_dir = onnx_errors
    assert_worst_first(errors)
    float_nodes = {node.name: node for node in onnx.load(str(onnx_models[0])).graph.node}
    by_tensor = {error.tensor: error for error in errors}
    assert {"input", "logits"} <= set(by_tensor)
    assert (by_tensor["input"].node, by_tensor["input"].op) == ("", "Input")
    assert (by_tensor["logits"].node, by_tensor["logits"].op) == ("/fc/Gemm", "Gemm")
    assert by_tensor["logits"].local_sqnr_db is not None
    for error in errors:
        assert error.scope == "cumulative"
        assert error.node == "" or error.node in float_nodes
    # The quantizer folds each Relu into its Conv: the Relu's output is computed by the Conv in the int8 model.
    folded = [error for error in errors if error.op == "Conv+Relu"]
    assert sorted(error.node for error in folded) == ["/conv1/Conv", "/conv2/Conv"]
    assert all(error.local_sqnr_db is None for error in folded)
    assert list(work_dir.iterdir()) == []


def test_onnx_outlier_layer_ranks_worst(onnx_errors) -> None:
    """The activation whose calibrated range rare outliers stretched loses the most signal, by a wide margin."""
    errors, _ = onnx_errors
    worst, runner_up = errors[0], errors[1]
    assert (worst.node, worst.op) == ("/conv2/Conv", "Conv+Relu")
    assert worst.sqnr_db < runner_up.sqnr_db - 6
    assert worst.rel_error > 0.3


def test_onnx_excluding_the_worst_node_recovers_the_output(
    onnx_models, onnx_errors, calibration_x: np.ndarray, debug_x: np.ndarray, tmp_path: Path
) -> None:
    """The reported node is what nodes_to_exclude needs: kept in float, the logits gain more than 6 dB."""
    float_model, _ = onnx_models
    errors, _ = onnx_errors
    fallback = quantize_onnx(float_model, tmp_path / "fallback.onnx", calibration_x, [errors[0].node])
    after = {error.tensor: error for error in onnx_layer_errors(float_model, fallback, debug_x, tmp_path)}
    before = {error.tensor: error for error in errors}
    assert errors[0].tensor not in after  # no longer quantized
    assert after["logits"].sqnr_db > before["logits"].sqnr_db + 6


def test_layer_error_to_dict_is_json_ready() -> None:
    """to_dict rounds dB to 0.01 and the relative error to 4 digits; it survives json."""
    error = LayerError("t", "n", "Conv", 6.004, "cumulative", None)
    record = json.loads(json.dumps(error.to_dict()))
    assert record == {
        "tensor": "t",
        "node": "n",
        "op": "Conv",
        "sqnr_db": 6.0,
        "rel_error": 0.501,
        "scope": "cumulative",
        "local_sqnr_db": None,
        "degenerate": False,
        "note": None,
    }
    exact = LayerError("t", "n", "Conv", math.inf, "local", math.inf, note="exact")
    assert json.loads(json.dumps(exact.to_dict(), allow_nan=False))["sqnr_db"] is None
    assert exact.rel_error == 0.0


def test_tflite_layer_errors_name_real_nodes(saved_model: Path, tflite_errors: list[LayerError]) -> None:
    """Entries name tensors of the converted float model, worst first; the outlier conv ranks worst."""
    import tensorflow as tf

    assert_worst_first(tflite_errors)
    float_model = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
    tensor_names = {detail["name"] for detail in interpreter(float_model).get_tensor_details()}
    for error in tflite_errors:
        assert error.node == error.tensor and error.node in tensor_names
        assert error.scope == "local" and error.local_sqnr_db == error.sqnr_db
    assert [error.op for error in tflite_errors].count("CONV_2D") == 2
    worst = tflite_errors[0]
    assert worst.op == "CONV_2D" and "Conv2D_1" in worst.node
    assert worst.sqnr_db < tflite_errors[1].sqnr_db - 6


def feed_int8(model, x_nhwc: np.ndarray) -> np.ndarray:
    """Logits (dequantized) of a full-integer model on float NHWC ``x_nhwc``."""
    source, sink = model.get_input_details()[0], model.get_output_details()[0]
    model.resize_tensor_input(source["index"], list(x_nhwc.shape))
    model.allocate_tensors()
    scale, zero_point = source["quantization"]
    model.set_tensor(source["index"], np.clip(np.round(x_nhwc / scale + zero_point), -128, 127).astype(np.int8))
    model.invoke()
    out_scale, out_zero = sink["quantization"]
    return (model.get_tensor(sink["index"]).astype(np.float32) - out_zero) * out_scale


def test_tflite_quantized_model_keeps_denylisted_node_float(
    calibrated: CalibratedModel, debug_x: np.ndarray, tflite_errors: list[LayerError]
) -> None:
    """With the worst node denylisted the model keeps int8 I/O and other layers, that layer float, and runs."""
    worst = tflite_errors[0].node
    model = interpreter(tflite_quantized_model(calibrated, [worst]))
    dtypes = {detail["name"]: np.dtype(detail["dtype"]).name for detail in model.get_tensor_details()}
    assert dtypes[worst] == "float32"
    assert all(dtypes[error.node] == "int8" for error in tflite_errors[1:])
    source, sink = model.get_input_details()[0], model.get_output_details()[0]
    assert source["dtype"] == np.int8 and sink["dtype"] == np.int8
    assert feed_int8(model, nhwc(debug_x[:1])).shape == (1, 3)


def test_tflite_unknown_denylisted_node_is_refused(
    calibrated: CalibratedModel, tflite_errors: list[LayerError]
) -> None:
    """A name the model lacks raises (the converter would silently ignore it) and suggests the real one."""
    real = tflite_errors[0].node
    with pytest.raises(ConfigError, match="no node named") as raised:
        tflite_quantized_model(calibrated, [real.lower()])
    assert repr(real) in raised.value.hint


# --- int8 share of a TFLite file ---------------------------------------------------------------------------


def test_tflite_int8_share_counts_macs_and_weights(
    calibrated: CalibratedModel, tflite_errors: list[LayerError], tmp_path: Path
) -> None:
    """conv1 1→4 3×3, conv2 4→8 3×3 (both on 8×8) and fc 8→3; with conv2 denylisted its MACs and weights are
    float, exactly."""
    conv1, conv2, fc = 8 * 8 * 4 * 9 * 1, 8 * 8 * 8 * 9 * 4, 3 * 8
    all_int8, one_float = tmp_path / "int8.tflite", tmp_path / "one-float.tflite"
    all_int8.write_bytes(tflite_quantized_model(calibrated))
    share = tflite_int8_share(all_int8)
    assert (share.macs, share.weight_bytes, share.total_macs, share.float_layers) == (1.0, 1.0, conv1 + conv2 + fc, ())
    worst = tflite_errors[0]
    one_float.write_bytes(tflite_quantized_model(calibrated, [worst.node]))
    share = tflite_int8_share(one_float)
    assert share.total_macs == conv1 + conv2 + fc
    assert share.macs == pytest.approx((conv1 + fc) / (conv1 + conv2 + fc), abs=1e-12)
    assert share.weight_bytes == pytest.approx((36 + 24) / (36 + 288 + 24), abs=1e-12)
    assert [(layer.node, layer.op, layer.macs) for layer in share.float_layers] == [(worst.node, "CONV_2D", conv2)]


# --- degenerate ranges, zero point 0, all-zero tensors ----------------------------------------------------

FLOAT_MIN = float(np.finfo(np.float32).min)


def save(module, path: Path) -> Path:
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures=module.__call__)
    return path


@pytest.fixture(scope="module")
def padded_pool_model(tmp_path_factory) -> Path:
    """conv (signed output) → pad with float32's minimum → 3×3/2 max-pool → relu → mean → fc: what onnx2tf makes
    of ``Conv, MaxPool2d(3, 2, padding=1)`` (PINTO0309/onnx2tf#444)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    class PaddedPool(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.constant(rng.standard_normal((3, 3, 1, 8)).astype(np.float32) / 3)
            self.fc = tf.constant(rng.standard_normal((8, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def __call__(self, x):
            x = tf.nn.conv2d(x, self.kernel, 1, "SAME")
            x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=FLOAT_MIN)
            x = tf.nn.relu(tf.nn.max_pool2d(x, 3, 2, "VALID"))
            return tf.matmul(tf.reduce_mean(x, [1, 2]), self.fc)

    return save(PaddedPool(), tmp_path_factory.mktemp("padpool") / "saved_model")


def zero_point_zero_samples(count: int, seed: int) -> np.ndarray:
    """NHWC samples normalized like ``data: {mean: [0.502], std: [0.5]}`` on [0, 1] pixels: range [-1.004, 0.996],
    which int8 quantizes with zero point 0."""
    x = np.random.default_rng(seed).uniform(0, 1, (count, 8, 8, 1)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 0, 1, 0] = 0.0, 1.0
    return ((x - 0.502) / 0.5).astype(np.float32)


def test_max_pool_float_min_pad_range_is_repaired(padded_pool_model: Path) -> None:
    """The pad's calibrated range [-3.4e38, max] becomes its input's: the int8 model agrees with the float one
    (with the raw range it collapses to one class); the debugger runs with a zero-point-0 int8 input."""
    import tensorflow as tf

    x = zero_point_zero_samples(64, seed=3)
    calibrated = tflite_calibrated_model(padded_pool_model, x)
    [repair] = calibrated.repairs
    assert repair.op == "PADV2" and repair.calibrated[0] == pytest.approx(FLOAT_MIN)
    assert -100 < repair.repaired[0] < 0 < repair.repaired[1] < 100 and not calibrated.degenerate
    model = interpreter(tflite_quantized_model(calibrated))
    assert model.get_input_details()[0]["quantization"][1] == 0  # the zero point QuantizationDebugger trips on
    float_model = interpreter(tf.lite.TFLiteConverter.from_saved_model(str(padded_pool_model)).convert())
    float_model.resize_tensor_input(0, list(x.shape))
    float_model.allocate_tensors()
    float_model.set_tensor(float_model.get_input_details()[0]["index"], x)
    float_model.invoke()
    reference = float_model.get_tensor(float_model.get_output_details()[0]["index"])
    assert (feed_int8(model, x).argmax(1) == reference.argmax(1)).mean() >= 0.9
    errors = tflite_layer_errors(calibrated, x[:16])
    pad = next(error for error in errors if error.tensor == repair.tensor)
    assert pad.sqnr_db > 20 and pad.note.startswith("range repaired")
    assert all(math.isfinite(error.sqnr_db) for error in errors)


def test_degenerate_range_ranks_first(tmp_path: Path) -> None:
    """Ranges set by a float-max constant in ops the repair does not cover (a fill, a concatenation) rank first,
    marked, whatever their SQNR."""
    import tensorflow as tf

    class ConcatMin(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def __call__(self, x):
            h = tf.nn.relu(tf.nn.conv2d(x, tf.ones([3, 3, 1, 4]) / 9, 1, "SAME"))
            wall = tf.fill(tf.shape(h), FLOAT_MIN)
            return tf.reduce_mean(tf.reduce_max(tf.concat([h, wall], -1), -1), [1, 2])[:, None]

    x = zero_point_zero_samples(32, seed=4)
    calibrated = tflite_calibrated_model(save(ConcatMin(), tmp_path / "saved_model"), x)
    errors = tflite_layer_errors(calibrated, x[:8])
    flags = [error.degenerate for error in errors]
    assert flags == sorted(flags, reverse=True) and not flags[-1]
    degenerate = {error.op: error for error in errors if error.degenerate}
    assert set(degenerate) == {"FILL", "CONCATENATION"}  # the float-max constant and the concatenation
    assert "float-max" in degenerate["CONCATENATION"].note


def test_all_zero_tensor_is_exact_not_worst(tmp_path: Path) -> None:
    """A dead branch (relu of a large negative) is all zero in float and int8: sqnr inf, noted, ranked last."""
    import tensorflow as tf

    class DeadBranch(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def __call__(self, x):
            live = tf.nn.relu(tf.nn.conv2d(x, tf.ones([3, 3, 1, 4]) / 9, 1, "SAME"))
            dead = tf.nn.relu(tf.nn.conv2d(x, tf.ones([1, 1, 1, 4]), 1, "SAME") - 1000.0)
            return tf.reduce_mean(tf.concat([live, dead], -1), [1, 2])

    x = zero_point_zero_samples(32, seed=5)
    errors = tflite_layer_errors(tflite_calibrated_model(save(DeadBranch(), tmp_path / "saved_model"), x), x[:8])
    exact = [error for error in errors if math.isinf(error.sqnr_db)]
    assert exact and errors[-len(exact) :] == exact
    assert all(error.note.startswith("exact") and error.to_dict()["sqnr_db"] is None for error in exact)
    assert math.isfinite(errors[0].sqnr_db)


def test_onnx_all_zero_tensor_is_exact_not_worst(tmp_path: Path) -> None:
    """The same dead branch through onnxruntime's debugger: exact, last (its epsilon floor would say 0 dB)."""

    class DeadBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.live, self.dead = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            both = torch.cat([torch.relu(self.live(x)), torch.relu(self.dead(x) - 1000.0)], 1)
            return both.mean(dim=(2, 3))

    float_model = tmp_path / "dead.onnx"
    torch.onnx.export(
        DeadBranch().eval(),
        (torch.zeros(1, 1, 8, 8),),
        str(float_model),
        dynamo=False,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    x = typical_samples(32, seed=6)
    errors = onnx_layer_errors(float_model, quantize_onnx(float_model, tmp_path / "dead.int8.onnx", x), x, tmp_path)
    exact = [error for error in errors if math.isinf(error.sqnr_db)]
    assert exact and errors[-len(exact) :] == exact
    assert all(error.note.startswith("exact") for error in exact)
