"""Stage 1b (optional, `prune:`): prune the distilled student, KD fine-tune it from the teacher, and measure every
student variant (parameters, MACs, sparsity, gzip'd file size, validation top-1 and p50 on one target × runtime).

- magnitude: the smallest weights are zeroed (torch.nn.utils.prune), masks kept through the fine-tune, then made
  permanent. The files keep their dense shape: smaller when gzip'd, no faster on dense runtimes.
- structured: whole channels go (torch-pruning), by a channel ratio, a MAC target, or down to a latency budget:
  prune a step, fine-tune briefly, export through the real target, time it; stop once the budget holds.

The result is the ``student-pruned`` checkpoint; when it is shipped (always, except when a latency budget was not
met) the export stage builds every target from it under the usual names, and bench measures it beside ``student``.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from torch import nn

from pipeline import progress
from pipeline.config import PruneConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.formats import FORMATS
from pipeline.manifest import PRUNED_STUDENT, ArtifactRecord
from pipeline.measure.model_profile import torch_profile
from pipeline.measure.prune_measure import ExportContext, export_chain, gzip_bytes, p50_ms, val_top1
from pipeline.report.prune import prune_summary_lines
from pipeline.rundir import RunDir
from pipeline.stages.calibrate import CALIBRATION_PATH
from pipeline.training import distributed
from pipeline.training.losses import Objective
from pipeline.training.models import count_parameters, save_checkpoint
from pipeline.training.prune_ops import (
    check_layer_names,
    classifier_layers,
    layer_sparsity,
    magnitude_prune,
    make_permanent,
    overall_sparsity,
    ratio_for_macs,
    relative_ratio,
    structure_of,
    structured_prune,
)
from pipeline.training.run_models import load_student, load_teacher
from pipeline.training.train import TrainJob, fit, predict_logits, seed_everything
from targets import TARGETS

PRUNED_PATH = "checkpoints/student-pruned.pt"
WORK_DIR = "work/prune"
DENSE_NOTE = (
    "Magnitude (unstructured) pruning only sets weights to zero: every file keeps its dense shape and MACs, so dense "
    "runtimes (onnxruntime, TFLite/XNNPACK, PyTorch) run it no faster. What shrinks is the compressed download "
    "(gzip). For lower latency use method: structured."
)
STUDENT_META = ("arch", "arch_kwargs", "in_channels", "num_classes")


@dataclass
class _Session:
    """What one prune run shares: the run, its config, the teacher and the data the fine-tunes and exports use."""

    run: RunDir
    cfg: PruneConfig
    prune_id: str
    teacher: nn.Module
    teacher_logits: np.ndarray | None
    context: ExportContext
    skip: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.run.splits.train.x.shape[1:])

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape)

    def finetune(self, model: nn.Module, epochs: int, lr: float, name: str) -> dict:
        """KD fine-tune with the distill section's losses, batch size and weight decay (best val epoch kept)."""
        if epochs == 0:
            return {"epochs_run": 0}
        fields = self.run.config.kd.model_dump(include=set(TrainConfig.model_fields))
        train_cfg = TrainConfig(**{**fields, "epochs": epochs, "lr": lr, "schedule": "onecycle", "patience": None})
        example = torch.from_numpy(self.run.splits.normalize(self.run.splits.train.x[:2]))
        job = TrainJob(
            name=name,
            model=model,
            objective=Objective(self.run.config.kd.losses, model, self.teacher, example),
            cfg=train_cfg,
            seed=self.run.config.seed,
            progress_path=self.run.path(f"checkpoints/{name}.progress.pt"),
            job_id=f"{self.prune_id}:{name}",
            teacher=self.teacher,
            teacher_logits=self.teacher_logits,
        )
        summary = fit(job, self.run.splits)
        # fit trains channels-last; exported from such weights, torch.onnx flattens with a Gather (as_strided)
        model.cpu().eval().to(memory_format=torch.contiguous_format)
        if distributed.is_main():
            job.progress_path.unlink(missing_ok=True)
        return {key: summary[key] for key in ("epochs_run", "best_epoch", "val_accuracy", "history")}

    def measure_file(self, model: nn.Module, label: str):
        """Export ``model`` to the measure target in the stage's work dir; returns the files built."""
        return export_chain(model.eval(), self.cfg.measure.target, self.context, self.run.path(f"{WORK_DIR}/{label}"))


def _prune_key(run: RunDir) -> tuple[dict, list[str]]:
    cfg = run.config.prune
    target = TARGETS.get(cfg.measure.target)
    chain, name = {}, cfg.measure.target
    while name != "student":
        chain[name] = TARGETS.get(name)().config_key(run.config)
        name = TARGETS.get(name).parent
    key = {
        "prune": cfg.model_dump(),
        "losses": [spec.model_dump() for spec in run.config.kd.losses],
        "train": run.config.kd.model_dump(include={"batch_size", "weight_decay", "device"}),
        "targets": chain,
        "data": run.config.data.model_dump(),
        "seed": run.config.seed,
        "torch_pruning": metadata.version("torch-pruning"),
    }
    parents = [run.require("student").id, run.require("teacher").id]
    if target.needs_calibration:
        parents.append(run.require("calibration").id)
    return key, parents


def _session(run: RunDir, prune_id: str, student: nn.Module) -> _Session:
    cfg = run.config.prune
    teacher = load_teacher(run)
    splits = run.splits
    objective = Objective(
        run.config.kd.losses, student, teacher, torch.from_numpy(splits.normalize(splits.train.x[:2]))
    )
    teacher_logits = None
    if objective.needs_teacher and not objective.teacher_layers and splits.fixed_train_inputs:
        teacher_logits = predict_logits(teacher, splits, splits.train)
    calibration = None
    if TARGETS.get(cfg.measure.target).needs_calibration:
        from calibration.sampling import CalibrationSet

        calibration = CalibrationSet.load(run.path(CALIBRATION_PATH))
    context = ExportContext(run.config, run.preprocessing, calibration, (splits.normalize(splits.val.x), splits.val.y))
    skip = list(cfg.ignore)  # magnitude pruning may zero classifier weights too; structured must keep its outputs
    if cfg.method == "structured":
        skip = list(dict.fromkeys(skip + classifier_layers(student, len(splits.classes))))
    return _Session(run, cfg, prune_id, teacher, teacher_logits, context, skip)


def _magnitude(session: _Session, student: nn.Module) -> tuple[nn.Module, dict]:
    cfg = session.cfg
    model = copy.deepcopy(student)
    pruned = magnitude_prune(model, cfg.sparsity, cfg.scope, cfg.layers, session.skip)
    finetune = session.finetune(model, cfg.finetune.epochs, cfg.finetune.lr, "student-pruned-finetune")
    make_permanent(model)
    return model, {"pruned_layers": pruned, "finetune": finetune}


def _structured(session: _Session, student: nn.Module) -> tuple[nn.Module, dict]:
    cfg = session.cfg
    info: dict = {}
    if cfg.macs_ratio is not None:
        ratio, macs = ratio_for_macs(student, session.input_shape, cfg.macs_ratio, session.skip, cfg.round_to)
        info["macs_target"] = {"ratio": cfg.macs_ratio, "channel_ratio_found": ratio, "macs_left": macs}
    else:
        ratio = cfg.channel_ratio
    model = copy.deepcopy(student)
    structured_prune(model, ratio, session.example, session.skip, cfg.layers, cfg.round_to)
    info["channel_ratio"] = ratio
    info["finetune"] = session.finetune(model, cfg.finetune.epochs, cfg.finetune.lr, "student-pruned-finetune")
    return model, info


def _log(text: str) -> None:
    if distributed.is_main():
        progress.log(text)


def _step_entry(session: _Session, model: nn.Module, step: int, ratio: float) -> dict:
    """Export ``model`` through the measure target and time it: one point of the search path."""
    cfg = session.cfg
    files = session.measure_file(model, f"search-{step}")
    built = files[cfg.measure.target]
    x_val, y_val = session.context.validation
    runner = {"candidate": built.runner(cfg.measure.threads)}
    p50 = p50_ms(runner, x_val, cfg.measure)["candidate"]
    if p50 <= cfg.latency_budget_ms:  # timing noise must not end the search: it has to meet the budget twice
        p50 = max(p50, p50_ms(runner, x_val, cfg.measure)["candidate"])
    profile = torch_profile(model, session.input_shape)
    entry = {
        "step": step,
        "channel_ratio": round(ratio, 4),
        "params": profile.params,
        "macs": profile.macs,
        "val_top1": val_top1(built, x_val, y_val),
        "p50_ms": p50,
        "meets_budget": p50 <= cfg.latency_budget_ms,
    }
    _log(
        f"prune search step {step}: channel ratio {ratio:.2f}, {profile.macs / 1e6:.3f} MMAC, val top-1 "
        f"{entry['val_top1']:.2f} %, p50 {p50:.4f} ms (budget {cfg.latency_budget_ms} ms)"
    )
    return entry


def _budget_search(session: _Session, student: nn.Module) -> tuple[nn.Module, dict]:
    """Prune ``step`` more of the channels at a time (brief KD fine-tune after each), export and time each
    candidate on the measure target; stop at the first that meets the budget (timed twice) or at ``max_ratio``.
    The most accurate candidate that meets the budget is kept (fine-tuned again with the full budget); when none
    does, the fastest is kept for inspection but not shipped."""
    cfg = session.cfg
    current, ratio, step = copy.deepcopy(student), 0.0, 0
    path = [_step_entry(session, current, step, ratio)]
    snapshots = {0: copy.deepcopy(current)}
    while not path[-1]["meets_budget"] and ratio < cfg.max_ratio - 1e-9:
        wanted, step = min(ratio + cfg.step, cfg.max_ratio), step + 1
        structured_prune(current, relative_ratio(ratio, wanted), session.example, session.skip, round_to=cfg.round_to)
        ratio = wanted
        session.finetune(current, cfg.search_epochs, cfg.finetune.lr, f"student-pruned-search-{step}")
        path.append(_step_entry(session, current, step, ratio))
        snapshots[step] = copy.deepcopy(current)
    meeting = [entry for entry in path if entry["meets_budget"]]
    met = bool(meeting)
    chosen = max(meeting, key=lambda e: (e["val_top1"], -e["step"])) if met else min(path, key=lambda e: e["p50_ms"])
    model = snapshots[chosen["step"]]
    finetune = {"epochs_run": 0}
    if chosen["step"] > 0:
        finetune = session.finetune(model, cfg.finetune.epochs, cfg.finetune.lr, "student-pruned-finetune")
    search = {
        "budget_ms": cfg.latency_budget_ms,
        "met": met,
        "chosen_step": chosen["step"],
        "path": path,
        "closest_p50_ms": min(entry["p50_ms"] for entry in path),
    }
    return model, {"channel_ratio": chosen["channel_ratio"], "finetune": finetune, "search": search}


def _variant(session: _Session, name: str, model: nn.Module, files: dict, p50: float) -> dict:
    """Parameters, MACs, sparsity (overall and per layer), each exported file's bytes and gzip'd bytes, validation
    top-1 on the measure target's runtime and its p50."""
    profile = torch_profile(model, session.input_shape)
    x_val, y_val = session.context.validation
    return {
        "name": name,
        "params": profile.params,
        "macs": profile.macs,
        "sparsity": overall_sparsity(model),
        "layers": layer_sparsity(model),
        "files": {
            target: {"bytes": built.path.stat().st_size, "gzip_bytes": gzip_bytes(built.path)}
            for target, built in files.items()
        },
        "val_top1": val_top1(files[session.cfg.measure.target], x_val, y_val),
        "p50_ms": p50,
    }


def _variants(session: _Session, student: nn.Module, pruned: nn.Module) -> list[dict]:
    """Both students through the measure target (plus onnx-fp32 for its gzip'd size), timed in turns."""
    measured = {}
    for name, model in (("student", student), (PRUNED_STUDENT, pruned)):
        files = session.measure_file(model, name)
        if "onnx-fp32" not in files:
            files |= export_chain(model, "onnx-fp32", session.context, session.run.path(f"{WORK_DIR}/{name}"))
        measured[name] = (model, files)
    measure = session.cfg.measure
    runners = {name: files[measure.target].runner(measure.threads) for name, (_, files) in measured.items()}
    p50 = p50_ms(runners, session.context.validation[0], measure)
    return [_variant(session, name, model, files, p50[name]) for name, (model, files) in measured.items()]


def run_prune(run: RunDir, force: bool = False) -> ArtifactRecord:
    """Prune the run's student as ``prune:`` says (reused while its inputs are unchanged); records
    ``student-pruned`` with every variant's figures and, for a latency budget, the path of the search."""
    cfg = run.config.prune
    if cfg is None:
        raise ConfigError(f"{run.root / 'config.yaml'} has no prune: section", "add one (see examples/config.yaml)")
    student = load_student(run)
    check_layer_names(student, list(cfg.layers), "prune.layers")  # before anything is written
    check_layer_names(student, cfg.ignore, "prune.ignore")
    if TARGETS.get(cfg.measure.target).needs_calibration:
        run.require("calibration")  # the calibrate stage's: the int8 file pruning measures needs it
    key, parents = _prune_key(run)
    prune_id = run.artifact_id(PRUNED_STUDENT, key, parents)
    reused = None if force else run.manifest.reusable(PRUNED_STUDENT, prune_id, run.root)
    if reused:
        return _ship(run, reused)
    seed_everything(run.config.seed)
    session = _session(run, prune_id, student)
    shutil.rmtree(run.path(WORK_DIR), ignore_errors=True)
    if cfg.method == "magnitude":
        pruned, info = _magnitude(session, student)
    elif cfg.latency_budget_ms is not None:
        pruned, info = _budget_search(session, student)
    else:
        pruned, info = _structured(session, student)
    variants = _variants(session, student, pruned)
    shutil.rmtree(run.path(WORK_DIR), ignore_errors=True)
    record = _save(run, prune_id, pruned, info, variants)
    _log(prune_summary_lines(record)[0])
    return _ship(run, record)


def _ship(run: RunDir, record: ArtifactRecord) -> ArtifactRecord:
    """Record in the manifest which student the exports are built from: the pruned one when it ships."""
    run.manifest.shipped_student = PRUNED_STUDENT if record.info.get("shipped") else "student"
    run.save()
    return record


def _save(run: RunDir, prune_id: str, pruned: nn.Module, info: dict, variants: list[dict]) -> ArtifactRecord:
    cfg = run.config.prune
    student_info = run.require("student").info
    meta = {key: student_info[key] for key in STUDENT_META}
    meta |= {"kind": "pruned", "structure": structure_of(pruned)}
    path = run.path(PRUNED_PATH)
    if distributed.is_main():
        save_checkpoint(pruned, path, meta)
    distributed.barrier()
    shipped = info.get("search", {}).get("met", True)
    measure = cfg.measure
    runtime = FORMATS.get(TARGETS.get(measure.target).format).runtime_label
    return run.record(
        PRUNED_STUDENT,
        "prune",
        prune_id,
        path,
        parent="student",
        info={
            **meta,
            "parameters": count_parameters(pruned),
            "method": cfg.method,
            "settings": cfg.model_dump(),
            "shipped": shipped,
            "measured_on": {
                "target": measure.target,
                "runtime": runtime,
                "batch": measure.batch,
                "threads": measure.threads,
            },
            "variants": variants,
            "note": DENSE_NOTE if cfg.method == "magnitude" else None,
            **info,
        },
    )
