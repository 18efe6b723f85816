"""Make an image folder of natural photographs, offline: random crops of the ten colour photos that scikit-image
and scikit-learn ship inside their packages (astronaut, cat, coffee cup, galaxies, tissue stain, motorcycle,
retina, rocket, Chinese temple, flower). One class per photo.

Crops take 15–60 % of the photo's area at aspect ratios 3/4–4/3, are mirrored at random and saved as JPEG
(quality 90) with the shorter side between 160 and 320 pixels, so sizes and aspect ratios vary as in a real
folder and a model's resize/crop preprocessing matters. ``--area MIN MAX`` (share of the photo's area) and
``--shorter MIN MAX`` (pixels) change those ranges: small patches (e.g. ``--area 0.01 0.06``) make a harder task, in
which some patches (sky, background, texture) could come from several photos.

    pip install scikit-image scikit-learn       # only their data files are read
    python bench/natural_folder.py /tmp/natural --per-class 60
    python bench/natural_folder.py /tmp/patches --per-class 150 --area 0.01 0.06 --shorter 48 64
    python bench/natural_folder.py /tmp/bigtest --per-class 100 --test-per-class 800 --seed 7 --area 0.002 0.01 \
        --shorter 32 48       # train/ and a large test/ (8,000 images: one image is 0.0125 points)

Prints the folder's class counts and the time taken.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "cat": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "galaxies": ("skimage", "data/hubble_deep_field.jpg"),
    "tissue": ("skimage", "data/ihc.png"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "temple": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}


def photo_path(package: str, relative: str) -> Path:
    """The file ``relative`` inside the installed ``package`` (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{package} is not installed: pip install {'scikit-image' if package == 'skimage' else 'scikit-learn'}"
        )
    return Path(spec.submodule_search_locations[0]) / relative


def random_crop(
    photo: Image.Image,
    rng: np.random.Generator,
    area_range: tuple[float, float] = (0.15, 0.6),
    shorter_range: tuple[int, int] = (160, 320),
) -> Image.Image:
    """One crop of 15–60 % of the area (``area_range``), aspect 3/4–4/3, mirrored with probability 1/2, shorter
    side 160–320 px (``shorter_range``, inclusive)."""
    width, height = photo.size
    for _ in range(100):
        area = rng.uniform(*area_range) * width * height
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if w <= width and h <= height:
            break
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    crop = photo.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    shorter = int(rng.integers(shorter_range[0], shorter_range[1] + 1))
    scale = shorter / min(w, h)
    return crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)


def write_crops(out: Path, per_class: int, rng: np.random.Generator, area, shorter) -> None:
    """``per_class`` crops of every photo into ``out/<class>/``."""
    for name, (package, relative) in PHOTOS.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(photo_path(package, relative)) as image:
            photo = image.convert("RGB")
        for i in range(per_class):
            crop = random_crop(photo, rng, tuple(area), tuple(shorter))
            crop.save(folder / f"{name}_{i:04d}.jpg", quality=90)
        print(f"{out.name}/{name:11s} {per_class} crops of {photo.size[0]}×{photo.size[1]} ({relative})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=0,
        help="also a separate test split: OUT/train/<class> (--per-class, drawn with --seed) and OUT/test/<class> "
        "(this many, drawn with --seed + 1); 0: one folder OUT/<class>",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--area", type=float, nargs=2, default=[0.15, 0.6], metavar=("MIN", "MAX"), help="crop area share of the photo"
    )
    parser.add_argument(
        "--shorter", type=int, nargs=2, default=[160, 320], metavar=("MIN", "MAX"), help="saved shorter side, pixels"
    )
    args = parser.parse_args()
    if not 0 < args.area[0] <= args.area[1] <= 1:
        parser.error(f"--area needs 0 < MIN <= MAX <= 1, got {args.area[0]} {args.area[1]}")
    if not 1 <= args.shorter[0] <= args.shorter[1]:
        parser.error(f"--shorter needs 1 <= MIN <= MAX, got {args.shorter[0]} {args.shorter[1]}")
    start = time.perf_counter()
    if args.test_per_class:
        write_crops(args.out / "train", args.per_class, np.random.default_rng(args.seed), args.area, args.shorter)
        write_crops(
            args.out / "test", args.test_per_class, np.random.default_rng(args.seed + 1), args.area, args.shorter
        )
    else:
        write_crops(args.out, args.per_class, np.random.default_rng(args.seed), args.area, args.shorter)
    total = len(PHOTOS) * (args.per_class + args.test_per_class)
    print(f"{total} images in {args.out}, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
