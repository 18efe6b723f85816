"""The loss registry: mse and FitNets hints (adapter shapes, gradients, end-to-end training), the Objective's
teacher rules, and config mistakes reported as one-line ConfigErrors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import LossSpec
from pipeline.config_load import parse_config
from pipeline.errors import ConfigError, EdgepipeError
from pipeline.rundir import RunDir
from pipeline.stages.distill import STUDENT_PATH, run_distill
from pipeline.training.losses import LOSSES, FeatureTap, HintLoss, Objective, Outputs
from pipeline.training.models import build_model
from pipeline.training.run_models import load_student

# Real layer names (``named_modules()``) of the built-in models on 8×8 digits:
# student-cnn: "2" ReLU 24×8×8, "6" ReLU 48×4×4, "10" ReLU 64×2×2, "12" Flatten;
# teacher-cnn: "6" ReLU 64×4×4, "10" ReLU 128×2×2, "13" ReLU 128×2×2, "15" Flatten.
HINT_PAIRS = [("6", "6", 48, 64), ("10", "13", 64, 128), ("2", "10", 24, 128)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_model("student-cnn", 1, 10), build_model("teacher-cnn", 1, 10)


@pytest.fixture
def batch(digits_splits) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(digits_splits.normalize(digits_splits.train.x[:32]))
    return x, torch.from_numpy(digits_splits.train.y[:32])


def assert_one_line(error: Exception) -> None:
    assert "\n" not in str(error) and "\n" not in error.one_line()


def losses_config(tiny_config_dict: dict, losses: list[dict]) -> dict:
    tiny_config_dict["distill"]["losses"] = losses
    return tiny_config_dict


def test_registry_lists_the_four_losses() -> None:
    assert {"ce", "hinton", "mse", "hint"} <= set(LOSSES.names())


def test_mse_equals_functional_mse_of_logits() -> None:
    """mse is F.mse_loss(student logits, teacher logits), weighted like any term in the Objective."""
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    term = LOSSES.get("mse")(None, None, None)
    assert torch.equal(term(Outputs(student), Outputs(teacher), labels), F.mse_loss(student, teacher))
    assert term(Outputs(teacher), Outputs(teacher), labels).item() == 0
    model = build_model("student-cnn", 1, 10)
    objective = Objective(
        [LossSpec(name="mse", weight=0.25), LossSpec(name="ce", weight=2.0)], model, model, torch.zeros(2, 1, 8, 8)
    )
    expected = 0.25 * F.mse_loss(student, teacher) + 2.0 * F.cross_entropy(student, labels)
    torch.testing.assert_close(objective(Outputs(student), Outputs(teacher), labels), expected)


@pytest.mark.parametrize(("student_layer", "teacher_layer", "student_channels", "teacher_channels"), HINT_PAIRS)
def test_hint_adapter_maps_student_to_teacher_channels(
    models, batch, student_layer: str, teacher_layer: str, student_channels: int, teacher_channels: int
) -> None:
    """The 1×1 adapter takes the student layer's channels to the teacher layer's, measured on the example."""
    student, teacher = models
    term = LOSSES.get("hint")(student, teacher, batch[0][:2], student_layer=student_layer, teacher_layer=teacher_layer)
    assert isinstance(term, HintLoss)
    assert term.adapter.weight.shape == (teacher_channels, student_channels, 1, 1)
    assert term.student_layers == (student_layer,) and term.teacher_layers == (teacher_layer,)
    objective = Objective(
        [LossSpec(name="hint", student_layer=student_layer, teacher_layer=teacher_layer)],
        student,
        teacher,
        batch[0][:2],
    )
    assert objective.student_layers == (student_layer,) and objective.teacher_layers == (teacher_layer,)
    assert objective.needs_teacher
    assert student.training and teacher.training  # probing the shapes leaves the modes alone


@pytest.mark.parametrize(("student_layer", "teacher_layer", "student_channels", "teacher_channels"), HINT_PAIRS)
def test_hint_loss_is_differentiable_and_its_adapter_learns(
    models, batch, student_layer: str, teacher_layer: str, student_channels: int, teacher_channels: int
) -> None:
    """Gradients reach the adapter and the student (not the teacher); a few Adam steps on the adapter alone
    lower the loss, also where the feature maps differ in size (they are pooled to the smaller one)."""
    student, teacher = models
    x, labels = batch
    teacher.eval()
    term = LOSSES.get("hint")(student, teacher, x[:2], student_layer=student_layer, teacher_layer=teacher_layer)
    with (
        FeatureTap(student, (student_layer,), "student") as s_tap,
        FeatureTap(teacher, (teacher_layer,), "teacher") as t_tap,
    ):

        def loss() -> torch.Tensor:
            s_logits = student(x)
            with torch.no_grad():
                t_logits = teacher(x)
            return term(Outputs(s_logits, dict(s_tap.features)), Outputs(t_logits, dict(t_tap.features)), labels)

        first = loss()
        assert first.ndim == 0 and torch.isfinite(first) and first > 0
        first.backward()
        assert term.adapter.weight.grad is not None and term.adapter.weight.grad.abs().sum() > 0
        assert student[0].weight.grad is not None and student[0].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in teacher.parameters())
        optimizer = torch.optim.Adam(term.adapter.parameters(), lr=0.05)
        values = []
        for _ in range(15):
            optimizer.zero_grad()
            value = loss()
            value.backward()
            optimizer.step()
            values.append(value.item())
    assert values[-1] < 0.8 * values[0]


def test_hinton_plus_hint_distils_end_to_end(tmp_path: Path, tiny_config_dict: dict, teacher_checkpoint: Path) -> None:
    """hinton + a weighted hint term trains a student; the manifest lists both terms; the adapter is part of the
    objective, not of the saved student."""
    losses = [
        {"name": "hinton", "temperature": 4, "alpha": 0.5},
        {"name": "hint", "weight": 0.5, "student_layer": "6", "teacher_layer": "6"},
    ]
    config = losses_config(tiny_config_dict, losses)
    config["teacher"]["checkpoint"] = str(teacher_checkpoint)
    run = RunDir.create(tmp_path / "run", parse_config(config))
    run_distill(run)
    info = run.manifest.artifacts["student"].info
    assert info["losses"] == [
        {"name": "hinton", "weight": 1.0, "temperature": 4, "alpha": 0.5},
        {"name": "hint", "weight": 0.5, "student_layer": "6", "teacher_layer": "6"},
    ]
    assert info["epochs_run"] == 2 and info["val_accuracy"] > 80
    saved = torch.load(tmp_path / "run" / STUDENT_PATH, weights_only=True)["state_dict"]
    assert set(saved) == set(build_model("student-cnn", 1, 10).state_dict())
    assert not load_student(run).training


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        (
            [{"name": "hintonn"}],
            [
                "unknown distillation loss 'hintonn'",
                "valid: " + ", ".join(sorted(LOSSES.names())),
                "did you mean 'hinton'",
            ],
        ),
        ([{"name": "hinton", "temp": 4}], ["loss 'hinton' has no parameter 'temp'", "temperature, alpha"]),
        ([{"name": "ce", "alpha": 0.5}], ["loss 'ce' has no parameter 'alpha'", "takes: none"]),
        ([{"name": "hint", "student_layer": "6"}], ["loss 'hint' needs parameter 'teacher_layer'"]),
        ([{"name": "hinton", "weight": -1}], ["distill.losses.0.weight"]),
        ([], ["distill.losses"]),
    ],
)
def test_loss_config_mistakes_are_one_line_config_errors(
    tiny_config_dict: dict, losses: list[dict], expected: list[str]
) -> None:
    """Each mistake is caught when the config is parsed, as one line naming the loss, parameter or key."""
    with pytest.raises(ConfigError) as caught:
        parse_config(losses_config(tiny_config_dict, losses))
    for text in expected:
        assert text in caught.value.one_line()
    assert_one_line(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("student_layer", "teacher_layer", "missing"), [("99", "6", "99"), ("6", "classifier", "classifier")]
)
def test_unknown_hint_layer_is_a_config_error_naming_it(
    tmp_path: Path,
    tiny_config_dict: dict,
    teacher_checkpoint: Path,
    student_layer: str,
    teacher_layer: str,
    missing: str,
) -> None:
    """A layer name that is not in the model stops the distill stage with a one-line ConfigError naming it and
    listing real layer names; nothing is recorded."""
    config = losses_config(
        tiny_config_dict, [{"name": "hint", "student_layer": student_layer, "teacher_layer": teacher_layer}]
    )
    config["teacher"]["checkpoint"] = str(teacher_checkpoint)
    run = RunDir.create(tmp_path / "run", parse_config(config))
    with pytest.raises(ConfigError) as caught:
        run_distill(run)
    assert f"no layer {missing!r}" in str(caught.value)
    assert "layers: 0, 1, 2" in str(caught.value)
    assert_one_line(caught.value)
    assert "student" not in run.manifest.artifacts


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_hint_with_a_torchscript_teacher_is_a_one_line_error(tmp_path: Path, tiny_config_dict: dict, kind: str) -> None:
    teacher = build_model("teacher-cnn", 1, 10).eval()
    program = torch.jit.script(teacher) if kind == "script" else torch.jit.trace(teacher, torch.zeros(2, 1, 8, 8))
    path = tmp_path / "teacher_program.pt"
    torch.jit.save(program, str(path))
    config = losses_config(tiny_config_dict, [{"name": "hint", "student_layer": "6", "teacher_layer": "6"}])
    config["teacher"]["checkpoint"] = str(path)
    run = RunDir.create(tmp_path / "run", parse_config(config))
    with pytest.raises(EdgepipeError) as caught:
        run_distill(run)
    assert "hint" in str(caught.value)
    assert_one_line(caught.value)


def test_unknown_hint_layer_error_says_which_model(models) -> None:
    student, teacher = models
    with pytest.raises(ConfigError, match="student has no layer '99'"):
        LOSSES.get("hint")(student, teacher, torch.zeros(2, 1, 8, 8), student_layer="99", teacher_layer="6")
    with pytest.raises(ConfigError, match="teacher has no layer '99'"):
        LOSSES.get("hint")(student, teacher, torch.zeros(2, 1, 8, 8), student_layer="6", teacher_layer="99")


def test_hint_on_a_flat_layer_is_a_config_error(models) -> None:
    """A hint needs 4-D feature maps; a Flatten layer's 2-D output is refused with its shape."""
    student, teacher = models
    with pytest.raises(ConfigError, match="layer '12' gives a 2-D output") as caught:
        LOSSES.get("hint")(student, teacher, torch.zeros(2, 1, 8, 8), student_layer="12", teacher_layer="6")
    assert_one_line(caught.value)


def test_ce_alone_needs_no_teacher(models, batch) -> None:
    """The ce objective builds and evaluates without any teacher."""
    student, _ = models
    x, labels = batch
    objective = Objective([LossSpec(name="ce")], student, None, x[:2])
    assert not objective.needs_teacher
    assert objective.student_layers == () and objective.teacher_layers == ()
    logits = student(x)
    torch.testing.assert_close(objective(Outputs(logits), None, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("losses", [[{"name": "hinton"}], [{"name": "ce"}, {"name": "mse", "weight": 0.5}]])
def test_teacher_losses_without_a_teacher_are_config_errors(models, losses: list[dict]) -> None:
    """hinton (or mse) with no teacher is a ConfigError naming the loss and pointing at ce."""
    student, _ = models
    with pytest.raises(ConfigError, match="need a teacher") as caught:
        Objective([LossSpec(**spec) for spec in losses], student, None, torch.zeros(2, 1, 8, 8))
    assert repr(losses[-1]["name"]) in str(caught.value)
    assert "ce loss alone" in caught.value.one_line()


def test_hint_without_a_teacher_is_a_config_error(models) -> None:
    student, _ = models
    with pytest.raises(ConfigError, match="need a teacher"):
        Objective([LossSpec(name="hint", student_layer="6", teacher_layer="6")], student, None, torch.zeros(2, 1, 8, 8))


def test_loss_parameter_of_the_wrong_type_is_a_config_error(models, tiny_config_dict: dict) -> None:
    student, teacher = models
    with pytest.raises(ConfigError, match="temperature"):
        config = parse_config(
            losses_config(copy.deepcopy(tiny_config_dict), [{"name": "hinton", "temperature": "hot"}])
        )
        Objective(config.distill.losses, student, teacher, torch.zeros(2, 1, 8, 8))


def test_tapped_feature_is_the_layer_output(models, batch) -> None:
    """A tap on BatchNorm '1' keeps BatchNorm's output, not what a later in-place ReLU made of it."""
    student, _ = models
    student.eval()
    x = batch[0]
    with torch.no_grad():
        expected = student[1](student[0](x))  # no tap yet: BatchNorm's own output
        with FeatureTap(student, ("1",), "student") as tap:
            student(x)
            kept = tap.features["1"]
    assert expected.min() < 0
    torch.testing.assert_close(kept, expected)
