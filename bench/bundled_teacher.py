"""Re-make the teacher bundled with edgepipe (pipeline/assets), the one `teacher.checkpoint: auto` loads on
Fashion-MNIST: teacher-cnn trained by edgepipe's own training loop, seed 0, with flips and padded crops, one
training thread.

    python bench/bundled_teacher.py [--epochs 20] [--lr 0.01] [--out runs/bundled-teacher]

Deterministic for a given machine and torch build; prints the checkpoint's test accuracy and sha256.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline.config_load import load_config
from pipeline.io import sha256_file
from pipeline.rundir import RunDir
from pipeline.stages.distill import BUNDLED_TEACHER, ensure_teacher
from pipeline.training.train import accuracy, predict_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate (AdamW, one-cycle)")
    parser.add_argument("--out", type=Path, default=Path("runs/bundled-teacher"))
    args = parser.parse_args()
    overrides = {
        "seed": 0,
        "data.source": "fashion-mnist",
        "data.augment": {"hflip": True, "crop_padding": 2},
        "teacher.checkpoint": None,
        "teacher.epochs": args.epochs,
        "teacher.lr": args.lr,
        "teacher.threads": 1,  # the checkpoint's bytes depend on the thread count
    }
    run = RunDir.create(args.out, load_config(None, overrides))
    teacher = ensure_teacher(run)
    test = run.splits.test
    top1 = accuracy(predict_logits(teacher, run.splits, test), test.y)
    BUNDLED_TEACHER.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.path(run.manifest.artifacts["teacher"].path), BUNDLED_TEACHER)
    print(f"{BUNDLED_TEACHER}: test top-1 {top1:.2f} %, sha256 {sha256_file(BUNDLED_TEACHER)}")


if __name__ == "__main__":
    main()
