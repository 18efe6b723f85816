"""Peak memory and time to the first training step on a large image folder (issue 16: data larger than memory).

    python bench/folder_memory.py --n 20000 [--root /tmp/edgepipe-folder] [--steps 10] [--workers 2]

Generates N 224×224 RGB JPEG files in 10 class folders (smooth synthetic content, a few kB each; reused when the
folder already holds N), then measures in a fresh process, with ``data.channels: 3`` and ``data.image_size:
[224, 224]``: listing + split + mean/std sample (``load_splits``), the first DataLoader batch and one distillation
step of a small RGB student from a small RGB teacher (KD loss, teacher run per batch), a few more steps, the header
check an image folder without ``image_size`` gets (all files), a calibration draw of 256, and an evaluation pass
over the test split. Prints N, each phase's seconds, the peak RSS (ru_maxrss of the process, and of its largest
DataLoader worker), the load average and the CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = 10
SIZE = 224


def _write_one(args: tuple[Path, int, int]) -> None:
    """One smooth image: a class-coloured gradient with a few soft blobs, saved as JPEG quality 85."""
    from PIL import Image

    path, label, seed = args
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 153) % 256], np.float32)
    image = base + 60 * (xs * rng.uniform(-1, 1) + ys * rng.uniform(-1, 1))[..., None]
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1, 3)
        blob = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (0.02 + 0.05 * r))
        image += blob[..., None] * rng.uniform(-80, 80, 3)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=85)


def generate(root: Path, n: int) -> float:
    """Write N images (n // 10 per class, the rest in the first classes); returns seconds (0 when reused)."""
    marker = root / f".complete-{n}"
    if marker.is_file():
        return 0.0
    start = time.perf_counter()
    jobs = []
    for i in range(n):
        label = i % CLASSES
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:06d}.jpg", label, i))
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_one, jobs, chunksize=256))
    marker.write_text("")
    return time.perf_counter() - start


def _rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # Linux: KiB


def _small_rgb_model(classes: int, width: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, width, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, classes),
    )


def measure(root: Path, steps: int, workers: int, batch_size: int) -> dict:
    """The phases, in this process (run it fresh: ``--measure``)."""
    import torch

    from calibration.sampling import draw_calibration_set
    from pipeline.config import DataConfig, LossSpec
    from pipeline.data.splits import _check_headers, load_splits
    from pipeline.training.losses import Objective, Outputs
    from pipeline.training.train import _epoch_loader, predict_logits, to_input

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    times, rss = {}, {"start": _rss_mib()}
    start = time.perf_counter()
    config = DataConfig(source=str(root), channels=3, image_size=(SIZE, SIZE), workers=workers)
    splits = load_splits(config, seed=0)
    times["list_split_stats"] = time.perf_counter() - start
    rss["after_load"] = _rss_mib()

    student, teacher = _small_rgb_model(CLASSES, 16), _small_rgb_model(CLASSES, 32).eval()
    example = torch.from_numpy(splits.normalize(splits.train.x[:2]))
    objective = Objective([LossSpec(name="hinton", temperature=4.0, alpha=0.9)], student, teacher, example)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    order = np.random.default_rng(0).permutation(len(splits.train))
    loader = iter(_epoch_loader(splits, order, batch_size, [0, 0, 0], "cpu"))
    step_times = []
    for step in range(steps):
        x_batch, y_batch, _ = next(loader)
        x = to_input(x_batch)
        with torch.no_grad():
            teacher_out = Outputs(teacher(x))
        loss = objective(Outputs(student(x)), teacher_out, y_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        if step == 0:
            times["first_step"] = step_times[0]
    del loader
    times[f"steps_2_to_{steps}_per_step"] = (step_times[-1] - step_times[0]) / max(1, steps - 1)
    rss["after_steps"] = _rss_mib()

    t = time.perf_counter()
    paths = [str(p) for p in np.concatenate([splits.train.x.paths, splits.val.x.paths, splits.test.x.paths])]
    _check_headers(sorted(paths), None, None, root)
    times["header_check_all_files"] = time.perf_counter() - t

    t = time.perf_counter()
    calibration = draw_calibration_set(splits, 256, seed=0)
    times["calibration_256"] = time.perf_counter() - t
    rss["after_calibration"] = _rss_mib()

    t = time.perf_counter()
    logits = predict_logits(student, splits, splits.test, 256)
    times["eval_test_split"] = time.perf_counter() - t
    rss["after_eval"] = _rss_mib()
    return {
        "n": len(splits.train) + len(splits.val) + len(splits.test),
        "train": len(splits.train),
        "test": len(splits.test),
        "calibration": len(calibration),
        "eval_images_per_s": round(len(logits) / times["eval_test_split"], 1),
        "stats_from": f"{splits.stats_from} ({splits.stats_samples})",
        "workers": splits.workers,
        "batch_size": batch_size,
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "peak_rss_mib": rss,
        "largest_worker_peak_rss_mib": _rss_mib(resource.RUSAGE_CHILDREN),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--measure", action="store_true", help="(internal) measure in this process")
    args = parser.parse_args()
    root = args.root or Path(f"/tmp/edgepipe-folder-{args.n}")
    if args.measure:
        print(json.dumps(measure(root, args.steps, args.workers, args.batch_size)))
        return
    generated = generate(root, args.n)
    command = [sys.executable, __file__, "--measure", "--root", str(root), "--steps", str(args.steps)]
    command += ["--workers", str(args.workers), "--batch-size", str(args.batch_size)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["generate_seconds"] = round(generated, 1)
    result["load_average"] = os.getloadavg()
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
