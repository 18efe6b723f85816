"""KD gain on an RGB image folder of natural photographs: a MobileNetV2 teacher (bench/models/mobilenet_v2.py,
trained from scratch) distilled into student-cnn, against the same student trained from labels alone.

Makes the folder with bench/natural_folder.py when it is absent (small patches of ten photos shipped in
scikit-image / scikit-learn, one class per photo), writes the config to OUT/config.yaml and runs
bench/kd_gain.py's measurement per seed (each seed: its own split, teacher, KD student and baseline).

    nice -n 5 python bench/rgb_kd.py --seeds 0 1 --out /tmp/rgbkd/run
    nice -n 5 python bench/rgb_kd.py --seeds 0 1 --out /tmp/rgbkd/t4 --set distill.losses.0.temperature=4

The README's figures (a teacher trained on 6× the student's data, then pure KD with the teacher live, 200 epochs):

    python bench/rgb_kd.py --seeds 0 --folder /tmp/rgb-more --per-class 600 --out /tmp/rgb-teacher
    python bench/rgb_kd.py --seeds 0 1 --folder /tmp/rgb-bigtest --per-class 100 --test-per-class 800 \
        --folder-seed 7 --out /tmp/rgb-kd --set teacher.checkpoint=/tmp/rgb-teacher/seed0/checkpoints/teacher.pt \
        --set distill.arch_kwargs.width=0.5 --set distill.lr=0.01 --set distill.losses.0.temperature=1 \
        --set distill.losses.0.alpha=0 --set distill.epochs=200

``--set KEY=VALUE`` (repeatable) overrides one config key of the default setup below (VALUE is YAML;
``distill.losses.0.alpha`` addresses the first loss). Prints the per-seed table (test top-1, %), both models'
parameters, the mean gain beside the seed-to-seed spread, wall time and /proc/loadavg; writes OUT/kd_gain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from kd_gain import measure_seed, summary  # noqa: E402

HERE = Path(__file__).parent


def default_config(folder: Path) -> dict:
    return {
        "data": {
            "source": str(folder),
            "image_size": [32, 32],
            "channels": 3,
            "val_fraction": 0.1,
            "test_fraction": 0.2,
            "augment": {"random_resized_crop": {"scale": [0.35, 1.0]}, "hflip": True},
            "workers": 0,
        },
        "teacher": {
            "arch": str(HERE / "models" / "mobilenet_v2.py") + ":make",
            "arch_kwargs": {"width_mult": 0.5},
            "checkpoint": None,
            "epochs": 30,
            "batch_size": 64,
            "lr": 0.003,
            "threads": 1,
        },
        "distill": {
            "arch": "student-cnn",
            "arch_kwargs": {"width": 0.25},
            "losses": [{"name": "hinton", "weight": 1.0, "temperature": 4.0, "alpha": 0.3}],
            "epochs": 40,
            "batch_size": 64,
            "lr": 0.003,
            "threads": 1,
        },
    }


def apply_set(config: dict, assignment: str) -> None:
    """``a.b.0.c=VALUE`` → config['a']['b'][0]['c'] = yaml(VALUE)."""
    key, sep, value = assignment.partition("=")
    if not sep:
        raise SystemExit(f"--set needs KEY=VALUE, got {assignment!r}")
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(leaf)] = yaml.safe_load(value)
    else:
        node[leaf] = yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/rgb_kd"))
    parser.add_argument("--folder", type=Path, default=Path("/tmp/edgepipe-rgb-patches"))
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=0, help="a separate test split (natural_folder.py)")
    parser.add_argument("--folder-seed", type=int, default=0, help="natural_folder.py's --seed (which crops)")
    parser.add_argument("--area", type=float, nargs=2, default=[0.002, 0.01], metavar=("MIN", "MAX"))
    parser.add_argument("--shorter", type=int, nargs=2, default=[32, 48], metavar=("MIN", "MAX"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    start = time.perf_counter()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    existed = args.folder.exists()
    if existed:
        print(f"using the existing folder {args.folder} (its --per-class/--area/--shorter are its own)")
    else:  # the folder's own seed is --folder-seed: the kd_gain seeds vary split and init
        command = [
            sys.executable,
            str(HERE / "natural_folder.py"),
            str(args.folder),
            "--per-class",
            str(args.per_class),
            "--area",
            *map(str, args.area),
            "--shorter",
            *map(str, args.shorter),
            "--test-per-class",
            str(args.test_per_class),
            "--seed",
            str(args.folder_seed),
        ]
        subprocess.run(command, check=True)
    config = default_config(args.folder.absolute())
    for assignment in args.set:
        apply_set(config, assignment)
    args.out.mkdir(parents=True, exist_ok=True)
    config_path = args.out / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    rows = []
    for seed in args.seeds:
        seed_start = time.perf_counter()
        rows.append(measure_seed(config_path, seed, args.out) | {"seconds": round(time.perf_counter() - seed_start)})
        print(f"seed {seed} done in {rows[-1]['seconds']} s: {rows[-1]}", flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    made = (
        "an existing folder, made earlier"
        if existed
        else (
            f"{args.per_class}/class (test: {args.test_per_class or 'carved from them'}/class), area {args.area}, "
            f"shorter side {args.shorter}"
        )
    )
    print(f"\nfolder {args.folder} ({made}); config {config_path}; overrides {args.set or 'none'}")
    print("seed  teacher  KD student  baseline  KD gain  gap to teacher  seconds")
    for r in rows:
        print(
            f"{r['seed']:>4}  {r['teacher']:7.2f}  {r['student']:10.2f}  {r['baseline']:8.2f}  {r['kd_gain']:+7.2f}"
            f"  {r['gap_to_teacher']:14.2f}  {r['seconds']:7d}"
        )
    print(f"parameters: teacher {rows[0]['teacher_parameters']:,}, student {rows[0]['student_parameters']:,}")
    print(summary(rows))
    print(
        f"wall time {time.perf_counter() - start:.0f} s on {os.cpu_count()} CPUs; load average (1/5/15 min) "
        f"before {' '.join(load_before)}, after {' '.join(load_after)}"
    )
    (args.out / "kd_gain.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
