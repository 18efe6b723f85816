"""Stage 2: draw and save the calibration set that every int8 quantizer uses."""

from __future__ import annotations

import sys

from calibration.sampling import CalibrationSet, calibration_size, draw_calibration_set
from pipeline.rundir import RunDir

CALIBRATION_PATH = "calibration/calibration.npz"


def run_calibrate(run: RunDir, force: bool = False) -> CalibrationSet:
    """Draw ``calibration.size`` training samples as configured (reused when unchanged)."""
    data = run.config.data.model_dump(exclude={"augment"})  # training-only augmentation never reaches calibration
    sampling = run.config.calibration.model_dump(include={"size", "selection"})  # methods do not change the samples
    key = {"calibration": sampling, "data": data, "seed": run.config.seed}
    calibration_id = run.artifact_id("calibration", key, [])
    path = run.path(CALIBRATION_PATH)
    if not force and run.manifest.reusable("calibration", calibration_id, run.root):
        return CalibrationSet.load(path)
    cfg = run.config.calibration
    size, note = calibration_size(cfg, len(run.splits.train))
    if note is not None:
        print(f"edgepipe: warning: {note}", file=sys.stderr)
    calibration = draw_calibration_set(run.splits, size, run.config.seed, cfg.selection)
    calibration.save(path)
    counts = {
        run.splits.classes[c]: int((calibration.labels == c).sum()) for c in sorted(set(calibration.labels.tolist()))
    }
    run.record(
        "calibration",
        "calibrate",
        calibration_id,
        path,
        info={
            "size": len(calibration),
            "selection": cfg.selection,
            "split": "train",
            "per_class": counts,
            "sample_ids": calibration.ids.tolist(),
            **({"note": note} if note else {}),
        },
    )
    return calibration
