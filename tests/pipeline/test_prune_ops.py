"""Pruning operations on tiny inline modules: structured pruning keeps residual adds, depthwise groups and
concatenations consistent, a pruned checkpoint rebuilds from the original architecture, magnitude masks become
plain zeros, and unknown layer names are one-line errors with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.measure.model_profile import torch_profile
from pipeline.training.models import save_checkpoint
from pipeline.training.prune_ops import (
    check_layer_names,
    classifier_layers,
    layer_sparsity,
    load_pruned_checkpoint,
    magnitude_prune,
    make_permanent,
    overall_sparsity,
    ratio_for_macs,
    relative_ratio,
    restore_structure,
    structure_of,
    structured_prune,
)


class ResidualNet(nn.Module):
    """Stem, a depthwise-separable block with a residual add, a concatenation, and a classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pointwise = nn.Conv2d(16, 16, 1)
        self.side = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.pointwise(self.depthwise(y)) + y
        return self.head(torch.cat([z, self.side(y)], 1).mean((2, 3)))


def test_structured_keeps_graph_consistent() -> None:
    """Halving the channels prunes both sides of the residual add and the depthwise groups together; the model still
    runs, has fewer MACs and keeps one output per class."""
    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    before = torch_profile(model, (3, 8, 8))
    structured_prune(model, 0.5, x[:1], classifier_layers(model, 4))
    assert model(x).shape == (2, 4)
    assert model.depthwise.groups == model.depthwise.out_channels == model.pointwise.out_channels == 8
    assert model.stem[0].out_channels == 8 and model.stem[1].num_features == 8
    assert model.head.in_features == model.pointwise.out_channels + model.side.out_channels
    assert torch_profile(model, (3, 8, 8)).macs < 0.5 * before.macs


def test_pruned_checkpoint_rebuilds(tmp_path: Path) -> None:
    """A structured-pruned model saved with its structure reloads (weights_only) into the original architecture at
    the pruned size and gives identical logits."""
    torch.manual_seed(0)
    model = ResidualNet().eval()
    structured_prune(model, 0.5, torch.zeros(1, 3, 8, 8), ["head"])
    path = tmp_path / "pruned.pt"
    save_checkpoint(model, path, {"structure": structure_of(model)})
    payload = torch.load(path, weights_only=True)
    rebuilt = restore_structure(ResidualNet(), payload["meta"]["structure"], payload["state_dict"])
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_pruned_student_cnn_loads_by_arch(tmp_path: Path) -> None:
    """The built-in student pruned and saved reloads through ``load_pruned_checkpoint`` by its arch name."""
    from pipeline.training.models import build_model

    model = build_model("student-cnn", 1, 10).eval()
    structured_prune(model, 0.3, torch.zeros(1, 1, 8, 8), classifier_layers(model, 10), round_to=8)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 40]
    path = tmp_path / "student.pt"
    save_checkpoint(model, path, {"structure": structure_of(model)})
    rebuilt = load_pruned_checkpoint(path, "student-cnn", 1, 10)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_magnitude_global_and_per_layer() -> None:
    """Global magnitude pruning reaches the sparsity over all layers; a per-layer share overrides it; after
    make_permanent the zeros are plain weights (no masks, no hooks)."""
    torch.manual_seed(0)
    model = ResidualNet()
    magnitude_prune(model, 0.8, "global", {"side": 0.25}, skip=["head"])
    make_permanent(model)
    rows = {row["layer"]: row for row in layer_sparsity(model)}
    assert rows["side"]["sparsity"] == 25.0 and rows["head"]["sparsity"] == 0.0
    shared = [rows[name] for name in ("stem.0", "depthwise", "pointwise")]
    zeros = sum(row["weights"] * row["sparsity"] / 100 for row in shared)
    assert zeros == pytest.approx(0.8 * sum(row["weights"] for row in shared), abs=1)
    assert not any(name.endswith("_orig") or name.endswith("_mask") for name in model.state_dict())
    assert 0 < overall_sparsity(model) < 80


def test_ratio_for_macs_meets_the_target() -> None:
    """The channel ratio found leaves at most the asked share of MACs."""
    model = ResidualNet()
    full = torch_profile(model, (3, 8, 8)).macs
    ratio, macs = ratio_for_macs(model, (3, 8, 8), 0.5, ["head"])
    assert 0 < ratio < 0.9 and macs <= 0.5 * full


def test_relative_ratio() -> None:
    """Pruning 20 % of the original channels, then the relative ratio, leaves 60 % of them."""
    assert (1 - 0.2) * (1 - relative_ratio(0.2, 0.4)) == pytest.approx(0.6)


def test_unknown_layer_names_suggest() -> None:
    """A misspelt layer is a ConfigError that lists the layers and suggests the close one."""
    with pytest.raises(ConfigError, match="no prunable layer 'pointwse'") as caught:
        check_layer_names(ResidualNet(), ["pointwise", "pointwse"], "prune.layers")
    assert caught.value.hint == "did you mean 'pointwise'?"
    assert "stem.0, depthwise, pointwise, side, head" in str(caught.value)
