"""The accuracy-aware int8 search: best method on validation, then float layers until the budget holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.int8_search import search_int8
from pipeline.layer_errors import LayerError


def layer(node: str, sqnr: float) -> LayerError:
    return LayerError(tensor=f"{node}_out", node=node, op="Conv", sqnr_db=sqnr, scope="cumulative")


class FakeQuantizer:
    """Accuracy as a function of (method, float layers): a table standing in for a real quantizer, so the
    search's choices can be checked exactly (the real quantizers are exercised by the target tests)."""

    def __init__(self, method_accuracy: dict[str, float], layer_gain: dict[str, float]) -> None:
        self.method_accuracy, self.layer_gain, self.built = method_accuracy, layer_gain, {}

    def quantize(self, method: str, float_layers: tuple[str, ...], path: Path) -> None:
        path.write_text(method)
        self.built[path] = self.method_accuracy[method] + sum(self.layer_gain.get(n, 0) for n in float_layers)

    def score(self, path: Path) -> float:
        return self.built[path]


def run(tmp_path: Path, fake: FakeQuantizer, methods, budget=0.3, cap=4, errors=None):
    ranked = errors or [layer("conv3", 5.0), layer("conv1", 20.0), layer("conv2", 30.0)]
    return search_int8(
        methods=methods,
        quantize=fake.quantize,
        score=fake.score,
        rank_layers=lambda path: ranked,
        work_dir=tmp_path / "search",
        fp32_val_accuracy=90.0,
        budget=budget,
        max_float_layers=cap,
        suffix=".onnx",
    )


def test_auto_keeps_the_best_method_on_validation(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 88.0, "percentile": 89.9, "entropy": 89.5}, {})
    result = run(tmp_path, fake, ["minmax", "percentile", "entropy"])
    assert result.chosen.method == "percentile" and result.chosen.float_layers == ()
    assert result.within_budget and [a.method for a in result.attempts] == ["minmax", "percentile", "entropy"]


def test_a_tie_keeps_the_first_method(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 89.8, "percentile": 89.8}, {})
    assert run(tmp_path, fake, ["minmax", "percentile"]).chosen.method == "minmax"


def test_fallback_floats_the_worst_layers_until_the_budget_holds(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 87.0}, {"conv3": 2.0, "conv1": 0.8, "conv2": 0.1})
    result = run(tmp_path, fake, ["minmax"])
    assert result.chosen.float_layers == ("conv3", "conv1")  # 87 → 89 (drop 1.0) → 89.8 (drop 0.2): stop
    assert result.within_budget and result.all_int8.float_layers == ()
    info = result.to_info()
    assert info["float_layers"] == ["conv3", "conv1"] and info["val_drop"] == pytest.approx(0.2)
    assert info["worst_layers"][0]["node"] == "conv3"


def test_fallback_stops_at_the_cap_and_reports_the_miss(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 85.0}, {"conv3": 1.0, "conv1": 1.0, "conv2": 1.0})
    result = run(tmp_path, fake, ["minmax"], cap=2)
    assert result.chosen.float_layers == ("conv3", "conv1")
    assert not result.within_budget and result.to_info()["within_budget"] is False


def test_no_fallback_when_within_budget(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 89.8}, {"conv3": 5.0})
    result = run(tmp_path, fake, ["minmax"])
    assert result.chosen.float_layers == () and len(result.attempts) == 1


def test_a_float_layer_that_does_not_help_is_not_chosen(tmp_path: Path) -> None:
    """The chosen file is the most accurate one seen, not merely the last one built."""
    fake = FakeQuantizer({"minmax": 88.0}, {"conv3": -0.5, "conv1": 0.2})
    result = run(tmp_path, fake, ["minmax"], cap=2)
    assert result.chosen.val_accuracy == pytest.approx(88.0) and result.chosen.float_layers == ()
