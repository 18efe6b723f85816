"""Accuracy-aware int8: choose the calibration method and quantization settings on validation, then keep the
layers that cost the most accuracy per float MAC in float, until the drop is no longer significantly over budget.

The search is runtime-neutral: a target hands in how to quantize, how to score a file (its top-1 class per validation
image), how much of a file is int8, and how to rank its layers; the search never looks at the test split.

A drop counts as over budget only when it is *significantly* larger than ``budget``: a one-sided paired test on
per-image correctness (McNemar-style: the per-image difference d_i ∈ {-1, 0, 1} between the fp32 and the int8 file,
drop = 100·mean(d), SE = 100·sd(d)/√n, over budget when drop − budget > z·SE with z = 1.645, 95 %). On 6,000 images
a 0.33-point drop against a 0.3 budget is noise; on 30 images one image (3.3 points) is too.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.measure.runtimes import Runner
from targets.layer_errors import LayerError

REPORTED_LAYERS = 10
Z_ONE_SIDED_95 = 1.645
PROBE_LIMIT = 12  # ranked fallback candidates probed one at a time (each probe is one quantize + score)
COST_FLOOR = 0.01  # cost of a float layer with no MACs (pads, pools, resizes) in the gain-per-cost order

Settings = Mapping[str, Any]  # {"method": ..., plus target options such as reduce_range}; first values are defaults
Quantize = Callable[[Settings, tuple[str, ...], Path], None]  # (settings, float layers, output path) -> file
Score = Callable[[Path], np.ndarray]  # top-1 class per validation image (int, shape (n,)) of a file
RankLayers = Callable[[Path], list[LayerError]]  # the file's fallback candidates, worst first


@dataclass(frozen=True)
class FloatLayer:
    """A layer a file keeps in float, with the multiply-accumulates per sample it runs in float."""

    node: str
    op: str
    macs: int

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "macs": self.macs}


@dataclass(frozen=True)
class Int8Share:
    """How much of a quantized file really is int8.

    ``macs``: share of the model's multiply-accumulates (Conv, Gemm/MatMul, FullyConnected, …) that run on int8
    inputs and weights, in [0, 1]. ``weight_bytes``: share of the weight elements stored as int8. ``float_layers``:
    the compute layers that run in float, with their MACs per sample.
    """

    macs: float
    weight_bytes: float
    total_macs: int
    float_layers: tuple[FloatLayer, ...] = ()

    def to_dict(self) -> dict:
        return {
            "macs": round(self.macs, 4),
            "weight_bytes": round(self.weight_bytes, 4),
            "total_macs": self.total_macs,
            "float_layers": [layer.to_dict() for layer in self.float_layers],
        }


Share = Callable[[Path], Int8Share]


@dataclass(frozen=True)
class DropTest:
    """The paired test of an int8 file's validation drop against the budget (module docstring)."""

    drop: float  # points, fp32 top-1 − int8 top-1
    se: float  # points, standard error of the paired difference
    samples: int
    budget: float

    @property
    def over_budget(self) -> bool:
        return self.drop - self.budget > Z_ONE_SIDED_95 * self.se

    def to_dict(self) -> dict:
        return {
            "drop": round(self.drop, 2),
            "se": round(self.se, 3),
            "samples": self.samples,
            "budget": self.budget,
            "z": Z_ONE_SIDED_95,
            "significantly_over_budget": self.over_budget,
        }


def drop_test(reference_correct: np.ndarray, correct: np.ndarray, budget: float) -> DropTest:
    """Paired test of ``correct`` (int8 file) against ``reference_correct`` (fp32 file), both bool of shape (n,)."""
    diff = reference_correct.astype(np.float64) - correct.astype(np.float64)
    n = len(diff)
    if n == 0:
        return DropTest(0.0, 0.0, 0, budget)
    mean = float(diff.mean())
    variance = max(float((diff**2).mean()) - mean**2, 0.0)
    return DropTest(100 * mean, 100 * math.sqrt(variance / n), n, budget)


@dataclass(frozen=True)
class Attempt:
    """One quantized file the search built and scored."""

    settings: Settings
    float_layers: tuple[str, ...]
    correct: np.ndarray = field(repr=False)  # bool (n,): top-1 equals the label
    agrees: np.ndarray = field(repr=False)  # bool (n,): top-1 equals the fp32 model's
    share: Int8Share
    path: Path
    bytes: int  # the file's size when it was built (the search's folder is removed afterwards)

    @property
    def method(self) -> str:
        return str(self.settings["method"])

    @property
    def val_accuracy(self) -> float:
        return float(self.correct.mean() * 100) if len(self.correct) else 0.0

    def to_dict(self, fp32_val_accuracy: float) -> dict:
        return {
            "method": self.method,
            "settings": dict(self.settings),
            "float_layers": list(self.float_layers),
            "val_accuracy": round(self.val_accuracy, 2),
            "val_agreement": round(float(self.agrees.mean() * 100), 2) if len(self.agrees) else None,
            "val_drop": round(fp32_val_accuracy - self.val_accuracy, 2),
            "int8_macs": round(self.share.macs, 4),
            "bytes": self.bytes,
        }


@dataclass
class SearchResult:
    """The chosen file, everything tried, and the ranked fallback candidates of the best all-int8 file."""

    chosen: Attempt
    all_int8: Attempt
    reference_correct: np.ndarray
    budget: float
    min_int8_share: float
    attempts: list[Attempt] = field(default_factory=list)
    layer_errors: list[LayerError] = field(default_factory=list)

    @property
    def fp32_val_accuracy(self) -> float:
        return float(self.reference_correct.mean() * 100) if len(self.reference_correct) else 0.0

    @property
    def test(self) -> DropTest:
        return drop_test(self.reference_correct, self.chosen.correct, self.budget)

    @property
    def val_drop(self) -> float:
        return self.fp32_val_accuracy - self.chosen.val_accuracy

    @property
    def within_budget(self) -> bool:
        """The chosen file's validation drop is not significantly over the budget."""
        return not self.test.over_budget

    @property
    def over_budget(self) -> str | None:
        """Why the chosen file breaks its budget (one line), or None."""
        reasons = []
        if not self.within_budget:
            t = self.test
            reasons.append(
                f"validation top-1 {t.drop:.2f} points below the fp32 model (budget {self.budget}, "
                f"significant at 95 % on {t.samples} images)"
            )
        if self.chosen.share.macs < self.min_int8_share:
            reasons.append(
                f"only {self.chosen.share.macs:.0%} of MACs in int8 (quantize.min_int8_share {self.min_int8_share})"
            )
        if not reasons:
            return None
        floated = f", {len(self.chosen.float_layers)} layers kept float" if self.chosen.float_layers else ""
        return "; ".join(reasons) + floated

    def to_info(self) -> dict:
        """The manifest's account of the search."""
        return {
            "calibration_method": self.chosen.method,
            "settings": dict(self.chosen.settings),
            "float_layers": list(self.chosen.float_layers),
            "int8_share": self.chosen.share.to_dict(),
            "fp32_val_accuracy": round(self.fp32_val_accuracy, 2),
            "val_accuracy": round(self.chosen.val_accuracy, 2),
            "val_drop": round(self.val_drop, 2),
            "max_int8_drop": self.budget,
            "drop_test": self.test.to_dict(),
            "within_budget": self.within_budget,
            "min_int8_share": self.min_int8_share,
            "over_budget": self.over_budget,
            "attempts": [a.to_dict(self.fp32_val_accuracy) for a in self.attempts],
            "worst_layers": [e.to_dict() for e in self.layer_errors[:REPORTED_LAYERS]],
        }


class _Search:
    """The attempts of one search, each (settings, float layers) built once."""

    def __init__(
        self,
        quantize: Quantize,
        score: Score,
        share: Share,
        work_dir: Path,
        suffix: str,
        labels: np.ndarray,
        reference_classes: np.ndarray,
    ) -> None:
        self.quantize, self.score, self.share = quantize, score, share
        self.labels, self.reference_classes = labels, reference_classes
        self.work_dir, self.suffix = work_dir, suffix
        self.attempts: list[Attempt] = []
        self._built: dict[tuple, Attempt] = {}

    def attempt(self, settings: Settings, float_layers: tuple[str, ...]) -> Attempt:
        key = (tuple(sorted(settings.items())), frozenset(float_layers))
        if key not in self._built:
            path = self.work_dir / f"int8-{len(self.attempts)}{self.suffix}"
            self.quantize(settings, float_layers, path)
            classes, share = self.score(path), self.share(path)
            correct, agrees = classes == self.labels, classes == self.reference_classes
            self._built[key] = Attempt(dict(settings), float_layers, correct, agrees, share, path, path.stat().st_size)
            self.attempts.append(self._built[key])
        return self._built[key]


def _best(attempts: Sequence[Attempt]) -> Attempt:
    """Most validation images agreeing with the fp32 model (what quantization must preserve, and a far less noisy
    figure than label accuracy), then most correct; the first wins a tie (defaults come first)."""
    return max(attempts, key=lambda a: (int(a.agrees.sum()), int(a.correct.sum())))


def _choose_settings(
    search: _Search, methods: Sequence[str], options: Mapping[str, Sequence[Any]], presets: Sequence[Settings]
) -> Attempt:
    """Each calibration method with the default options, then each option's other values one at a time (coordinate
    search), then each preset (a whole combination the coordinate steps may not reach, such as a quantizer's own
    defaults); of the all-int8 files within noise of the most accurate, the smallest wins (a tie keeps the earlier,
    default choice)."""
    defaults = {key: values[0] for key, values in options.items()}
    best = _best([search.attempt({"method": method, **defaults}, ()) for method in methods])
    for key, values in options.items():
        tried = [best] + [search.attempt({**best.settings, key: value}, ()) for value in values[1:]]
        best = _best(tried)
    best = _best([best] + [search.attempt(preset, ()) for preset in presets])
    return _smallest_tied(best, search.attempts)


def _smallest_tied(best: Attempt, attempts: Sequence[Attempt]) -> Attempt:
    """The smallest file among the all-int8 ``attempts`` that neither agree with the fp32 model nor are accurate
    significantly less than ``best`` on validation (paired tests with a zero budget); equal sizes keep the earlier.
    Differences the validation split cannot tell apart are not worth bytes."""
    tied = [
        a
        for a in attempts
        if not a.float_layers
        and not drop_test(best.agrees, a.agrees, 0.0).over_budget
        and not drop_test(best.correct, a.correct, 0.0).over_budget
    ]
    return min(tied, key=lambda a: a.bytes, default=best)


def _cost(attempt: Attempt, base: Attempt) -> float:
    """Share of MACs an attempt moved to float against ``base``, floored so MAC-free layers still cost a little."""
    return max(base.share.macs - attempt.share.macs, 0.0) + COST_FLOOR


def search_int8(
    methods: Sequence[str],
    quantize: Quantize,
    score: Score,
    share: Share,
    rank_layers: RankLayers,
    work_dir: Path,
    labels: np.ndarray,
    reference_classes: np.ndarray,
    budget: float,
    max_float_layers: int,
    suffix: str,
    options: Mapping[str, Sequence[Any]] | None = None,
    presets: Sequence[Settings] = (),
    min_int8_share: float = 0.0,
    fallback_key: Callable[[LayerError], str] = lambda e: e.node,
) -> SearchResult:
    """Choose settings on validation, then float layers while the drop is significantly over ``budget``.

    Fallback: the first ``PROBE_LIMIT`` ranked candidates are each floated alone and scored (their effect on the
    model's output on validation); those that win images back are added in order of images won per share of MACs
    moved to float, each kept only if the file gets better and keeps ≥ ``min_int8_share`` of its MACs in int8, until
    the drop is within budget or ``max_float_layers`` are float. The chosen file is the first within budget, else the
    most accurate one seen that keeps the minimum share (else the most accurate all-int8 file).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    search = _Search(quantize, score, share, work_dir, suffix, labels, reference_classes)
    reference_correct = reference_classes == labels
    best = _choose_settings(search, methods, options or {}, presets)

    def passes(a: Attempt) -> bool:
        return not drop_test(reference_correct, a.correct, budget).over_budget and a.share.macs >= min_int8_share

    layer_errors: list[LayerError] = []
    chosen = best
    if not passes(best) and max_float_layers > 0:
        layer_errors = rank_layers(best.path)
        candidates = [key for key in dict.fromkeys(fallback_key(e) for e in layer_errors) if key][:PROBE_LIMIT]
        probes = [search.attempt(best.settings, (layer,)) for layer in candidates]
        gains = {
            layer: (int(p.correct.sum()) - int(best.correct.sum())) / _cost(p, best)
            for layer, p in zip(candidates, probes)
            if p.correct.sum() > best.correct.sum() and p.share.macs >= min_int8_share
        }
        current = best
        for layer in sorted(gains, key=lambda name: -gains[name]):  # stable: rank order breaks ties
            if passes(current) or len(current.float_layers) >= max_float_layers:
                break
            latest = search.attempt(best.settings, current.float_layers + (layer,))
            if latest.correct.sum() > current.correct.sum() and latest.share.macs >= min_int8_share:
                current = latest
        eligible = [a for a in search.attempts if a.settings == best.settings and a.share.macs >= min_int8_share]
        chosen = current if passes(current) else _best(eligible or [best])
    return SearchResult(chosen, best, reference_correct, budget, min_int8_share, search.attempts, layer_errors)


def land(result: SearchResult, output_path: Path) -> None:
    """Copy the chosen file to ``output_path`` (the exporter's temp path)."""
    shutil.copyfile(result.chosen.path, output_path)


def fallback_cost(result: SearchResult, make_runner: Callable[[Path], Runner], x: np.ndarray) -> dict:
    """Size and batch-``len(x)`` p50 latency of the chosen file against the all-int8 one (empty if no fallback)."""
    if not result.chosen.float_layers:
        return {}
    from pipeline.measure.timing import measure_latency

    def p50(path: Path) -> float:
        return measure_latency(make_runner(path).timed_call(x), len(x), 10, 100, 0.3).p50_ms

    chosen, all_int8 = result.chosen.path, result.all_int8.path
    return {
        "fallback_cost": {
            "bytes": chosen.stat().st_size,
            "bytes_all_int8": all_int8.stat().st_size,
            "p50_ms": p50(chosen),
            "p50_ms_all_int8": p50(all_int8),
            "batch": len(x),
        }
    }


def top1(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Top-1 class per sample (int, shape (n,)) of ``predict`` (float NCHW batch → logits) over ``x``."""
    return np.concatenate([predict(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
