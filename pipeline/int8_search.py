"""Accuracy-aware int8: try calibration methods, keep the best on validation, then keep the most sensitive
layers in float, one at a time, until the accuracy budget holds or the cap is reached.

The search is runtime-neutral: a target hands in how to quantize, how to score a file and how to rank its
layers; the search never looks at the test split.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.layer_errors import LayerError
from pipeline.runtimes import Runner

REPORTED_LAYERS = 10

Quantize = Callable[[str, tuple[str, ...], Path], None]  # (method, float layers, output path) -> writes the file
Score = Callable[[Path], float]  # validation top-1 % of a quantized file
RankLayers = Callable[[Path], list[LayerError]]  # the file's layers, worst first


@dataclass(frozen=True)
class Attempt:
    """One quantized file the search built and scored."""

    method: str
    float_layers: tuple[str, ...]
    val_accuracy: float
    path: Path

    def to_dict(self, fp32_val_accuracy: float) -> dict:
        return {
            "method": self.method,
            "float_layers": list(self.float_layers),
            "val_accuracy": round(self.val_accuracy, 2),
            "val_drop": round(fp32_val_accuracy - self.val_accuracy, 2),
        }


@dataclass
class SearchResult:
    """The chosen file, everything tried, and the layer errors of the all-int8 file of the chosen method."""

    chosen: Attempt
    all_int8: Attempt
    fp32_val_accuracy: float
    budget: float
    attempts: list[Attempt] = field(default_factory=list)
    layer_errors: list[LayerError] = field(default_factory=list)

    @property
    def val_drop(self) -> float:
        return self.fp32_val_accuracy - self.chosen.val_accuracy

    @property
    def within_budget(self) -> bool:
        return self.val_drop <= self.budget

    def to_info(self) -> dict:
        """The manifest's account of the search."""
        return {
            "calibration_method": self.chosen.method,
            "float_layers": list(self.chosen.float_layers),
            "fp32_val_accuracy": round(self.fp32_val_accuracy, 2),
            "val_accuracy": round(self.chosen.val_accuracy, 2),
            "val_drop": round(self.val_drop, 2),
            "max_int8_drop": self.budget,
            "within_budget": self.within_budget,
            "attempts": [a.to_dict(self.fp32_val_accuracy) for a in self.attempts],
            "worst_layers": [e.to_dict() for e in self.layer_errors[:REPORTED_LAYERS]],
        }


def search_int8(
    methods: Sequence[str],
    quantize: Quantize,
    score: Score,
    rank_layers: RankLayers,
    work_dir: Path,
    fp32_val_accuracy: float,
    budget: float,
    max_float_layers: int,
    suffix: str,
    fallback_key: Callable[[LayerError], str] = lambda e: e.node,
) -> SearchResult:
    """Best calibration method on validation, then the float-layer fallback while the drop exceeds ``budget``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    attempts: list[Attempt] = []

    def attempt(method: str, float_layers: tuple[str, ...]) -> Attempt:
        path = work_dir / f"int8-{method}-{len(attempts)}{suffix}"
        quantize(method, float_layers, path)
        attempts.append(Attempt(method, float_layers, score(path), path))
        return attempts[-1]

    best = max((attempt(method, ()) for method in methods), key=lambda a: a.val_accuracy)  # first wins a tie
    layer_errors = rank_layers(best.path)
    chosen = best
    candidates = [key for key in dict.fromkeys(fallback_key(e) for e in layer_errors) if key]
    float_layers: tuple[str, ...] = ()
    for layer in candidates[:max_float_layers]:
        if fp32_val_accuracy - chosen.val_accuracy <= budget:
            break
        float_layers += (layer,)
        latest = attempt(best.method, float_layers)
        if latest.val_accuracy > chosen.val_accuracy:
            chosen = latest
    return SearchResult(chosen, best, fp32_val_accuracy, budget, attempts, layer_errors)


def land(result: SearchResult, output_path: Path) -> None:
    """Copy the chosen file to ``output_path`` (the exporter's temp path)."""
    shutil.copyfile(result.chosen.path, output_path)


def fallback_cost(result: SearchResult, make_runner: Callable[[Path], Runner], x: np.ndarray) -> dict:
    """Size and batch-``len(x)`` p50 latency of the chosen file against the all-int8 one (empty if no fallback)."""
    if not result.chosen.float_layers:
        return {}
    from pipeline.timing import measure_latency

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


def top1(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy in percent of ``predict`` (float NCHW batch → logits) over ``x``."""
    logits = np.concatenate([predict(x[i : i + batch]) for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).mean() * 100)
