"""Pruning a student in place: magnitude (unstructured, torch.nn.utils.prune) and structured (whole channels, with
torch-pruning's dependency graph so residual adds, depthwise groups and concatenations stay consistent), plus what
a pruned model needs around it: per-layer sparsity, a MAC target, and a checkpoint format that rebuilds the
smaller layers from the original architecture (loaded with ``weights_only=True``)."""

from __future__ import annotations

import copy
import difflib

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pipeline.errors import ConfigError, ModelError
from pipeline.measure.model_profile import torch_profile

MAX_CHANNEL_RATIO = 0.9
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# the attributes that give a layer its shape: what a pruned layer changes besides its tensors
SHAPE_ATTRIBUTES = {
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Conv3d: ("in_channels", "out_channels", "groups"),
    nn.ConvTranspose2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm3d: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.LayerNorm: ("normalized_shape",),
    nn.PReLU: ("num_parameters",),
}


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Convolutions and linear layers by ``named_modules()`` name: what pruning can touch."""
    return {name: module for name, module in model.named_modules() if isinstance(module, WEIGHTED)}


def classifier_layers(model: nn.Module, num_classes: int) -> list[str]:
    """Layers whose output is the logits (never pruned: they must keep one output per class)."""
    layers = weighted_layers(model)
    outputs = {name: m.out_features if isinstance(m, nn.Linear) else m.out_channels for name, m in layers.items()}
    last = list(layers)[-1:] if layers else []
    return sorted({name for name, count in outputs.items() if count == num_classes} | set(last))


def check_layer_names(model: nn.Module, names: list[str], key: str) -> None:
    """ConfigError for the first name that is not a prunable layer of the student, listing the valid ones."""
    layers = weighted_layers(model)
    for name in names:
        if name not in layers:
            close = difflib.get_close_matches(name, list(layers), n=1)
            raise ConfigError(
                f"{key}: the student has no prunable layer {name!r}; layers: {', '.join(layers)}",
                f"did you mean {close[0]!r}?" if close else "use names from model.named_modules()",
            )


# ---------------------------------------------------------------------------------------------------- magnitude


def magnitude_prune(
    model: nn.Module, sparsity: float, scope: str, layers: dict[str, float], skip: list[str]
) -> list[str]:
    """Zero the smallest-magnitude weights (L1) of every prunable layer not in ``skip``: one threshold over all
    of them (``global``) or each to ``sparsity`` (``layer``); ``layers`` sets a layer's own share. The masks stay
    attached (``weight_orig`` × ``weight_mask``) so a fine-tune keeps the zeros; ``make_permanent`` removes them.
    Returns the pruned layers' names."""
    targets = {name: m for name, m in weighted_layers(model).items() if name not in skip}
    own = {name: targets[name] for name in layers if name in targets}
    shared = {name: m for name, m in targets.items() if name not in own}
    if scope == "global" and shared and sparsity > 0:
        torch_prune.global_unstructured(
            [(m, "weight") for m in shared.values()], pruning_method=torch_prune.L1Unstructured, amount=sparsity
        )
    elif sparsity > 0:
        for module in shared.values():
            torch_prune.l1_unstructured(module, "weight", amount=sparsity)
    for name, module in own.items():
        torch_prune.l1_unstructured(module, "weight", amount=layers[name])
    return list(targets)


def make_permanent(model: nn.Module) -> None:
    """Fold every pruning mask into its weight (plain tensors with zeros; the export sees an ordinary model)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)


def layer_sparsity(model: nn.Module) -> list[dict]:
    """Per prunable layer: weight shape, parameter count and the share of exact zeros (percent)."""
    rows = []
    for name, module in weighted_layers(model).items():
        weight = module.weight.detach()
        zeros = int((weight == 0).sum())
        rows.append(
            {
                "layer": name,
                "shape": list(weight.shape),
                "weights": weight.numel(),
                "sparsity": round(100 * zeros / max(weight.numel(), 1), 2),
            }
        )
    return rows


def overall_sparsity(model: nn.Module) -> float:
    """Share of exact zeros over the weights of every prunable layer (percent)."""
    rows = layer_sparsity(model)
    total = sum(row["weights"] for row in rows)
    return round(sum(row["weights"] * row["sparsity"] for row in rows) / max(total, 1), 2)


# --------------------------------------------------------------------------------------------------- structured


def structured_prune(
    model: nn.Module,
    ratio: float,
    example: torch.Tensor,
    skip: list[str],
    layers: dict[str, float] | None = None,
    round_to: int | None = None,
) -> None:
    """Remove ``ratio`` of the output channels of every prunable layer not in ``skip`` (``layers``: a layer's own
    ratio), lowest L2 norm first; torch-pruning's dependency graph prunes what depends on each channel with it
    (BatchNorm, the next layer's inputs, both sides of a residual add, depthwise groups, concatenations)."""
    import torch_pruning as tp

    named = dict(model.named_modules())
    overrides = {named[name]: value for name, value in (layers or {}).items()}
    if ratio <= 0 and not any(overrides.values()):
        return
    was_training = model.training
    model.eval()
    try:
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            pruning_ratio_dict=overrides or None,
            ignored_layers=[named[name] for name in skip],
            round_to=round_to,
        )
        pruner.step()
    except Exception as e:
        raise ModelError(
            f"torch-pruning could not prune the student: {str(e).strip().splitlines()[0]}",
            "list the layers it cannot handle in prune.ignore",
        ) from e
    finally:
        model.train(was_training)


def ratio_for_macs(
    model: nn.Module,
    input_shape: tuple[int, ...],
    macs_ratio: float,
    skip: list[str],
    round_to: int | None = None,
    iterations: int = 8,
) -> tuple[float, int]:
    """The smallest channel ratio whose structured pruning leaves at most ``macs_ratio`` of ``model``'s MACs
    (a grid of 5 % steps, then bisection, on copies; MACs counted by ``torch_profile``); returns it and the MACs it
    leaves. torch-pruning leaves alone a layer it would empty, so MACs need not fall monotonically near the top."""
    full = torch_profile(model, input_shape).macs
    target = macs_ratio * full
    example = torch.zeros(1, *input_shape)

    def macs_at(ratio: float) -> int:
        trial = copy.deepcopy(model)
        structured_prune(trial, ratio, example, skip, round_to=round_to)
        return torch_profile(trial, input_shape).macs

    low, high, high_macs = 0.0, None, full
    for step in range(1, round(MAX_CHANNEL_RATIO / 0.05) + 1):
        ratio = round(step * 0.05, 4)
        macs = macs_at(ratio)
        if macs <= target:
            high, high_macs = ratio, macs
            break
        low = ratio
    if high is None:
        raise ConfigError(
            f"prune.macs_ratio {macs_ratio}: no channel ratio up to {MAX_CHANNEL_RATIO:.0%} leaves that few MACs "
            "(the classifier, ignored layers and layers too small to prune stay)",
            "raise prune.macs_ratio, lower prune.round_to or shorten prune.ignore",
        )
    for _ in range(iterations):
        middle = (low + high) / 2
        macs = macs_at(middle)
        if macs <= target:
            high, high_macs = middle, macs
        else:
            low = middle
    return round(high, 4), high_macs


def relative_ratio(done: float, wanted: float) -> float:
    """The ratio to prune a model already pruned by ``done`` (of the original channels) down to ``wanted``."""
    return 1 - (1 - wanted) / (1 - done)


# -------------------------------------------------------------------------------------------------- checkpoints


def structure_of(model: nn.Module) -> dict[str, dict]:
    """The shape attributes of every layer that has them (``SHAPE_ATTRIBUTES``): saved beside a pruned state_dict
    so the original architecture can be rebuilt at the pruned size."""
    structure = {}
    for name, module in model.named_modules():
        attributes = SHAPE_ATTRIBUTES.get(type(module))
        if attributes:
            structure[name] = {
                a: list(v) if isinstance(v, tuple) else v for a in attributes for v in [getattr(module, a)]
            }
    return structure


def restore_structure(model: nn.Module, structure: dict[str, dict], state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize a freshly built ``model`` to a pruned one: set each layer's shape attributes and give each parameter
    and buffer the shape it has in ``state``; then load ``state`` (strict)."""
    modules = dict(model.named_modules())
    for name, attributes in structure.items():
        module = modules.get(name)
        if module is None:
            raise ModelError(f"pruned checkpoint names layer {name!r}, which the architecture does not have")
        for attribute, value in attributes.items():
            setattr(module, attribute, tuple(value) if isinstance(value, list) else value)
    for key, tensor in state.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None:
            continue  # load_state_dict names it
        if leaf in owner._parameters and owner._parameters[leaf] is not None:
            if owner._parameters[leaf].shape != tensor.shape:
                owner._parameters[leaf] = nn.Parameter(torch.empty(tensor.shape, dtype=tensor.dtype))
        elif leaf in owner._buffers and owner._buffers[leaf] is not None:
            if owner._buffers[leaf].shape != tensor.shape:
                owner._buffers[leaf] = torch.empty(tensor.shape, dtype=tensor.dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"pruned checkpoint does not fit its architecture: {str(e).strip().splitlines()[0]}") from e
    return model.eval()


def load_pruned_checkpoint(
    path, arch: str, in_channels: int, num_classes: int, kwargs: dict | None = None
) -> nn.Module:
    """Load a pruned student saved by ``save_checkpoint`` with ``meta["structure"]`` (``weights_only=True``)."""
    from pipeline.training.models import build_model

    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"checkpoint {path} is unreadable or corrupt: {str(e).splitlines()[0]}") from e
    structure = payload.get("meta", {}).get("structure") if isinstance(payload, dict) else None
    if structure is None:
        raise ModelError(f"{path} is not a pruned checkpoint (no meta.structure)", "run `edgepipe prune` again")
    return restore_structure(build_model(arch, in_channels, num_classes, kwargs), structure, payload["state_dict"])
