"""README.md of a release bundle: what each file is, what it measured, and runnable code to feed it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.formats import all_formats

if TYPE_CHECKING:
    from pipeline.release_manifest import ReleaseManifest

PREPARE = '''\
import json
import math

import numpy as np
from PIL import Image, ImageOps

bundle = json.load(open("manifest.json"))
name = "{name}"  # any artifact of this bundle
entry = bundle["artifacts"][name]
pre, inp, out = entry["preprocessing"], entry["input"], entry["output"]


def load_pixels(path):
    """An image file → uint8 pixels (H, W, C), decoded exactly as the run decoded its images (pre["decode"])."""
    with Image.open(path) as image:
        image.load()
        if pre.get("exif_transpose"):
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit gray: / 257, rounded
            wide = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8))
        elif image.mode in ("P", "PA"):  # palette: expanded to RGB, or RGBA when it has transparency
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
        image = image.convert("L" if image.mode in ("1", "L", "LA", "La") else "RGB")  # alpha dropped; CMYK → RGB
        image = image.convert("L" if pre["channels"] == 1 else "RGB")
    size = pre["resize"]
    if size and pre.get("resize_mode") == "center-crop":  # cover size / crop_ratio keeping the aspect, crop the middle
        cover_h, cover_w = math.floor(size[0] / pre["crop_ratio"]), math.floor(size[1] / pre["crop_ratio"])
        if cover_h * image.width >= cover_w * image.height:
            height, width = cover_h, cover_h * image.width // image.height
        else:
            height, width = cover_w * image.height // image.width, cover_w
        top, left = round((height - size[0]) / 2), round((width - size[1]) / 2)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        image = image.crop((left, top, left + size[1], top + size[0]))
    elif size and [image.height, image.width] != list(size):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
    return np.ascontiguousarray(pixels[..., ::-1]) if pre["channel_order"] == "BGR" else pixels


def model_input(pixels):
    """uint8 pixels (N, H, W, C) as load_pixels gives them → the model's input."""
    mean, std = np.float32(pre["mean"]), np.float32(pre["std"])
    x = (pixels.astype(np.float32) / np.float32(1 / pre["pixel_scale"]) - mean) / std  # float32, as measured
    if inp["layout"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if inp["scale"] is not None:  # int8 input
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / inp["scale"]) + inp["zero_point"], info.min, info.max)
    return np.ascontiguousarray(x, dtype=inp["dtype"])


def logits(y):
    """The raw output → float scores: logits, or probabilities where entry["output_meaning"]["kind"] says so."""
    if out["scale"] is not None:  # int8 output
        return (y.astype(np.float32) - out["zero_point"]) * out["scale"]
    return y
'''


def render_readme(manifest: "ReleaseManifest") -> str:
    """The bundle's README: a table of its files, then the code that feeds them."""
    run = manifest.source_run
    lines = [
        "# edgepipe release bundle",
        "",
        f"{len(manifest.artifacts)} model(s) from an edgepipe {manifest.edgepipe_version} run ({run.created}, data "
        f"`{run.data_source}`, seed {run.seed}). `manifest.json` says how to feed each file and what it measured; "
        f"`{manifest.labels_file}` names the {len(manifest.labels)} classes in output order.",
        "",
        "| artifact | file | runtime | input | output | top-1 (test) | p50 batch 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in manifest.artifacts.values():
        lines += [
            f"| {entry.name} | `{entry.file}` | {m.runtime} ({m.provider}) | {_tensor(entry.input)} | "
            f"{_tensor(entry.output)} | {m.accuracy:.2f} % | {m.latency.p50_ms:.3f} ms "
            f"({m.threads} thread{'s' if m.threads != 1 else ''}) |"
            for m in entry.measurements
        ]
    lines += [
        f"\n{entry.name} carries {len(mapped)} of the source model's {entry.output_meaning.source_outputs} outputs "
        f"(`output_meaning.class_map` in `manifest.json`: each label's source output index)."
        for entry in manifest.artifacts.values()
        if (mapped := entry.output_meaning.class_map)
    ]
    lines += [
        f"\n{entry.name} outputs probabilities (softmax applied inside the model), not logits."
        for entry in manifest.artifacts.values()
        if entry.output_meaning.softmax_applied
    ]
    lines += [
        f"\n**{entry.name} is over its accuracy budget** ({entry.over_budget}); it was shipped with "
        "`edgepipe release --allow-over-budget`."
        for entry in manifest.artifacts.values()
        if entry.over_budget is not None
    ]
    lines += [
        "",
        f"Top-1 is measured on the {run.test_images} test images. Each file also carries its manifest entry (key "
        f"`edgepipe`, JSON without `bytes`/`sha256`) and the labels (key `labels`): {_metadata_places()}. `sha256` is "
        "that of the bundled file, `source_sha256` that of the run's artifact; both compute the same outputs.",
        "",
        "## Feeding a model",
        "",
        "`load_pixels(path)` decodes an image file exactly as the run decoded its images, from the artifact's "
        "`preprocessing` record (EXIF orientation, 16-bit, palette and alpha rules, channels, `resize_mode`, crop, "
        "`channel_order`; `preprocessing.decode` says it in words); `model_input` normalizes a stack of them. From "
        "the bundle directory (needs numpy and Pillow):",
        "",
        *_code(PREPARE.format(name=next(iter(manifest.artifacts)))),
    ]
    bundled = {entry.format for entry in manifest.artifacts.values()}
    for fmt in all_formats():  # the table's order: ONNX, then TFLite
        if fmt.name in bundled:
            lines += ["", f"### {fmt.readme_heading}", "", *_code(fmt.feeding_snippet)]
    return "\n".join(lines) + "\n"


def _metadata_places() -> str:
    """Where each format keeps the entries: "ONNX in `metadata_props`, TFLite as metadata entries of the …"."""
    return ", ".join(f"{fmt.label} {fmt.metadata_where}" for fmt in all_formats() if fmt.embed_metadata)


def _tensor(spec) -> str:
    shape = "×".join(str(d) for d in spec.shape)
    quantized = f", scale {spec.scale:.6g}, zero point {spec.zero_point}" if spec.scale is not None else ""
    layout = f" {spec.layout}" if spec.layout else ""
    return f"`{spec.name}` {spec.dtype}{layout} {shape}{quantized}"


def _code(text: str) -> list[str]:
    return ["```python", text.rstrip("\n"), "```"]
