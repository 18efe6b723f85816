"""Hidden int8 difficulties through the real pipeline, quantizers and runtimes (nothing mocked).

Two students share one trained digits run (a user model file, ``my_models.py:make_student``):

* the *outlier* student: the trained student plus one first-conv channel that fires on two positions of the
  512-sample calibration set with a value ~180× the layer's normal range, and whose weights into the next conv are
  zero. Its float function is unchanged, but MinMax stretches that activation's int8 range so far that the other
  channels lose their resolution. onnx-int8's `auto` calibration (percentile) brings it back within
  ``max_int8_drop`` with every MAC in int8. Its float fallback does too, but only by floating the conv that reads
  the outlier activation (most of the model's MACs): allowed with ``quantize.min_int8_share: 0``, refused (over
  budget, said why) under the default 0.9. TFLite's fallback keeps the outlier conv float together with the pool
  and conv that read its output (alone, its output would be re-quantized with the outlier range);
* the *shrunk* student: half the first block's channels scaled by 0.01 and the next conv's weights on them by 100
  (same float function; onnx-int8 with ``reduce_range`` fixed on, as on 8-bit weights it costs too little to be
  significant on 143 validation images): no calibration method or float layer is allowed to fix it, so
  ``quantize.qat.when: auto`` builds ``<target>-qat`` from a QAT-KD student (on each target's own weight grid),
  which must win back at least half of the PTQ drop (it does for onnx-int8; for tflite-int8 it does not yet: an xfail).

Accuracies are measured on the test split with onnxruntime and the LiteRT interpreter directly. The onnx-int8 outlier
tests run by default (~50 s, a third of it the shared teacher); the TFLite ones (onnx2tf, the converter's debugger)
and the QAT-KD ones (5 fake-quant epochs, two more exports) are marked slow (~2 min more).
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config_load import parse_config
from pipeline.manifest import ArtifactRecord
from pipeline.rundir import RunDir
from pipeline.stages.calibrate import CALIBRATION_PATH, run_calibrate
from pipeline.stages.distill import run_distill
from pipeline.stages.export import run_export
from pipeline.stages.qat import run_qat
from pipeline.training.models import build_model, save_checkpoint
from pipeline.training.run_models import load_student
from pipeline.training.train import predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")

MY_MODELS = """
from torch import nn


def make_student(in_channels, num_classes, spare=0):
    \"\"\"The built-in student-cnn, with `spare` extra channels in the first conv.\"\"\"
    first = 24 + spare
    return nn.Sequential(
        nn.Conv2d(in_channels, first, 3, padding=1, bias=False), nn.BatchNorm2d(first), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(first, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(48, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )
"""
WIDTH = 24  # first-conv channels of the trained student; the outlier channel is the next one
PEAK = 800.0  # the outlier activation's largest calibration value (the others stay below ~5)
FIRING = 2  # calibration positions where it fires
BUDGET = 0.3  # quantize.max_int8_drop's default, in points of validation top-1
INT8 = ("onnx-int8", "tflite-int8")
NO_QAT = {"qat": {"when": "never"}}


@dataclass(frozen=True)
class Built:
    """An int8 artifact's manifest record and its top-1 (%) on the test split, measured when it was built."""

    record: ArtifactRecord
    test_accuracy: float

    @property
    def info(self) -> dict:
        return self.record.info


# --- runtimes, used directly ------------------------------------------------------------------------------


def onnx_top1(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean() * 100)


def tflite_top1(path: Path | None, x: np.ndarray, y: np.ndarray, content: bytes | None = None) -> float:
    """Top-1 of a full-integer TFLite model on NCHW float ``x`` (quantized with the model's own input scale)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=None if path is None else str(path), model_content=content)
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    nhwc = x.transpose(0, 2, 3, 1)
    interpreter.resize_tensor_input(source["index"], list(nhwc.shape))
    interpreter.allocate_tensors()
    scale, zero_point = source["quantization"]
    feed = np.clip(np.round(nhwc / scale + zero_point), -128, 127).astype(np.int8)
    interpreter.set_tensor(source["index"], feed)
    interpreter.invoke()
    return float((interpreter.get_tensor(sink["index"]).argmax(1) == y).mean() * 100)  # int8 logits, scale > 0


def split_of_test(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    return run.splits.normalize(run.splits.test.x), run.splits.test.y


def float_top1(model: nn.Module, run: RunDir) -> float:
    return float((predict_logits(model, run.splits, run.splits.test).argmax(1) == run.splits.test.y).mean() * 100)


# --- runs -------------------------------------------------------------------------------------------------


def config(arch: str, teacher_checkpoint: Path, **sections) -> dict:
    """A tiny digits config for the user student, with the default 512 calibration samples (at 64, percentile
    99.999 cannot clip anything: its cut is below one value of the tensor's 100k calibration values)."""
    return {
        "seed": 0,
        "data": {"source": "digits"},
        "teacher": {"arch": "teacher-cnn", "checkpoint": str(teacher_checkpoint)},
        "distill": {"arch": arch, "epochs": 4, "batch_size": 64, "lr": 0.01},
        "calibration": {"size": 512, **sections.pop("calibration", {})},
        "export": {"targets": []},
        **sections,
    }


def export(root: Path, raw: dict, targets: list[str]) -> dict[str, Built]:
    """Export ``targets`` (and the QAT-KD variants ``quantize.qat`` asks for) under ``raw``; measure each int8
    artifact on the test split before the next export overwrites it."""
    run = RunDir.create(root, parse_config(raw))
    x, y = split_of_test(run)
    built = {}
    for record in run_export(run, targets) + run_qat(run, targets):
        if record.info["precision"] == "int8":
            top1 = onnx_top1 if record.info["format"] == "onnx" else tflite_top1
            accuracy, info = top1(run.path(record.path), x, y), record.info
            built[record.name] = Built(record, accuracy)
            print(
                f"{record.name}: {info['calibration_method']}, float {info['float_layers']}, val drop "
                f"{info['val_drop']} (within budget: {info['within_budget']}), test {accuracy:.2f}"
            )
    return built


def replace_student(run: RunDir, model: nn.Module, arch_kwargs: dict, edit: str) -> None:
    """Write ``model`` as the run's student (a new id, so every export is rebuilt from it)."""
    record = run.require("student")
    info = {**record.info, "arch_kwargs": arch_kwargs}
    save_checkpoint(
        model,
        run.path(record.path),
        {k: info[k] for k in ("arch", "arch_kwargs", "in_channels", "num_classes", "kind")},
    )
    artifact_id = run.artifact_id("student", {"edit": edit}, [record.id])
    run.record("student", "distill", artifact_id, run.path(record.path), parent=record.parent, info=info)


@pytest.fixture(scope="module")
def arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("user") / "my_models.py"
    path.write_text(MY_MODELS)
    return f"{path}:make_student"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, arch: str, teacher_checkpoint: Path) -> Path:
    """Teacher, distilled student and calibration set, before any edit (copied by each case)."""
    root = tmp_path_factory.mktemp("trained") / "run"
    run = RunDir.create(root, parse_config(config(arch, teacher_checkpoint)))
    run_distill(run)
    run_calibrate(run)
    return root


# --- (a) an activation with rare large outliers ------------------------------------------------------------


def add_outlier_channel(student: nn.Module, arch: str, calibration_x: np.ndarray) -> nn.Module:
    """The student plus first-conv channel ``WIDTH``: relu(gain · (detector(x) − threshold)), firing at the
    ``FIRING`` calibration positions where a fixed 3×3 detector responds most, ``PEAK`` at the top one; its weights
    into the next conv are zero, so the logits do not change."""
    model = build_model(arch, 1, 10, {"spare": 1}).eval()
    state = model.state_dict()
    for key, value in student.state_dict().items():
        if state[key].shape == value.shape:
            state[key] = value.clone()
        elif key == "4.weight":
            state[key][:, :WIDTH] = value  # the next conv's weights on the trained channels
        else:
            state[key][:WIDTH] = value  # the first conv's and its BatchNorm's trained channels
    detector = torch.rand(3, 3, generator=torch.Generator().manual_seed(0)) + 0.5
    responses = nn.functional.conv2d(torch.from_numpy(calibration_x), detector[None, None], padding=1)
    top = responses.flatten().sort(descending=True).values
    assert top[FIRING - 1] > top[FIRING], "tied detector responses: the firing count would be off"
    threshold = float(top[FIRING - 1] + top[FIRING]) / 2
    batch_norm = model[1]
    state["0.weight"][WIDTH, 0] = detector
    state["1.running_mean"][WIDTH] = threshold
    state["1.running_var"][WIDTH] = 1 - batch_norm.eps  # (x − mean) / sqrt(var + eps) = x − threshold
    state["1.weight"][WIDTH] = PEAK / (float(top[0]) - threshold)
    state["1.bias"][WIDTH] = 0
    state["4.weight"][:, WIDTH] = 0
    model.load_state_dict(state)
    return model


@dataclass(frozen=True)
class Case:
    """An edited copy of the trained run and its float student's test top-1 (%)."""

    root: Path
    fp32_test_accuracy: float


def edited_copy(trained_run: Path, root: Path, edit, arch_kwargs: dict, name: str) -> Case:
    """Copy the trained run to ``root`` and make ``edit(student, run)`` its student."""
    shutil.copytree(trained_run, root)
    run = RunDir.open(root)
    replace_student(run, edit(load_student(run), run), arch_kwargs, name)
    case = Case(root, float_top1(load_student(run), run))
    print(f"{name} student: fp32 test {case.fp32_test_accuracy:.2f}")
    return case


@pytest.fixture(scope="module")
def outlier_case(tmp_path_factory, trained_run: Path, arch: str) -> Case:
    def edit(student: nn.Module, run: RunDir) -> nn.Module:
        return add_outlier_channel(student, arch, np.load(run.path(CALIBRATION_PATH))["x"])

    return edited_copy(trained_run, tmp_path_factory.mktemp("outlier") / "run", edit, {"spare": 1}, "outlier")


SCENARIOS = {  # quantize.qat.when never: this part is about post-training int8 only
    "minmax": {"calibration": {"method": "minmax"}, "quantize": {"max_float_layers": 0, **NO_QAT}},
    "auto": {"quantize": {"max_float_layers": 0, **NO_QAT}},  # calibration.method auto is the default
    "fallback": {
        "calibration": {"method": "minmax"},
        "quantize": {"max_float_layers": 4, "min_int8_share": 0.0, **NO_QAT},
    },
    "fallback-share": {"calibration": {"method": "minmax"}, "quantize": {"max_float_layers": 4, **NO_QAT}},
}


def scenarios(case: Case, arch: str, teacher_checkpoint: Path, target: str, names: list[str]) -> dict[str, Built]:
    return {
        name: export(case.root, config(arch, teacher_checkpoint, **copy.deepcopy(SCENARIOS[name])), [target])[target]
        for name in names
    }


@pytest.fixture(scope="module")
def outlier_onnx(outlier_case: Case, arch: str, teacher_checkpoint: Path) -> dict[str, Built]:
    names = ["minmax", "auto", "fallback", "fallback-share"]
    return scenarios(outlier_case, arch, teacher_checkpoint, "onnx-int8", names)


@pytest.fixture(scope="module")
def outlier_tflite(outlier_case: Case, arch: str, teacher_checkpoint: Path) -> dict[str, Built]:
    names = ["minmax", "fallback", "fallback-share"]  # TFLite calibrates with min/max only
    return scenarios(outlier_case, arch, teacher_checkpoint, "tflite-int8", names)


def test_outlier_student_keeps_its_float_function(trained_run: Path, outlier_case: Case) -> None:
    """Same logits as the trained student; the new channel fires at two calibration positions, ~180× above
    every other channel of its layer."""
    trained, edited = RunDir.open(trained_run), RunDir.open(outlier_case.root)
    student, outlier_student = load_student(trained), load_student(edited)
    np.testing.assert_allclose(
        predict_logits(outlier_student, edited.splits, edited.splits.test),
        predict_logits(student, trained.splits, trained.splits.test),
        rtol=0,
        atol=1e-5,
    )
    with torch.no_grad():
        activation = outlier_student[:3](torch.from_numpy(np.load(edited.path(CALIBRATION_PATH))["x"]))
    assert int((activation[:, WIDTH] > 0).sum()) == FIRING
    assert float(activation[:, WIDTH].max()) == pytest.approx(PEAK, rel=1e-3)
    assert float(activation[:, :WIDTH].max()) < PEAK / 100


def assert_minmax_breaks_the_budget(built: Built, fp32_test_accuracy: float) -> None:
    """Every attempt (MinMax with each setting the target lets the search choose) is significantly over budget."""
    info = built.info
    assert info["calibration_method"] == "minmax" and info["float_layers"] == []
    assert {a["method"] for a in info["attempts"]} == {"minmax"}
    assert info["max_int8_drop"] == BUDGET and info["val_drop"] > BUDGET and info["within_budget"] is False
    assert info["drop_test"]["significantly_over_budget"] and info["over_budget"].startswith("validation top-1")
    assert fp32_test_accuracy - built.test_accuracy > 1.0, (fp32_test_accuracy, built.test_accuracy)


def test_onnx_minmax_alone_loses_more_than_the_budget(outlier_case: Case, outlier_onnx: dict[str, Built]) -> None:
    assert_minmax_breaks_the_budget(outlier_onnx["minmax"], outlier_case.fp32_test_accuracy)


def test_onnx_auto_calibration_rescues_the_outlier(outlier_case: Case, outlier_onnx: dict[str, Built]) -> None:
    """`auto` tries minmax, percentile and entropy on validation and keeps one that clips the outlier: it wins back
    most of minmax's drop (within the budget on a standalone run; how much depends on the trained weights, which
    vary with the thread count the shared teacher was trained under — the fallback test below is the budget check)."""
    improved = outlier_onnx["auto"]
    info = improved.info
    minmax = info["attempts"][0]
    assert [a["method"] for a in info["attempts"][:3]] == ["minmax", "percentile", "entropy"]
    assert info["float_layers"] == [] and minmax["val_drop"] > BUDGET
    assert info["calibration_method"] != "minmax"
    assert info["val_drop"] < minmax["val_drop"] / 2
    assert improved.test_accuracy > outlier_onnx["minmax"].test_accuracy
    assert info["int8_share"]["macs"] == 1.0 and info["over_budget"] is None


def test_onnx_float_fallback_rescues_the_outlier(outlier_case: Case, outlier_onnx: dict[str, Built]) -> None:
    """With MinMax only and no minimum int8 share, floating the outlier conv's output — the conv, the MaxPool and
    the conv that read it — brings it back; the record says how much is still int8."""
    import onnx

    rescued = outlier_onnx["fallback"]
    info = rescued.info
    graph = onnx.load(outlier_case.root / rescued.record.path).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    assert info["calibration_method"] == "minmax" and info["within_budget"] is True and info["val_drop"] <= BUDGET
    assert info["attempts"][0]["float_layers"] == [] and info["attempts"][0]["val_drop"] > BUDGET
    assert 0 < len(info["float_layers"]) <= 4
    assert set(convs[:2]) <= set(info["float_nodes"]), (convs, info["float_nodes"])
    floated = {layer["node"] for layer in info["int8_share"]["float_layers"]}
    assert floated == set(convs) & set(info["float_nodes"]) and info["int8_share"]["macs"] < 0.9
    assert rescued.test_accuracy >= outlier_case.fp32_test_accuracy - 1.0 > outlier_onnx["minmax"].test_accuracy
    assert info["fallback_cost"]["bytes"] > info["fallback_cost"]["bytes_all_int8"]


def test_onnx_fallback_keeps_the_minimum_int8_share(outlier_onnx: dict[str, Built]) -> None:
    """Under the default min_int8_share (0.9) the fallback may not float the conv that carries most MACs: the file
    stays mostly int8 and says it is over budget, and why."""
    info = outlier_onnx["fallback-share"].info
    assert info["min_int8_share"] == 0.9 and info["int8_share"]["macs"] >= 0.9
    assert info["within_budget"] is False and "validation top-1" in info["over_budget"]


@pytest.mark.slow
def test_tflite_minmax_loses_more_than_the_budget(outlier_case: Case, outlier_tflite: dict[str, Built]) -> None:
    assert_minmax_breaks_the_budget(outlier_tflite["minmax"], outlier_case.fp32_test_accuracy)


@pytest.mark.slow
def test_tflite_float_fallback_rescues_the_outlier(outlier_case: Case, outlier_tflite: dict[str, Built]) -> None:
    """With ``min_int8_share: 0``, the outlier conv stays float together with what reads its output up to the next
    compute op (the MAX_POOL_2D and the next CONV_2D): its activation is no longer re-quantized with the outlier
    range. The record states the float layers' MACs."""
    from ai_edge_litert.interpreter import Interpreter

    built = outlier_tflite["fallback"]
    info = built.info
    assert info["within_budget"] is True and info["over_budget"] is None
    assert 0 < len(info["float_layers"]) <= 4 and info["attempts"][0]["float_layers"] == []
    path = RunDir.open(outlier_case.root).path(built.record.path)
    dtypes = {d["name"]: d["dtype"].__name__ for d in Interpreter(model_path=str(path)).get_tensor_details()}
    assert info["float_tensors"] and all(dtypes[name] == "float32" for name in info["float_tensors"])
    share = info["int8_share"]
    assert 0 < share["macs"] < 1 and {layer["op"] for layer in share["float_layers"]} == {"CONV_2D"}
    float_macs = sum(layer["macs"] for layer in share["float_layers"])
    assert float_macs == pytest.approx((1 - share["macs"]) * share["total_macs"], rel=1e-3)
    assert {spec.dtype for spec in built.record.inputs + built.record.outputs} == {"int8"}
    assert built.test_accuracy >= outlier_case.fp32_test_accuracy - 1.0


@pytest.mark.slow
def test_tflite_fallback_under_the_share_floor_is_over_budget(outlier_tflite: dict[str, Built]) -> None:
    """Under the default ``min_int8_share`` (0.9) the rescue (the next conv is most of the MACs) is refused: the
    file stays ≥ 0.9 int8 and the record says it is over budget, and why."""
    info = outlier_tflite["fallback-share"].info
    assert info["min_int8_share"] == 0.9 and info["int8_share"]["macs"] >= 0.9
    assert info["within_budget"] is False and info["over_budget"].startswith("validation top-1")


# --- (b) a drop no calibration fixes: QAT-KD ---------------------------------------------------------------


def shrink_channels(student: nn.Module, run: RunDir) -> nn.Module:
    """Every other channel of the first block × 0.01 and the next conv's weights on them × 100 (ReLU is positively
    homogeneous, so the float function is unchanged): those channels fall below one int8 step of the shared
    activation range, and their large weights widen every output channel's weight scale of the next conv."""
    model = copy.deepcopy(student)
    channels = torch.arange(0, WIDTH, 2)
    with torch.no_grad():
        model[1].weight[channels] *= 0.01
        model[1].bias[channels] *= 0.01
        model[4].weight[:, channels] /= 0.01
    np.testing.assert_allclose(
        predict_logits(model, run.splits, run.splits.test),
        predict_logits(student, run.splits, run.splits.test),
        rtol=0,
        atol=1e-4,
    )
    return model


QAT = {"max_float_layers": 0, "qat": {"lr": 1e-3, "epochs": 5, "frozen_epochs": 1}}  # qat.when: auto (default)


@pytest.fixture(scope="module")
def shrunk_case(tmp_path_factory, trained_run: Path) -> Case:
    return edited_copy(trained_run, tmp_path_factory.mktemp("shrunk") / "run", shrink_channels, {}, "shrunk")


@pytest.fixture(scope="module")
def qat_onnx(shrunk_case: Case, arch: str, teacher_checkpoint: Path) -> dict[str, Built]:
    """On onnxruntime's 7-bit weights (reduce_range fixed): on the 8-bit grid that `auto` picks, the shrunk
    channels cost only ~2 points on digits' 143 validation images, not significantly over the budget."""
    grid = {"targets": [], "onnx_int8": {"reduce_range": True}}
    raw = config(arch, teacher_checkpoint, quantize=copy.deepcopy(QAT), export=grid)
    return export(shrunk_case.root, raw, ["onnx-int8"])


@pytest.fixture(scope="module")
def qat_tflite(shrunk_case: Case, arch: str, teacher_checkpoint: Path) -> dict[str, Built]:
    return export(shrunk_case.root, config(arch, teacher_checkpoint, quantize=copy.deepcopy(QAT)), ["tflite-int8"])


def built_for(request: pytest.FixtureRequest, target: str) -> dict[str, Built]:
    return request.getfixturevalue("qat_onnx" if target == "onnx-int8" else "qat_tflite")


@pytest.mark.slow
@pytest.mark.parametrize("target", INT8)
def test_ptq_breaking_the_budget_gets_a_qat_variant(request, target: str) -> None:
    """Every calibration method breaks the budget, no float layer is allowed: `qat.when: auto` rebuilds the
    target from the QAT-KD student, as int8."""
    built = built_for(request, target)
    ptq, qat = built[target], built.get(f"{target}-qat")
    assert ptq.info["within_budget"] is False and ptq.info["float_layers"] == []
    assert all(attempt["val_drop"] > BUDGET for attempt in ptq.info["attempts"])
    assert qat is not None, f"no {target}-qat: built {sorted(built)}"
    assert qat.info["precision"] == "int8" and qat.info["source"] == "student-qat"
    assert qat.record.parent == f"{ptq.record.parent}-qat"
    if target == "onnx-int8":
        assert qat.info["op_counts"]["QuantizeLinear"] > 0 and qat.info["op_counts"]["DequantizeLinear"] > 0
    else:
        assert {spec.dtype for spec in qat.record.inputs + qat.record.outputs} == {"int8"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [
        "onnx-int8",
        pytest.param(
            "tflite-int8",
            marks=pytest.mark.xfail(
                reason="measured: fp32 99.16, PTQ 98.33, QAT-KD (±127 weight grid) 98.05 — fake quant on "
                "onnxruntime's activation grid does not yet carry over to TFLite's converter",
            ),
        ),
    ],
)
def test_qat_kd_recovers_half_of_the_ptq_drop(request, shrunk_case: Case, target: str) -> None:
    built = built_for(request, target)
    ptq, qat = built[target], built[f"{target}-qat"]
    drop = shrunk_case.fp32_test_accuracy - ptq.test_accuracy
    figures = f"fp32 {shrunk_case.fp32_test_accuracy:.2f}, PTQ {ptq.test_accuracy:.2f}, QAT-KD {qat.test_accuracy:.2f}"
    print(f"{target}: {figures}")
    assert drop > 0, figures
    assert qat.test_accuracy - ptq.test_accuracy >= drop / 2, figures
