"""KD gain over seeds: teacher, KD student and a baseline student (labels only, same budget) per seed.

    python bench/kd_gain.py --seeds 0 1 2 [--config CONFIG] [--out runs/kd_gain]

Each seed is a full edgepipe distill stage (its own split, teacher, student and baseline); accuracy is top-1
on the test split in PyTorch. Prints one row per seed, the mean gain ± its spread over seeds beside the baseline's
seed-to-seed spread, and writes kd_gain.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pipeline.config_load import load_config
from pipeline.rundir import RunDir
from pipeline.stages.distill import run_distill
from pipeline.training.run_models import load_model
from pipeline.training.train import accuracy, predict_logits


def measure_seed(config_path: Path | None, seed: int, out: Path) -> dict:
    config = load_config(config_path, {"seed": seed, "distill.baseline": True})
    run = RunDir.create(out / f"seed{seed}", config)
    run_distill(run)
    test = run.splits.test
    row = {"seed": seed}
    for name in ("teacher", "student", "baseline"):
        row[name] = round(accuracy(predict_logits(load_model(run, name), run.splits, test), test.y), 2)
        row[f"{name}_parameters"] = run.manifest.artifacts[name].info["parameters"]
    row["kd_gain"] = round(row["student"] - row["baseline"], 2)
    row["gap_to_teacher"] = round(row["teacher"] - row["student"], 2)
    return row


def summary(rows: list[dict]) -> str:
    """Mean ± sample std (and range) of the KD gain over seeds, beside the baseline's own seed-to-seed spread (std
    of its accuracy): a gain is only called larger than the spread when its mean exceeds that std and every seed
    gains."""
    gains = [r["kd_gain"] for r in rows]
    ratio = rows[0]["teacher_parameters"] / rows[0]["student_parameters"]
    if len(rows) == 1:
        return (
            f"KD gain {gains[0]:+.2f} points on one seed (no spread: pass several --seeds); student has {ratio:.1f}× "
            "fewer parameters than the teacher"
        )
    spread = statistics.stdev(r["baseline"] for r in rows)
    std = statistics.stdev(gains)
    larger = statistics.mean(gains) > spread and min(gains) > 0
    return (
        f"mean KD gain {statistics.mean(gains):+.2f} ± {std:.2f} points (std over {len(rows)} seeds; "
        f"{min(gains):+.2f} … {max(gains):+.2f}); baseline seed-to-seed std {spread:.2f} points: the gain is "
        f"{'larger' if larger else 'not larger'} than the seed-to-seed spread; student has {ratio:.1f}× fewer "
        "parameters than the teacher"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/kd_gain"))
    args = parser.parse_args()
    rows = [measure_seed(args.config, seed, args.out) for seed in args.seeds]
    print("seed  teacher  KD student  baseline  KD gain  gap to teacher")
    for r in rows:
        print(
            f"{r['seed']:>4}  {r['teacher']:7.2f}  {r['student']:10.2f}  {r['baseline']:8.2f}  {r['kd_gain']:+7.2f}"
            f"  {r['gap_to_teacher']:14.2f}"
        )
    print(summary(rows))
    (args.out / "kd_gain.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
