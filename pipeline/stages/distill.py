"""Stage 1: the teacher (loaded or trained), the student distilled from it, and optionally baseline students
trained from labels alone with the same budget (to measure the KD gain): ``distill.baseline_seeds`` of them, the
same split and budget with training seeds seed, seed + 1, … (``baseline``, ``baseline-2``, …)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from torch import nn

from pipeline import progress as view
from pipeline.config import ClassMap, LossSpec, StudentConfig, TrainConfig
from pipeline.errors import ConfigError, ModelError, first_line
from pipeline.io import sha256_file
from pipeline.manifest import BASELINE, baseline_name
from pipeline.measure.machine_load import training_threads
from pipeline.measure.runtimes import torch_threads_kept
from pipeline.rundir import RunDir
from pipeline.training import distributed
from pipeline.training.class_map import (
    class_map_info,
    class_map_key,
    outputs_to_build,
    resolve_class_map,
    restrict_outputs,
)
from pipeline.training.losses import Objective
from pipeline.training.models import (
    arch_fingerprint,
    build_model,
    count_parameters,
    forward_failure,
    is_program,
    load_checkpoint,
    load_program,
    outputs_record,
    pick_output,
    save_checkpoint,
    select_logits,
)
from pipeline.training.run_models import load_student, load_teacher
from pipeline.training.teacher_files import (
    adopt_teacher_file,
    file_format,
    file_parameters,
    looks_like_probabilities,
    source_digest,
)
from pipeline.training.train import TrainJob, fit, predict_logits, seed_everything

CE_ONLY = [LossSpec(name="ce")]
TEACHER_PATH = "checkpoints/teacher.pt"
STUDENT_PATH = "checkpoints/student.pt"
BUNDLED_TEACHER = Path(__file__).parents[1] / "assets" / "teacher-cnn-fashion-mnist.pt"
BUNDLED_TEACHER_NOTE = "bundled with edgepipe (pipeline/assets; made by `python bench/bundled_teacher.py`)"
SELF_REFERENCE_NOTE = "reference: the shipped model itself, no distillation"
KIND_BATCH = 8  # training images a student's output kind (logits or probabilities) is judged on


def _shape(run: RunDir) -> tuple[int, int]:
    return run.splits.input_shape[0], len(run.splits.classes)


def _example(run: RunDir) -> torch.Tensor:
    return torch.from_numpy(run.splits.normalize(run.splits.train.x[:2]))


def _output_key(role: str) -> str:
    return "teacher.output" if role == "teacher" else "student.output"


def _class_map(run: RunDir, role: str) -> ClassMap:
    """The class map configured for ``role``: the teacher's, else the student's (student and baseline)."""
    if role == "teacher":
        return run.config.teacher.class_map if run.config.teacher else None
    return run.config.student_model().class_map


def _outputs_to_build(run: RunDir, role: str, arch: str, arch_kwargs: dict, checkpoint: Path | None = None) -> int:
    """How many outputs ``arch`` is built with for ``role``: one per data class, or with a class map the model's
    own count (see :func:`pipeline.training.class_map.outputs_to_build`)."""
    channels, classes = _shape(run)
    where = "teacher" if role == "teacher" else "student"
    build = lambda count: build_model(arch, channels, count, arch_kwargs)  # noqa: E731
    return outputs_to_build(_class_map(run, role), classes, checkpoint, build, where)


def _check_outputs(model: nn.Module, run: RunDir, role: str, output: int | str = 0) -> tuple[nn.Module, dict | None]:
    """The model must take the data's input shape and give one logit per class, as its only output or as its
    output ``output``, in the data's class order or picked by the role's class map; returns the model answering
    with those logits alone (restricted to the map's outputs: see :func:`class_map_info`), and the manifest's
    record of its outputs (None for a model that returns one tensor)."""
    try:
        with torch.no_grad():
            result = model.eval()(_example(run))
    except Exception as e:
        raise forward_failure(f"the {role}'s forward fails on the data's input", tuple(_example(run).shape), e) from e
    logits = pick_output(result, output, _output_key(role))
    several = "" if logits is result else f", or {_output_key(role)} (the model returns several outputs)"
    if logits.ndim != 2:
        raise ModelError(
            f"the {role} gives outputs of shape {tuple(logits.shape)}, not (batch, classes)",
            "check the model's class count or the data source" + several,
        )
    where = "teacher" if role == "teacher" else "student"
    try:
        indices = resolve_class_map(_class_map(run, role), run.splits.classes, logits.shape[1], where)
    except ModelError as e:
        raise ModelError(str(e), (e.hint or "") + several) from None
    record = outputs_record(result, output)
    model = model if record is None else select_logits(model, output)
    return (model if indices is None else restrict_outputs(model, indices, logits.shape[1])), record


def teacher_source(run: RunDir) -> Path | None:
    """The teacher file to load (``checkpoint: auto`` resolved), or None when the pipeline trains the teacher."""
    cfg = run.config.teacher
    if cfg.checkpoint == "auto":
        bundled = cfg.arch == "teacher-cnn" and not cfg.arch_kwargs and run.config.data.source == "fashion-mnist"
        return BUNDLED_TEACHER if bundled else None
    return Path(cfg.checkpoint) if cfg.checkpoint else None


def _output_only_if_set(cfg: dict, output: int | str) -> dict:
    """A section's cache key with its ``output`` only when not the default (runs made before it keep their ids)."""
    return {**cfg, "output": output} if output != 0 else cfg


def _teacher_id(run: RunDir) -> str:
    cfg = run.config.teacher.model_dump(exclude={"output", "class_map", "threads"})
    checkpoint = teacher_source(run)
    if checkpoint:
        foreign = file_format(checkpoint)
        if not (checkpoint.is_file() or (foreign and checkpoint.is_dir())):
            raise ModelError(
                f"teacher checkpoint {checkpoint.absolute()} does not exist", "fix teacher.checkpoint in the config"
            )
        try:
            digest = source_digest(checkpoint)
        except OSError as e:
            raise ModelError(f"cannot read teacher checkpoint {checkpoint}: {e.strerror}", "check its mode") from e
        if foreign:
            cfg = {"format": foreign, "input": cfg["input"], "checkpoint_sha256": digest}
        else:
            cfg = {"arch": cfg["arch"], "arch_kwargs": cfg["arch_kwargs"], "checkpoint_sha256": digest}
    key = {
        "teacher": _output_only_if_set(cfg, run.config.teacher.output),
        "model": arch_fingerprint(run.config.teacher.arch),
        "data": run.config.data.model_dump(),
        "seed": run.config.seed,
        **({"class_map": mapped} if (mapped := class_map_key(run.config.teacher.class_map)) else {}),
    }
    return run.artifact_id("teacher", key, [])


def _train(
    run: RunDir,
    name: str,
    arch: str,
    arch_kwargs: dict,
    cfg: TrainConfig,
    losses: list[LossSpec],
    artifact_id: str,
    teacher: nn.Module | None = None,
    parent: str | None = None,
    output: int | str = 0,
    initial: Path | None = None,
    *,
    seed: int,
) -> nn.Module:
    """Build (or load from the state_dict checkpoint ``initial``), train, save and record one model (resuming from
    its progress checkpoint when one matches); ``seed`` draws its initial weights and its batches (recorded as
    ``info.train_seed``)."""
    channels, classes = _shape(run)
    seed_everything(seed)
    outputs_built = _outputs_to_build(run, name, arch, arch_kwargs, initial)
    start = (
        build_model(arch, channels, outputs_built, arch_kwargs)
        if initial is None
        else load_checkpoint(initial, arch, channels, outputs_built, arch_kwargs)
    )
    model, outputs = _check_outputs(start, run, name, output)
    objective = Objective(losses, model, teacher, _example(run))
    teacher_logits = None
    same_views = run.splits.fixed_train_inputs and not cfg.mixes  # else the teacher sees each mixed batch live
    if objective.needs_teacher and not objective.teacher_layers and same_views:
        with torch_threads_kept():  # the threads the training will take, for the same reason
            torch.set_num_threads(training_threads(cfg.threads, torch.get_num_threads())[0])
            teacher_logits = predict_logits(
                teacher, run.splits, run.splits.train, label="teacher logits", who="teacher"
            )
    progress_path = run.path(f"checkpoints/{name}.progress.pt")
    job = TrainJob(
        name=name,
        model=model,
        objective=objective,
        cfg=cfg,
        seed=seed,
        progress_path=progress_path,
        job_id=artifact_id,
        teacher=teacher,
        teacher_logits=teacher_logits,
    )
    summary = fit(job, run.splits)
    meta = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "in_channels": channels,
        "num_classes": classes,
        "kind": "state_dict",
    }
    path = run.path(f"checkpoints/{name}.pt")
    if distributed.is_main():
        save_checkpoint(model, path, meta)
    distributed.barrier()
    run.record(
        name,
        "distill",
        artifact_id,
        path,
        parent=parent,
        info={
            **meta,
            "parameters": count_parameters(model),
            **({"outputs": outputs} if outputs else {}),
            **class_map_info(model, run.splits.classes),
            "losses": [spec.model_dump() for spec in losses],
            **cfg.model_dump(include={"mixup", "cutmix"}),  # when set: off is left out of the dump
            **({"initialized_from": str(initial), "initialized_from_sha256": sha256_file(initial)} if initial else {}),
            "train_seed": seed,
            **summary,
        },
    )
    if distributed.is_main():
        progress_path.unlink(missing_ok=True)
    # Contiguous, as when loaded from its checkpoint: channels-last weights (from fit) give other float rounding,
    # so a student distilled from a just-trained teacher would differ from one distilled after a resume.
    return model.cpu().to(memory_format=torch.contiguous_format)


def _store_model(
    run: RunDir, model: nn.Module, kind: str, source: Path, path: Path, arch: str, arch_kwargs: dict
) -> dict:
    """Keep a loaded model in the run at ``path`` — a program file copied byte for byte, a state_dict model saved
    with its metadata — and return that metadata (arch, arch_kwargs, in_channels, num_classes, kind)."""
    channels, classes = _shape(run)
    meta = {
        "arch": arch if kind == "state_dict" else f"program:{source.name}",
        "arch_kwargs": arch_kwargs,
        "in_channels": channels,
        "num_classes": classes,
        "kind": kind,
    }
    if distributed.is_main():
        if kind == "program":
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path)
        else:
            save_checkpoint(model, path, meta)
    distributed.barrier()
    return meta


def ensure_teacher(run: RunDir, force: bool = False) -> nn.Module:
    """Load the configured teacher (checkpoint or program), or train one; reuse the run's when unchanged."""
    cfg = run.config.teacher
    teacher_id = _teacher_id(run)
    if not force and run.manifest.reusable("teacher", teacher_id, run.root):
        return load_teacher(run)
    source = teacher_source(run)
    if source is None:
        return _train(
            run, "teacher", cfg.arch, cfg.arch_kwargs, cfg, CE_ONLY, teacher_id, output=cfg.output, seed=run.config.seed
        )
    channels, classes = _shape(run)
    if file_format(source):
        return _adopt_file_teacher(run, source, teacher_id)
    if is_program(source):
        teacher, kind, path = load_program(source), "program", run.path(f"checkpoints/teacher{source.suffix or '.pt'}")
    else:
        outputs_built = _outputs_to_build(run, "teacher", cfg.arch, cfg.arch_kwargs, source)
        teacher = load_checkpoint(source, cfg.arch, channels, outputs_built, cfg.arch_kwargs)
        kind, path = "state_dict", run.path(TEACHER_PATH)
    teacher, outputs = _check_outputs(teacher, run, "teacher", cfg.output)
    meta = _store_model(run, teacher, kind, source, path, cfg.arch, cfg.arch_kwargs)
    run.record(
        "teacher",
        "distill",
        teacher_id,
        path,
        info={
            **meta,
            "parameters": count_parameters(teacher),
            **({"outputs": outputs} if outputs else {}),
            **class_map_info(teacher, run.splits.classes),
            "source": BUNDLED_TEACHER_NOTE if source == BUNDLED_TEACHER else str(source),
            "source_sha256": sha256_file(source),
        },
    )
    return teacher


def _adopt_file_teacher(run: RunDir, source: Path, teacher_id: str) -> nn.Module:
    """An ONNX, TFLite or Keras teacher: checked against the data, copied into the run, run in its own runtime."""
    channels, classes = _shape(run)
    folder = run.path("checkpoints")  # store_teacher_file's atomic write makes it
    mapped = bool(run.config.teacher.class_map)
    teacher = adopt_teacher_file(source, run.config.teacher.input, run.splits, run.config.data.source, folder, mapped)
    teacher, _ = _check_outputs(teacher, run, "teacher", run.config.teacher.output)
    interface = teacher.interface
    run.record(
        "teacher",
        "distill",
        teacher_id,
        teacher.path,
        info={
            "arch": f"{interface.format} file {source.name}",
            "in_channels": channels,
            "num_classes": classes,
            "kind": "file",
            "interface": interface.model_dump(),
            "parameters": file_parameters(teacher.path, interface),
            **class_map_info(teacher, run.splits.classes),
            "source": str(source),
            "source_sha256": source_digest(source),
        },
    )
    return teacher


def _given_model(run: RunDir, source: Path, spec: StudentConfig) -> tuple[nn.Module, str]:
    """The trained student at ``source`` (TorchScript / .pt2 program, or a state_dict into ``spec.arch``) and its
    kind; in eval mode, never trained here."""
    if not source.is_file():
        raise ModelError(
            f"student checkpoint {source.absolute()} does not exist", "fix student.checkpoint in the config"
        )
    if is_program(source):
        return load_program(source), "program"
    channels = _shape(run)[0]
    outputs_built = _outputs_to_build(run, "student", spec.arch, spec.arch_kwargs, source)
    return load_checkpoint(source, spec.arch, channels, outputs_built, spec.arch_kwargs), "state_dict"


def check_student(run: RunDir) -> tuple[nn.Module, dict | None, str, str]:
    """The configured student, built (or loaded from ``student.checkpoint``) and checked against the data before
    any training: (model answering with its logits, outputs record, kind, output kind: "logits" or
    "probabilities" — a softmax inside the model, see :func:`_output_kind`).

    Raises:
        ModelError: the architecture does not build or import, the checkpoint is missing or does not fit it, the
            model does not take the data's input or give one output per class, or a student to distil outputs
            probabilities.
        ConfigError: a program checkpoint is to be distilled (only a state_dict can be trained).
    """
    spec = run.config.student_model()
    source = Path(spec.checkpoint) if spec.checkpoint else None
    if source is None:
        channels = _shape(run)[0]
        outputs_built = _outputs_to_build(run, "student", spec.arch, spec.arch_kwargs)
        model, kind = build_model(spec.arch, channels, outputs_built, spec.arch_kwargs), "state_dict"
    else:
        model, kind = _given_model(run, source, spec)
    if kind == "program":
        _check_program(model, run, source)
    output_kind = _output_kind(model, run, spec.output)  # before _check_outputs restricts it to a class map's outputs
    model, outputs = _check_outputs(model, run, "student", spec.output)
    if output_kind == "probabilities" and run.config.distill is not None:
        raise ModelError(
            f"the student ({spec.arch}) outputs probabilities (every row of a first batch is ≥ 0 and sums to 1); "
            "remove the final softmax, it is applied by the loss",
            "distillation trains on logits; or set distill: null to ship a trained model with its softmax",
        )
    return model, outputs, kind, output_kind or "logits"


def _output_kind(model: nn.Module, run: RunDir, output: int | str) -> str | None:
    """What the model outputs on the first training images: "probabilities" (a softmax inside the model: every row
    ≥ 0 and summing to 1, as for teacher files) or "logits"; None when it does not run on them
    (:func:`_check_outputs` then says why)."""
    batch = torch.from_numpy(run.splits.normalize(run.splits.train.x[:KIND_BATCH]))
    try:
        with torch.no_grad():
            scores = pick_output(model.eval()(batch), output, "student.output")
    except Exception:
        return None
    rows = scores.detach().float().reshape(len(scores), -1).numpy()
    return "probabilities" if looks_like_probabilities(rows) else "logits"


def _check_program(model: nn.Module, run: RunDir, source: Path) -> None:
    """A program student ships as-is: it must take any batch size, and TorchScript needs the TorchScript exporter."""
    if run.config.distill is not None:
        raise ConfigError(
            f"student.checkpoint {source} is a TorchScript / torch.export program, which edgepipe cannot fine-tune",
            "give a state_dict checkpoint with student.arch, or set distill: null to ship it as trained",
        )
    if source.suffix != ".pt2" and run.config.export.targets and run.config.export.exporter == "dynamo":
        raise ConfigError(
            f"student.checkpoint {source} is a TorchScript file, which the dynamo ONNX exporter cannot read",
            "set export.exporter: torchscript, or give the model as a torch.export .pt2 or a state_dict",
        )
    batch = torch.from_numpy(run.splits.normalize(run.splits.train.x[:3]))
    try:
        with torch.no_grad():
            model(batch)
    except Exception as e:
        raise _program_input_error(source, e, tuple(batch.shape)) from e


def _program_input_error(source: Path, error: Exception, shape: tuple[int, ...]) -> ModelError:
    """Why a program refused a data batch of ``shape`` (N, C, H, W), from its guard (torch.export: ``x.size()[d]
    == n``) or its convolution's complaint (TorchScript: ``to have n channels, but got m``)."""
    text = str(error)
    guard = re.search(r"size\(\)\[(\d+)\] == (\d+)", text)
    conv = re.search(r"to have (\d+) channels, but got (\d+) channels", text)
    dim, expected = (int(guard[1]), int(guard[2])) if guard else (1, int(conv[1])) if conv else (None, None)
    if dim == 0:
        return ModelError(
            f"student program {source} does not take a batch of {shape[0]}: {first_line(error)}",
            "export it with a dynamic batch: torch.export.export(model, (x,), dynamic_shapes=({0: Dim('batch')},))",
        )
    if dim == 1:
        convert = {1: "grayscale", 3: "RGB"}.get(expected)
        return ModelError(
            f"student program {source} takes {expected} input channels, the data has {shape[1]}",
            (f"set data.channels: {expected} (every image converted to {convert}), or " if convert else "")
            + f"give a model made for {shape[1]} channels",
        )
    if dim in (2, 3):
        side = "height" if dim == 2 else "width"
        return ModelError(
            f"student program {source} takes inputs of {side} {expected}, the data's is {shape[dim]}",
            "set data.image_size to the model's input [height, width], or export it with a dynamic height and width",
        )
    return ModelError(
        f"student program {source} does not run on a data batch {shape}: {first_line(error)}",
        "check the model's expected input (channels, height, width) against the data's",
    )


def _given_key(run: RunDir, spec: StudentConfig, digest: str) -> dict:
    return {
        "student": {**spec.model_dump(mode="json", exclude={"checkpoint", "class_map"}), "checkpoint_sha256": digest},
        **({"class_map": mapped} if (mapped := class_map_key(spec.class_map)) else {}),
        "model": arch_fingerprint(spec.arch),
        "data": run.config.data.model_dump(),
    }


def ship_given_student(run: RunDir, force: bool = False) -> nn.Module:
    """``distill: null``: the trained student, checked, saved into the run as ``student`` exactly as given (never
    in training mode, its BatchNorm statistics untouched) and recorded with its source and sha256."""
    model, outputs, kind, output_kind = check_student(run)
    spec = run.config.student_model()
    source = Path(spec.checkpoint)
    digest = sha256_file(source)
    student_id = run.artifact_id("student", _given_key(run, spec, digest), [])
    if not force and run.manifest.reusable("student", student_id, run.root):
        return load_student(run)
    path = run.path(STUDENT_PATH if kind == "state_dict" else f"checkpoints/student{source.suffix or '.pt'}")
    meta = _store_model(run, model, kind, source, path, spec.arch, spec.arch_kwargs)
    run.record(
        "student",
        "distill",
        student_id,
        path,
        info={
            **meta,
            "given": True,
            "output_kind": output_kind,
            "parameters": count_parameters(model),
            **class_map_info(model, run.splits.classes),
            **({"outputs": outputs} if outputs else {}),
            "source": str(source),
            "source_sha256": digest,
        },
    )
    return model


def _self_reference(run: RunDir) -> None:
    """No teacher configured with ``distill: null``: the ``teacher`` record is the shipped student itself, so every
    comparison (agreement, drop vs teacher, QAT-KD) is against exactly the weights that ship."""
    student = run.manifest.artifacts["student"]
    teacher_id = run.artifact_id("teacher", {"same_model_as": "student"}, [student.id])
    if run.manifest.reusable("teacher", teacher_id, run.root):
        return
    info = {key: value for key, value in student.info.items() if key != "given"}
    run.record(
        "teacher",
        "distill",
        teacher_id,
        run.path(student.path),
        parent="student",
        info={**info, "same_model_as": "student", "reference": SELF_REFERENCE_NOTE},
    )


def run_distill(run: RunDir, force: bool = False, baseline: bool | None = None) -> nn.Module:
    """Distil the student from the teacher; with ``baseline`` (default: ``distill.baseline``), also train it from
    labels alone, ``distill.baseline_seeds`` times (see :func:`_train_baselines`). With ``distill:
    null``, ship the given student instead (its reference: the configured teacher, else the student itself).

    Every model is built or loaded and checked against the data before any training starts. Records which student
    ships (``manifest.shipped_student``): this one when the run does not prune; when it prunes, the prune stage
    decides (again, for a new student)."""
    before = run.manifest.artifacts.get("student")
    student = _distill_or_ship(run, force, baseline)
    if run.config.prune is None:
        run.manifest.shipped_student = "student"
    elif before is None or before.id != run.manifest.artifacts["student"].id:
        run.manifest.shipped_student = None
    run.save()
    return student


def _distill_or_ship(run: RunDir, force: bool, baseline: bool | None) -> nn.Module:
    cfg = run.config.distill
    if cfg is None:
        if baseline:
            raise ConfigError("a baseline student needs distillation; this run ships a trained model (distill: null)")
        student = ship_given_student(run, force)
        if run.config.teacher is None:
            _self_reference(run)
        else:
            ensure_teacher(run, force)
        return student
    spec = run.config.student_model()
    view.status("checking the student against the data")
    check_student(run)  # fail fast: before the teacher trains
    initial = Path(spec.checkpoint) if spec.checkpoint else None
    view.status("teacher")
    teacher = ensure_teacher(run, force)
    distill_cfg = {
        # threads shape the bytes, not what is trained; the baselines are keyed on their own
        **cfg.model_dump(exclude={"baseline", "baseline_seeds", "output", "threads"}),
        "arch": spec.arch,
        "arch_kwargs": spec.arch_kwargs,
    }
    key = {
        "distill": _output_only_if_set(distill_cfg, spec.output),
        "model": arch_fingerprint(spec.arch),
        "data": run.config.data.model_dump(),
        "seed": run.config.seed,
        **({"initial_sha256": sha256_file(initial)} if initial else {}),
        **({"class_map": mapped} if (mapped := class_map_key(spec.class_map)) else {}),
    }
    student_id = run.artifact_id("student", key, [run.manifest.artifacts["teacher"].id])
    train_student = (spec.arch, spec.arch_kwargs, cfg)
    if force or not run.manifest.reusable("student", student_id, run.root):
        student = _train(
            run,
            "student",
            *train_student,
            cfg.losses,
            student_id,
            teacher,
            "teacher",
            spec.output,
            initial,
            seed=run.config.seed,
        )
    else:
        student = load_student(run)
    if cfg.baseline if baseline is None else baseline:
        baseline_cfg = {k: v for k, v in distill_cfg.items() if k != "losses"}
        baseline_key = {**key, "distill": _output_only_if_set(baseline_cfg, spec.output)}
        _train_baselines(run, baseline_key, train_student, spec.output, initial, force)
    return student


def _train_baselines(
    run: RunDir, key: dict, train_student: tuple, output: int | str, initial: Path | None, force: bool
) -> None:
    """Train (or reuse) the ``distill.baseline_seeds`` labels-only students: baseline ``index`` with training seed
    ``seed + index`` and its own id (the first keeps the id of the single baseline of earlier runs, so they reuse
    it); records of baselines beyond the count (from a larger count before) are dropped from the manifest."""
    count = run.config.distill.baseline_seeds
    for index in range(count):
        name, seed = baseline_name(index), run.config.seed + index
        baseline_id = run.artifact_id(BASELINE, {**key, "train_seed": seed} if index else key, [])
        if force or not run.manifest.reusable(name, baseline_id, run.root):
            _train(run, name, *train_student, CE_ONLY, baseline_id, output=output, initial=initial, seed=seed)
    while baseline_name(count) in run.manifest.artifacts:
        del run.manifest.artifacts[baseline_name(count)]
        count += 1
