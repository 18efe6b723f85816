"""Students distilled from teachers of other frameworks, on the embedded default (Fashion-MNIST), against a baseline.

    python bench/file_teachers.py [--out runs/file-teachers] [--keras-epochs 15]

1. A base run of the default config (bundled PyTorch teacher) with ``distill.baseline: true`` and exports
   onnx-fp32, tflite-fp32 and tflite-int8: the baseline student (labels only, same budget) and the TFLite files.
2. Teachers, each given to ``edgepipe run`` as ``teacher.checkpoint`` with the default student and budget:
   - keras: a Keras CNN like teacher-cnn, trained here on the training split with flips and shifts (softmax
     output, best val epoch; fed pixels / 255);
   - onnx: the bundled teacher exported by ``torch.onnx`` with NHWC input of pixels / 255 (normalization inside);
   - tflite-fp32 and tflite-int8: the base run's student as edgepipe exported it (normalization read from the
     run's manifest.json beside the file), against pytorch: the same student's PyTorch checkpoint.
Prints each teacher's runtime and test top-1, its student's test top-1 and the student's gain over the baseline,
and writes file_teachers.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.config_load import load_config
from pipeline.run import run_pipeline
from pipeline.rundir import RunDir
from pipeline.stages.distill import BUNDLED_TEACHER
from pipeline.training.models import load_checkpoint

QUICK_BENCH = {"batch_sizes": [1], "threads": [1], "memory": False, "min_runs": 20, "min_seconds": 0.2}


def _run(out: Path, teacher: dict, targets: list[str], baseline: bool = False) -> RunDir:
    overrides = {"teacher": teacher, "export.targets": targets, "distill.baseline": baseline}
    overrides |= {f"bench.{key}": value for key, value in QUICK_BENCH.items()}
    run_pipeline(load_config(None, overrides), out, set())
    return RunDir.open(out)


def _top1(run: RunDir, artifact: str) -> tuple[float, str]:
    m = next(m for m in run.manifest.measurements if m.artifact == artifact)
    return m.accuracy, f"{m.runtime} {m.provider}"


def keras_teacher(run: RunDir, path: Path, epochs: int) -> Path:
    """A Keras CNN shaped like teacher-cnn (conv-BN-ReLU 32/64/128/128, global pool, dropout, softmax) trained on
    the run's training split (NHWC pixels / 255) with flips and ±2-pixel shifts, cosine-decayed Adam, the best
    validation epoch kept."""
    import keras

    keras.utils.set_random_seed(0)
    splits = run.splits
    c, h, w = splits.input_shape
    layers = [
        keras.Input((h, w, c)),
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomTranslation(2 / h, 2 / w, fill_mode="constant"),
    ]
    for filters, pool in ((32, True), (64, True), (128, False), (128, False)):
        layers += [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False), keras.layers.BatchNormalization()]
        layers += [keras.layers.ReLU()] + ([keras.layers.MaxPool2D()] if pool else [])
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.2)]
    model = keras.Sequential([*layers, keras.layers.Dense(len(splits.classes), activation="softmax")])
    steps = epochs * -(-len(splits.train) // 128)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps))
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    nhwc = lambda images: images.x.transpose(0, 2, 3, 1).astype("float32") / 255  # noqa: E731
    best = keras.callbacks.ModelCheckpoint(str(path), monitor="val_accuracy", save_best_only=True)
    model.fit(
        nhwc(splits.train),
        splits.train.y,
        validation_data=(nhwc(splits.val), splits.val.y),
        epochs=epochs,
        batch_size=128,
        callbacks=[best],
        verbose=2,
    )
    return path


class NHWCPixels(torch.nn.Module):
    """``model`` behind an NHWC input of pixel / 255, the normalization it was trained with inside the graph."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.permute(0, 3, 1, 2) - self.mean) / self.std)


def onnx_teacher(run: RunDir, path: Path) -> Path:
    """The bundled teacher as ONNX taking NHWC pixels / 255, the run's normalization inside the graph."""
    c, _, _ = run.splits.input_shape
    teacher = load_checkpoint(BUNDLED_TEACHER, "teacher-cnn", c, len(run.splits.classes), {})
    wrapped = NHWCPixels(teacher, run.splits.mean, run.splits.std).eval()
    example = torch.from_numpy(run.splits.test.x[:2].transpose(0, 2, 3, 1).astype(np.float32) / 255)
    names = {"input_names": ["pixels"], "dynamic_axes": {"pixels": {0: "batch"}}}
    torch.onnx.export(wrapped, (example,), str(path), dynamo=False, **names)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/file-teachers"))
    parser.add_argument("--keras-epochs", type=int, default=15)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = _run(args.out / "base", {}, ["onnx-fp32", "tflite-fp32", "tflite-int8"], baseline=True)
    baseline, _ = _top1(base, "baseline")
    pixels = {"input": {"mean": [0.0], "std": [1.0]}}
    teachers = {
        "pytorch (base student .pt)": {"arch": "student-cnn", "checkpoint": str(base.path("checkpoints/student.pt"))},
        "tflite-fp32 (base student)": {"checkpoint": str(base.path(base.require("tflite-fp32").path))},
        "tflite-int8 (base student)": {"checkpoint": str(base.path(base.require("tflite-int8").path))},
        "onnx (bundled teacher, NHWC)": {"checkpoint": str(onnx_teacher(base, args.out / "teacher.onnx")), **pixels},
        "keras (trained here)": {
            "checkpoint": str(keras_teacher(base, args.out / "teacher.keras", args.keras_epochs)),
            **pixels,
        },
    }
    rows = []
    for label, teacher in teachers.items():
        run = _run(args.out / label.split()[0], teacher, ["onnx-fp32"])
        teacher_top1, runtime = _top1(run, "teacher")
        student, _ = _top1(run, "student")
        rows.append(
            {
                "teacher": label,
                "runtime": runtime,
                "teacher_top1": teacher_top1,
                "student_top1": student,
                "baseline_top1": baseline,
                "gain_over_baseline": round(student - baseline, 2),
            }
        )
    print(f"baseline student (labels only, same budget): {baseline:.2f} %")
    print(f"{'teacher':<30} {'runtime':<34} {'teacher':>8} {'student':>8} {'vs baseline':>12}")
    for r in rows:
        print(
            f"{r['teacher']:<30} {r['runtime']:<34} {r['teacher_top1']:8.2f} {r['student_top1']:8.2f} "
            f"{r['gain_over_baseline']:+12.2f}"
        )
    (args.out / "file_teachers.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
