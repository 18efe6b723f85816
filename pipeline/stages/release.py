"""`edgepipe release`: chosen artifacts of a benched run as a bundle that says how to feed each file.

The bundle holds each model file with its bundle entry embedded (keys ``edgepipe`` and ``labels``, where its
format keeps metadata: ONNX ``metadata_props``, TFLite metadata), ``labels.txt``, ``manifest.json`` (a
``ReleaseManifest``) and ``README.md``. It is built in a temporary directory beside ``--out`` and renamed into
place, so a failure leaves nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from pipeline.errors import ConfigError, ExportError, GateError, RunStateError
from pipeline.formats import FORMATS
from pipeline.io import cannot_write, sha256_file, write_errors_name
from pipeline.manifest import QAT_SUFFIX, ArtifactRecord, Measurement
from pipeline.model_metadata import EMBEDDED_KEY, EMBEDDED_LABELS_KEY
from pipeline.release_manifest import LABELS_FILE, BundledArtifact, OutputMeaning, ReleaseManifest, SourceRun
from pipeline.report.gate import WARNINGS_HINT, evaluate_gate, file_over_budget, raise_if_failed
from pipeline.report.release_readme import render_readme
from pipeline.report.sanity import sanity_warnings
from pipeline.rundir import RunDir
from targets import TARGETS


def build_release(
    run: RunDir, names: list[str], out: Path, force: bool = False, allow_over_budget: bool = False
) -> ReleaseManifest:
    """Write the bundle of artifacts ``names`` of ``run`` to ``out`` (a non-empty ``out`` only with ``force``).

    Raises GateError for an artifact over its accuracy budget unless ``allow_over_budget`` (its entry then says so)
    and when a shipped artifact breaks the accuracy gate or has a sanity warning that fails it; nothing is written
    then."""
    if not names:
        raise ConfigError("release needs at least one --target", f"exported: {', '.join(_exported(run))}")
    records = [_shippable(run, name) for name in dict.fromkeys(names)]
    if not allow_over_budget:
        _refuse_over_budget(run, records)
    _check_out(run, out, force)
    shipped = {record.name for record in records}
    raise_if_failed(evaluate_gate(run.manifest, run.config.gate, shipped, budget=False))  # the budget: just above
    _refuse_warnings(run, shipped)
    measured = {record.name: _measurements(run, record) for record in records}
    labels = run.manifest.data.classes
    with _staged_dir(out) as stage:
        artifacts = {record.name: _bundle_file(run, record, measured[record.name], labels, stage) for record in records}
        manifest = ReleaseManifest(source_run=_source_run(run), labels=labels, artifacts=artifacts)
        (stage / LABELS_FILE).write_text(_labels_text(labels))
        (stage / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
        (stage / "README.md").write_text(render_readme(manifest))
    return manifest


def _exported(run: RunDir) -> list[str]:
    """The run's exported artifacts, reference builds left out."""
    return [
        name
        for name, record in run.manifest.artifacts.items()
        if record.stage == "export" and not (name in TARGETS and TARGETS.get(name).reference)
    ]


def _refuse_warnings(run: RunDir, shipped: set[str]) -> None:
    """GateError naming the sanity warnings that fail the gate and concern what ships: an artifact of ``shipped`` at
    chance level, or the student every artifact is built from (teacher-not-better, kd-below-baseline)."""
    failing = [
        w
        for w in sanity_warnings(run.manifest, run.config.gate)
        if w.fails_gate and (w.kind != "chance-level" or w.artifact in shipped)
    ]
    if failing:
        kinds = ", ".join(dict.fromkeys(w.kind for w in failing))
        raise GateError(
            f"sanity warnings fail the gate: {'; '.join(str(w) for w in failing)}",
            f"{WARNINGS_HINT.format(kinds=kinds)}; no bundle written",
        )


def _refuse_over_budget(run: RunDir, records: list[ArtifactRecord]) -> None:
    """GateError naming every artifact of ``records`` over its accuracy budget, with why."""
    over = {record.name: file_over_budget(run.manifest, record.name) for record in records}
    over = {name: why for name, why in over.items() if why is not None}
    if not over:
        return
    twins = [name + QAT_SUFFIX for name in over if name + QAT_SUFFIX in run.manifest.artifacts]
    within = [twin for twin in twins if file_over_budget(run.manifest, twin) is None]
    alternative = f"ship {', '.join(within)} (within budget) instead, or " if within else ""
    raise GateError(
        "over its accuracy budget, not released: " + "; ".join(f"{name} ({why})" for name, why in over.items()),
        f"{alternative}pass --allow-over-budget to ship it anyway (its bundle entry says so)",
    )


def _shippable(run: RunDir, name: str) -> ArtifactRecord:
    """The export record of ``name``, its file intact; unknown names list the exported ones, a target that failed
    to build says why."""
    record = run.manifest.artifacts.get(name)
    failure = next((f for f in run.manifest.failures if f.target == name), None)
    if failure is not None and (record is None or record.stage != "export"):
        log = f"; log: {run.path(failure.log)}" if failure.log else ""
        again = f"`edgepipe export {run.root} --target {name}`"
        raise ExportError(
            f"{name} was not built in {run.root}: {failure.reason}{log}",
            failure.hint or f"the report's FAILED block says why; fix it and run {again}",
        )
    if record is None or record.stage != "export":
        if name not in TARGETS:
            exported = _exported(run)
            close = difflib.get_close_matches(name, exported, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "`edgepipe targets` lists the targets"
            raise ConfigError(f"unknown artifact {name!r}; exported in {run.root}: {', '.join(exported)}", hint)
        raise RunStateError(f"{run.root} has no exported {name}", run.how_to_make(name))
    if name in TARGETS and TARGETS.get(name).reference:
        raise ConfigError(f"{name} is a reference build for the report, not for shipping", "pick another --target")
    path = run.path(record.path)
    if not path.is_file() or sha256_file(path) != record.sha256:
        raise RunStateError(f"{path} is missing or changed since it was exported", run.how_to_make(name))
    if len(record.inputs) != 1 or len(record.outputs) != 1:
        raise RunStateError(
            f"{name} records {len(record.inputs)} inputs and {len(record.outputs)} outputs; need 1 each"
        )
    return record


def _measurements(run: RunDir, record: ArtifactRecord) -> list[Measurement]:
    """The bench rows of ``record`` on its own runtime (not the tf2onnx conversion of a TFLite file)."""
    hint = f"run `edgepipe bench {run.root}` first"
    if not run.manifest.measurements:
        raise RunStateError(f"{run.root} has no measurements: the bench stage has not run", hint)
    runtime = FORMATS.get(record.info["format"]).runtime
    rows = [m for m in run.manifest.measurements if m.artifact == record.name and m.runtime == runtime]
    if not rows:
        reasons = [s.reason for s in run.manifest.skipped if s.artifact == record.name and s.runtime == runtime]
        why = f" (skipped: {reasons[0]})" if reasons else ""
        raise RunStateError(f"{record.name} was not measured on {runtime} in {run.root}{why}", hint)
    stale = [m for m in rows if m.sha256 not in (None, record.sha256)]
    if stale:
        raise RunStateError(
            f"the figures of {record.name} were measured on another file (sha256 {stale[0].sha256[:12]}…, the "
            f"artifact is now {record.sha256[:12]}…): it was rebuilt after bench",
            hint,
        )
    return rows


def _check_out(run: RunDir, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory", "choose another --out")
    resolved, run_root = out.resolve(), run.root.resolve()
    if resolved == run_root or resolved in run_root.parents or run_root in resolved.parents:
        raise ConfigError(f"--out {out} overlaps the run directory {run.root}", "write the bundle outside the run")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} exists and is not empty", "pass --force to replace it, or choose another --out")


@contextlib.contextmanager
def _staged_dir(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out``, renamed onto it when the block succeeds (an old ``out`` is replaced)
    and removed, with everything in it, when the block fails."""
    stage = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
    except OSError as e:
        raise cannot_write(out, e) from e
    try:
        with write_errors_name(out):
            yield stage
        _replace_dir(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` onto ``out``; a non-empty ``out`` is moved aside first and restored if that fails."""
    if not out.is_dir() or not any(out.iterdir()):
        os.replace(new, out)  # rename(2) replaces a missing or empty directory in one step
        return
    old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _bundle_file(
    run: RunDir, record: ArtifactRecord, measurements: list[Measurement], labels: list[str], stage: Path
) -> BundledArtifact:
    """Write ``record``'s file into ``stage`` with its entry embedded; return the entry."""
    source = run.path(record.path)
    output = record.outputs[0]
    int8_out = output.scale is not None
    over_budget = file_over_budget(run.manifest, record.name)  # shipped only with --allow-over-budget
    class_map = run.manifest.lineage_info(record.name, "class_map")
    source_outputs = run.manifest.lineage_info(record.name, "source_outputs") if class_map else None
    carried = f" (outputs {list(class_map.values())} of the source model's {source_outputs})" if class_map else ""
    kind = run.manifest.lineage_info(record.name, "output_kind") or "logits"  # a given student may end in a softmax
    entry = BundledArtifact(
        name=record.name,
        file=source.name,
        format=record.info["format"],
        precision=record.info["precision"],
        bytes=0,
        sha256="",
        source_sha256=record.sha256,
        input=record.inputs[0],
        output=output,
        preprocessing=run.manifest.data.preprocessing,
        output_meaning=OutputMeaning(
            kind=kind,
            softmax_applied=kind == "probabilities",
            formula=(f"{kind} = scale * (q - zero_point); " if int8_out else "")
            + f"class = labels[argmax({kind})] over the {len(labels)} lines of {LABELS_FILE}{carried}",
            class_map=class_map,
            source_outputs=source_outputs,
        ),
        measurements=measurements,
        versions=_versions(run.manifest.environment),
        over_budget=over_budget,
        allowed_over_budget=over_budget is not None,
    )
    dest = stage / entry.file
    entries = {EMBEDDED_KEY: entry.embedded_json(), EMBEDDED_LABELS_KEY: _labels_text(labels)}
    _embed(record.info["format"], source, dest, entries)
    return entry.model_copy(update={"bytes": dest.stat().st_size, "sha256": sha256_file(dest)})


def _embed(format_name: str, source: Path, dest: Path, entries: dict[str, str]) -> None:
    """Write ``source`` to ``dest`` with ``entries`` in its metadata, as its format keeps them.

    Raises:
        ExportError: the format cannot carry metadata (a bundle file says how to feed itself)."""
    fmt = FORMATS.get(format_name)
    if fmt.embed_metadata is None:
        raise ExportError(f"{source.name}: cannot embed metadata in a {fmt.label} file", "release another target")
    fmt.embed_metadata(source, dest, entries)


def _versions(environment: dict) -> dict[str, str]:
    versions = {key: environment[key] for key in ("edgepipe", "python") if key in environment}
    return {**versions, **environment.get("packages", {})}


def _source_run(run: RunDir) -> SourceRun:
    data = run.manifest.data
    return SourceRun(created=run.manifest.created, data_source=data.source, seed=data.seed, test_images=data.test)


def _labels_text(labels: list[str]) -> str:
    return "".join(f"{label}\n" for label in labels)
