"""The accuracy-aware int8 search: settings chosen on validation, a significance test on the drop, then float
layers by images won per MAC until the drop is within budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from targets.int8_search import FloatLayer, Int8Share, drop_test, search_int8
from targets.layer_errors import LayerError

N = 1000  # validation images; fp32 gets the first 900 right (90.0 %)
LABELS = np.zeros(N, int)
REFERENCE = np.where(np.arange(N) < 900, 0, 1)  # the fp32 file's classes
MACS = {"conv1": 100, "conv2": 600, "conv3": 300, "pad": 0}


def layer(node: str, sqnr: float) -> LayerError:
    return LayerError(tensor=f"{node}_out", node=node, op="Conv", sqnr_db=sqnr, scope="cumulative")


def classes(accuracy: float) -> np.ndarray:
    """The fp32 file's classes with the last images it got right wrong, down to ``accuracy`` percent (a pure loss);
    above 90 %, the first images it got wrong right."""
    return np.where(np.arange(N) < round(accuracy * N / 100), 0, 1)


class FakeQuantizer:
    """Accuracy as a function of (settings, float layers): a table standing in for a real quantizer, so the
    search's choices can be checked exactly (the real quantizers are exercised by the target tests)."""

    def __init__(self, accuracy: dict[str, float], layer_gain: dict[str, float], option_gain=None, bytes_=None) -> None:
        self.accuracy, self.layer_gain, self.option_gain, self.built = accuracy, layer_gain, option_gain or {}, {}
        self.bytes = bytes_ or {}  # (option, value) -> bytes the file saves

    def quantize(self, settings, float_layers: tuple[str, ...], path: Path) -> None:
        path.write_bytes(b"q" * (1000 - sum(self.bytes.get((k, v), 0) for k, v in settings.items())))
        options = sum(self.option_gain.get((k, v), 0) for k, v in settings.items())
        gain = sum(self.layer_gain.get(n, 0) for n in float_layers)
        self.built[path] = (self.accuracy[settings["method"]] + options + gain, float_layers)

    def score(self, path: Path) -> np.ndarray:
        return classes(self.built[path][0])

    def share(self, path: Path) -> Int8Share:
        floated = self.built[path][1]
        float_macs = sum(MACS[n] for n in floated)
        layers = tuple(FloatLayer(n, "Conv", MACS[n]) for n in floated)
        return Int8Share(1 - float_macs / sum(MACS.values()), 1.0, sum(MACS.values()), layers)


def run(tmp_path: Path, fake: FakeQuantizer, methods, budget=0.3, cap=4, ranked=None, **kwargs):
    ranked = ranked or [layer("conv3", 5.0), layer("conv1", 20.0), layer("conv2", 30.0)]
    return search_int8(
        methods=methods,
        quantize=fake.quantize,
        score=fake.score,
        share=fake.share,
        rank_layers=lambda path: ranked,
        work_dir=tmp_path / "search",
        labels=LABELS,
        reference_classes=REFERENCE,
        budget=budget,
        max_float_layers=cap,
        suffix=".onnx",
        **kwargs,
    )


def test_drop_test_scales_with_the_set_size() -> None:
    """One image in 30 (3.3 points) is noise against a 0.3 budget; 3 % of 6,000 images is not."""
    small = drop_test(np.ones(30, bool), np.arange(30) > 0, 0.3)
    assert small.drop == pytest.approx(100 / 30) and not small.over_budget
    large = drop_test(np.ones(6000, bool), np.arange(6000) >= 180, 0.3)
    assert large.drop == pytest.approx(3.0) and large.over_budget
    noise = drop_test(np.arange(6000) < 5400, np.arange(6000) < 5380, 0.3)  # 0.33 points: 20 images
    assert noise.drop == pytest.approx(1 / 3) and not noise.over_budget


def test_drop_test_is_paired() -> None:
    """Images lost and won in equal numbers are no drop, however many."""
    reference, candidate = np.arange(100) < 50, np.arange(100) >= 50
    result = drop_test(reference, candidate, 0.0)
    assert result.drop == 0 and not result.over_budget


def test_auto_keeps_the_best_method_on_validation(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 88.0, "percentile": 89.9, "entropy": 89.5}, {})
    result = run(tmp_path, fake, ["minmax", "percentile", "entropy"])
    assert result.chosen.method == "percentile" and result.chosen.float_layers == ()
    assert result.within_budget and [a.method for a in result.attempts] == ["minmax", "percentile", "entropy"]


def test_a_tie_keeps_the_first_method(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 89.8, "percentile": 89.8}, {})
    assert run(tmp_path, fake, ["minmax", "percentile"]).chosen.method == "minmax"


def test_options_are_searched_one_at_a_time_defaults_first(tmp_path: Path) -> None:
    """reduce_range=True wins only by being more accurate; a tie keeps the portable default."""
    options = {"reduce_range": [False, True], "activation_type": ["uint8", "int8"]}
    fake = FakeQuantizer({"minmax": 86.0}, {}, {("reduce_range", True): 3.0})
    result = run(tmp_path, fake, ["minmax"], options=options)
    assert result.chosen.settings == {"method": "minmax", "reduce_range": True, "activation_type": "uint8"}
    tie = FakeQuantizer({"minmax": 89.9}, {}, {("reduce_range", True): 0.0})
    settings = run(tmp_path / "tie", tie, ["minmax"], options=options).chosen.settings
    assert settings == {"method": "minmax", "reduce_range": False, "activation_type": "uint8"}


def test_the_smallest_file_wins_among_settings_validation_cannot_tell_apart(tmp_path: Path) -> None:
    """Per-tensor weights: 0.1 point below per-channel on 1,000 images (noise) and smaller: it ships; 5 points below
    (significant): it does not, however small."""
    options = {"per_channel": [True, False]}
    tied = FakeQuantizer({"minmax": 89.9}, {}, {("per_channel", False): -0.1}, {("per_channel", False): 100})
    assert run(tmp_path, tied, ["minmax"], options=options).chosen.settings["per_channel"] is False
    worse = FakeQuantizer({"minmax": 89.9}, {}, {("per_channel", False): -5.0}, {("per_channel", False): 100})
    assert run(tmp_path / "worse", worse, ["minmax"], options=options).chosen.settings["per_channel"] is True


def test_settings_are_ranked_by_agreement_with_the_fp32_model(tmp_path: Path) -> None:
    """Two settings equally accurate on labels: the one whose predictions agree with the fp32 model's significantly
    more wins, even when it is the larger file."""

    class Flipping(FakeQuantizer):
        def score(self, path: Path) -> np.ndarray:
            predicted = classes(self.built[path][0])
            if path.read_text() == "per-tensor":  # as accurate, but 60 images won and 60 lost against fp32
                predicted = predicted.copy()
                predicted[:60], predicted[900:960] = 1, 0
            return predicted

        def quantize(self, settings, float_layers, path: Path) -> None:
            super().quantize(settings, float_layers, path)
            path.write_text("per-channel" * 100 if settings["per_channel"] else "per-tensor")  # per-tensor: smaller

    fake = Flipping({"minmax": 90.0}, {})
    result = run(tmp_path, fake, ["minmax"], options={"per_channel": [False, True]})
    assert result.chosen.settings["per_channel"] is True
    assert result.to_info()["attempts"][0]["val_agreement"] == pytest.approx(88.0)


def test_no_fallback_for_a_drop_within_noise(tmp_path: Path) -> None:
    """A 0.5-point drop on 1,000 images against a 0.3 budget is not significant: the file stays all int8."""
    fake = FakeQuantizer({"minmax": 89.5}, {"conv3": 0.5})
    result = run(tmp_path, fake, ["minmax"])
    assert result.chosen.float_layers == () and len(result.attempts) == 1 and result.over_budget is None


def test_fallback_prefers_images_won_per_float_mac(tmp_path: Path) -> None:
    """conv2 wins more images but runs 60 % of the MACs; conv1 wins enough at 10 %: conv1 alone ships."""
    fake = FakeQuantizer({"minmax": 87.0}, {"conv3": 0.5, "conv1": 2.5, "conv2": 2.9})
    ranked = [layer("conv2", 1.0), layer("conv3", 5.0), layer("conv1", 20.0)]
    result = run(tmp_path, fake, ["minmax"], ranked=ranked)
    assert result.chosen.float_layers == ("conv1",) and result.within_budget
    info = result.to_info()
    assert info["int8_share"]["macs"] == pytest.approx(0.9)
    assert info["int8_share"]["float_layers"] == [{"node": "conv1", "op": "Conv", "macs": 100}]
    assert info["over_budget"] is None and info["worst_layers"][0]["node"] == "conv2"


def test_fallback_adds_layers_until_the_budget_holds(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 85.0}, {"conv3": 2.0, "conv1": 2.6, "conv2": 0.1})
    result = run(tmp_path, fake, ["minmax"], min_int8_share=0.5)
    assert set(result.chosen.float_layers) == {"conv1", "conv3"} and result.within_budget
    assert result.all_int8.float_layers == ()


def test_min_int8_share_keeps_a_mostly_float_file_from_shipping_as_int8(tmp_path: Path) -> None:
    """Only floating conv2 (60 % of MACs) would rescue the drop; below the minimum share it is not taken, and the
    result says why it is over budget."""
    fake = FakeQuantizer({"minmax": 85.0}, {"conv2": 5.0})
    result = run(tmp_path, fake, ["minmax"], min_int8_share=0.9)
    assert result.chosen.float_layers == () and result.chosen.share.macs == 1.0
    assert "points below the fp32 model" in result.over_budget


def test_fallback_stops_at_the_cap_and_reports_the_miss(tmp_path: Path) -> None:
    fake = FakeQuantizer({"minmax": 80.0}, {"conv3": 1.0, "conv1": 1.0, "pad": 1.0})
    ranked = [layer("conv3", 1.0), layer("conv1", 2.0), layer("pad", 3.0)]
    result = run(tmp_path, fake, ["minmax"], cap=2, ranked=ranked)
    assert len(result.chosen.float_layers) == 2
    assert not result.within_budget and result.to_info()["within_budget"] is False
    assert result.to_info()["over_budget"].startswith("validation top-1")


def test_a_float_layer_that_does_not_help_is_not_chosen(tmp_path: Path) -> None:
    """The chosen file is the most accurate one seen, not merely the last one built."""
    fake = FakeQuantizer({"minmax": 88.0}, {"conv3": -0.5, "conv1": 0.2})
    result = run(tmp_path, fake, ["minmax"], cap=2)
    assert result.chosen.val_accuracy == pytest.approx(88.2) and result.chosen.float_layers == ("conv1",)
    assert "conv3" not in result.chosen.float_layers
