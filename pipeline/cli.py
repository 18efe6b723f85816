"""The `edgepipe` command: `run` does every stage; each other command does one stage over a run directory."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
from typer.core import TyperGroup

from pipeline.errors import ConfigError, EdgepipeError
from pipeline.measure.openmp import bound_openmp_spin

try:  # typer vendors click from 0.2x on
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError


class OneLineUsageErrors(TyperGroup):
    """Usage errors (unknown option, missing argument, invalid value) as one `edgepipe: error:` line, exit 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:  # typer has printed the help already
            sys.exit(e.exit_code)
        except ClickException as e:
            command = e.ctx.command_path if getattr(e, "ctx", None) else "edgepipe"
            message = " ".join(e.format_message().split())
            typer.echo(f"edgepipe: error: {message} (hint: see `{command} --help`)", err=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill a PyTorch teacher, or take a trained model, into small, verified ONNX and TFLite artifacts.",
)

STAGES = ["distill", "calibrate", "prune", "export", "qat", "bench", "report"]
INTERRUPTED_EXIT = 130


def reports_errors(command: Callable) -> Callable:
    """Turn edgepipe errors into one line on stderr and the error's exit code (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgepipeError as e:
            typer.echo(f"edgepipe: error: {e.one_line()}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo(
                "edgepipe: interrupted; finished artifacts are kept, re-run the same command to resume", err=True
            )
            raise typer.Exit(INTERRUPTED_EXIT) from None

    return wrapper


def _quiet_frameworks() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _open(run_dir: Path):
    from pipeline.rundir import RunDir

    _quiet_frameworks()
    return RunDir.open(run_dir)


class ProgressMode(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"


QuietOption = typer.Option(
    False, "--quiet", "-q", help="No progress view: only warnings, errors and the command's result lines."
)
ProgressOption = typer.Option(
    ProgressMode.auto,
    "--progress",
    help="auto: a live view on a terminal, one line per event otherwise; rich: the live view; plain: one line per "
    "event (stage started/done, epoch, target, bench row), no colours or redrawing: CI logs.",
)


@contextlib.contextmanager
def _progress_view(command: str, root: Path, progress_mode: ProgressMode, quiet: bool) -> Iterator:
    """The command's progress view (its first line said at once, before any heavy import), with everything else
    the process prints — libraries' C and Python output, logging — appended to ``root``/logs/run.log. Yields the
    view (pipeline.progress.View).

    An existing ``root`` is locked for writing right after the first line (rank 0 of torchrun only), so a second
    writer is refused at once, before any stage starts."""
    from pipeline import progress
    from pipeline.converter_log import captured_run_output
    from pipeline.run_lock import lock_run

    with progress.view(progress.choose_mode(progress_mode.value, quiet)) as view:
        view.header(f"edgepipe {command} → {root}")
        if root.is_dir() and os.environ.get("RANK", "0") == "0":
            lock_run(root)  # held for the process's life; RunDir takes it again (re-entrant)
        with captured_run_output(root, f"edgepipe {command}") as log, view.copying_to(log):
            yield view


RunDirArg = typer.Argument(..., help="A run directory made by `edgepipe run`.", file_okay=False)
VERSION_TOOLS = ("torch", "onnxruntime", "tensorflow")


def version_line() -> str:
    """``edgepipe X.Y.Z (python …, torch …, onnxruntime …, tensorflow …)`` from package metadata (nothing imported:
    instant)."""
    import platform

    from pipeline import __version__
    from pipeline.environment import tool_version

    tools = ", ".join(f"{tool} {tool_version(tool) or 'not installed'}" for tool in VERSION_TOOLS)
    return f"edgepipe {__version__} (python {platform.python_version()}, {tools})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the versions and exit."
    ),
) -> None:
    """Distill a PyTorch teacher, or take a trained model, into small, verified ONNX and TFLite artifacts."""


@app.command()
@reports_errors
def run(
    config: Optional[Path] = typer.Argument(None, help="YAML config; the embedded default when omitted."),
    out: Path = typer.Option(
        Path("runs/default"), "--out", "-o", help="Run directory to write (resumes if it exists)."
    ),
    data: Optional[str] = typer.Option(None, help="Override data.source: fashion-mnist, digits, or a path."),
    force: list[str] = typer.Option([], help=f"Redo a stage even if cached: {', '.join(STAGES)}."),
    quiet: bool = QuietOption,
    progress_mode: ProgressMode = ProgressOption,
) -> None:
    """Run every stage: distill → calibrate → export → bench → report (with `distill: null`, the trained
    `student.checkpoint` is shipped as-is instead of distilled).

    Progress: the stages with the current one's bars, elapsed time and an estimated total; what libraries print goes
    to OUT/logs/run.log. The report is always written; then exit 5 when a target failed to build (the others are
    built), else 8 when an artifact is over its accuracy budget or the accuracy gate failed."""
    unknown = [stage for stage in force if stage not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r} for --force; valid: {', '.join(STAGES)}")
    _quiet_frameworks()
    overrides = {"data.source": data} if data else {}
    with _progress_view("run", out, progress_mode, quiet):
        from pipeline.config_load import load_config

        run_config = load_config(config, overrides, absolute=True)  # a config error shows before torch is imported
        from pipeline.run import run_pipeline

        run_dir = run_pipeline(run_config, out, set(force))
    typer.echo(f"edgepipe: wrote {run_dir / 'report.md'}, {run_dir / 'report.html'} and {run_dir / 'manifest.json'}")


@app.command()
@reports_errors
def distill(
    run_dir: Path = RunDirArg,
    force: bool = typer.Option(False, help="Retrain even if cached (an interrupted training resumes without it)."),
    baseline: bool = typer.Option(
        False, help="Also train the student from labels alone, same budget (KD gain), distill.baseline_seeds times."
    ),
    config: Optional[Path] = typer.Option(None, help="Start RUN_DIR from this YAML config (default: open RUN_DIR)."),
    quiet: bool = QuietOption,
    progress_mode: ProgressMode = ProgressOption,
) -> None:
    """Train (or load) the teacher and distil the student; with `distill: null`, check and take in the trained
    student instead.

    Under `torchrun --nproc-per-node N -m pipeline distill RUN_DIR` it trains with DistributedDataParallel (only
    rank 0 shows progress).
    """
    rank_0 = os.environ.get("RANK", "0") == "0"  # torchrun's rank, known before torch is imported
    with _progress_view("distill", run_dir, progress_mode, quiet or not rank_0) as view, view.stage("distill"):
        from pipeline.config_load import load_config
        from pipeline.rundir import RunDir
        from pipeline.stages.distill import run_distill
        from pipeline.training import distributed

        distributed.setup_from_env()
        try:
            _quiet_frameworks()
            run = RunDir.create(run_dir, load_config(config, absolute=True)) if config else _open(run_dir)
            run_distill(run, force, baseline or None)
        finally:
            distributed.teardown()


@app.command()
@reports_errors
def prune(
    run_dir: Path = RunDirArg,
    force: bool = typer.Option(False, help="Prune again even if cached."),
    quiet: bool = QuietOption,
    progress_mode: ProgressMode = ProgressOption,
) -> None:
    """Prune the distilled student as the run's `prune:` section says and KD fine-tune it from the teacher."""
    with _progress_view("prune", run_dir, progress_mode, quiet) as view:
        from pipeline.progress import Stage
        from pipeline.report.prune import prune_summary_lines
        from pipeline.run import calibrates
        from pipeline.stages.calibrate import run_calibrate
        from pipeline.stages.prune import run_prune

        run = _open(run_dir)
        measured_int8 = run.config.prune is not None and calibrates(run.config, [run.config.prune.measure.target])
        view.plan([Stage("calibrate", quick=True)] * measured_int8 + [Stage("prune")])
        if measured_int8:  # the int8 file pruning measures needs the calibration set
            with view.stage("calibrate"):
                run_calibrate(run)
        with view.stage("prune"):
            record = run_prune(run, force)
    for line in prune_summary_lines(record):
        typer.echo(line)


@app.command()
@reports_errors
def calibrate(
    run_dir: Path = RunDirArg,
    force: bool = typer.Option(False, help="Draw again even if cached."),
    quiet: bool = QuietOption,
    progress_mode: ProgressMode = ProgressOption,
) -> None:
    """Draw the calibration set from the training split (the calibrate stage alone; `quantize` also builds the int8
    targets from it)."""
    with _progress_view("calibrate", run_dir, progress_mode, quiet) as view, view.stage("calibrate"):
        from pipeline.stages.calibrate import CALIBRATION_PATH, run_calibrate

        run = _open(run_dir)
        calibration = run_calibrate(run, force)
    selection = run.config.calibration.selection
    typer.echo(f"calibration: {len(calibration)} training images ({selection}) in {run.path(CALIBRATION_PATH)}")


@app.command()
@reports_errors
def quantize(
    run_dir: Path = RunDirArg,
    force: bool = typer.Option(False, help="Redraw and requantize."),
    quiet: bool = QuietOption,
    progress_mode: ProgressMode = ProgressOption,
) -> None:
    """Draw the calibration set and build the int8 targets (static post-training quantization): the calibrate,
    export and qat stages for the int8 targets."""
    with _progress_view("quantize", run_dir, progress_mode, quiet) as view:
        from pipeline.progress import Stage, plural
        from pipeline.run import qat_stage, trains_qat
        from pipeline.stages.calibrate import run_calibrate
        from pipeline.stages.export import run_export
        from pipeline.stages.qat import run_qat
        from targets import TARGETS

        run = _open(run_dir)
        int8 = [name for name in run.config.export.targets if TARGETS.get(name).needs_calibration]
        if not int8:
            raise ConfigError(
                f"{run.root / 'config.yaml'} names no int8 target in export.targets: nothing to quantize",
                f"add onnx-int8 or tflite-int8 to export.targets, or build another with `edgepipe export {run.root}`",
            )
        qat = trains_qat(run.config, int8)
        view.plan(
            [Stage("calibrate", quick=True), Stage("export", plural(len(int8), "int8 target"))]
            + [qat_stage(run.config)] * qat
        )
        with view.stage("calibrate"):
            run_calibrate(run, force)
        with view.stage("export"):
            run_export(run, int8, set(int8) if force else set())
        if qat:
            with view.stage("qat"):
                run_qat(run, int8, set(int8) if force else set())
    _raise_if_export_failed(run)


def _raise_if_export_failed(run) -> None:
    """Exit 5 when a target of the run failed to build (the others were built), else 8 when one is over budget."""
    from pipeline.report.gate import raise_if_run_failed

    raise_if_run_failed(run.manifest, run.root, gate=False)  # the gate needs bench figures: `report` checks it


@app.command()
@reports_errors
def export(
    run_dir: Path = RunDirArg,
    target: list[str] = typer.Option([], "--target", "-t", help="Target to (re)build; all configured when omitted."),
    quiet: bool = QuietOption,
    progress_mode: ProgressMode = ProgressOption,
) -> None:
    """Export targets; a named --target is rebuilt, the others it needs are reused. A target that fails does not
    stop the others: exit 5 after building them (8 when an artifact is over its accuracy budget)."""
    from targets import TARGETS

    for name in target:
        TARGETS.get(name)
    with _progress_view("export", run_dir, progress_mode, quiet) as view:
        from pipeline.progress import Stage, plural
        from pipeline.run import qat_stage, trains_qat
        from pipeline.stages.calibrate import run_calibrate
        from pipeline.stages.export import run_export
        from pipeline.stages.qat import run_qat

        run = _open(run_dir)
        names = target or run.config.export.targets
        calibrates = any(TARGETS.get(name).needs_calibration for name in names)
        qat = trains_qat(run.config, names)
        export_stage = Stage("export", plural(len(names), "target"))
        view.plan([Stage("calibrate", quick=True)] * calibrates + [export_stage] + [qat_stage(run.config)] * qat)
        if calibrates:
            with view.stage("calibrate"):
                run_calibrate(run)
        with view.stage("export"):
            records = run_export(run, target or None, set(target))
        if qat:
            with view.stage("qat"):  # a named target is rebuilt; the QAT-KD student is not retrained for it
                records += run_qat(run, target or None)
    for record in records:
        typer.echo(f"{record.name}: {record.path} ({record.bytes} bytes, sha256 {record.sha256[:12]})")
    _raise_if_export_failed(run)


@app.command()
@reports_errors
def bench(
    target: Path = typer.Argument(..., help="A run directory, or an .onnx/.tflite file to measure with --data."),
    data: Optional[str] = typer.Option(None, help="With a file: fashion-mnist, digits, or a path (npz, IDX, images)."),
    mean: Optional[str] = typer.Option(
        None, help="With a file: per-channel mean of pixel/255, e.g. 0.5 or 0.48,0.46,0.41."
    ),
    std: Optional[str] = typer.Option(None, help="With a file: per-channel std of pixel/255 (default: train split's)."),
    threads: list[str] = typer.Option(
        [], help="Intra-op thread count to time (repeat; 'all' = the cores this process may use)."
    ),
    batch: list[int] = typer.Option(
        [], help="Batch size to time (repeat; 1 is always timed; a file with a fixed batch size is timed at it only)."
    ),
    resize: bool = typer.Option(
        False, help="With a file: bring data of another size or channel count to the model's (else refused)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="With a file: write the measurement as JSON here."),
    quiet: bool = QuietOption,
    progress_mode: ProgressMode = ProgressOption,
) -> None:
    """Measure accuracy, latency and footprint of every model of a run, or of any ONNX/TFLite file.

    With a file, its test split is fed as edgepipe recorded for the file (else as the data is) and normalized with
    --mean/--std, else the recorded mean/std, else the training split's; data of another size or channel count than
    the model's is refused unless --resize.
    """
    from pipeline.formats import format_for_suffix

    if target.is_dir() or (data is None and format_for_suffix(target.suffix) is None):
        if data or mean or std or threads or batch or json_out or resize:
            raise ConfigError("a run directory is measured as its config says", "change bench: in RUN_DIR/config.yaml")
        with _progress_view("bench", target, progress_mode, quiet) as view, view.stage("bench"):
            from pipeline.report.sanity import record_warnings
            from pipeline.stages.bench import run_bench

            run = _open(target)
            rows = run_bench(run)
            record_warnings(run)  # said now; the report shows them too
        typer.echo(f"edgepipe: measured {len(rows)} rows into {target / 'manifest.json'}")
        return
    _quiet_frameworks()
    if data is None:
        raise ConfigError(f"{target}: a model file needs --data", "e.g. --data fashion-mnist or --data path/to/images")
    data_config, bench_config = _file_bench_config(data, mean, std, threads, batch)  # before the heavy imports
    from pipeline.converter_log import captured_output
    from pipeline.measure.file_bench import bench_file, render_measurement

    with captured_output(None):  # runtimes' banners (TFLite's XNNPACK line) from C: no run directory to log them in
        result = bench_file(target, data_config, bench_config, resize=resize)
    for warning in result.warnings:
        typer.echo(f"edgepipe: warning: {warning}", err=True)
    typer.echo(render_measurement(result))
    if json_out:
        from pipeline.io import write_text_atomic

        write_text_atomic(json_out, result.measurement.model_dump_json(indent=2) + "\n")


def _floats(text: str | None) -> list[str] | None:
    return text.split(",") if text else None


def _file_bench_config(data: str, mean: str | None, std: str | None, threads: list[str], batch: list[int]):
    """The data and bench sections of a config built from `edgepipe bench FILE` options (validated alike)."""
    from pipeline.config_load import parse_config

    bench = {"threads": threads} if threads else {}
    config = parse_config(
        {
            "data": {"source": data, "mean": _floats(mean), "std": _floats(std)},
            "bench": bench | ({"batch_sizes": batch} if batch else {}),
        }
    )
    return config.data, config.bench


def _compare(run_a: Path, run_b: Path, limits: dict[str, float]) -> None:
    from pipeline.errors import RegressionError
    from pipeline.report.compare import Thresholds, compare_manifests, load_run_manifest, regressions, render_comparison

    comparison = compare_manifests(load_run_manifest(run_a), load_run_manifest(run_b))
    typer.echo(f"A = {run_a}, B = {run_b}; changes are B − A\n")
    typer.echo(render_comparison(comparison))
    found = regressions(comparison, Thresholds(**limits))
    for regression in found:
        typer.echo(f"edgepipe: regression: {regression}", err=True)
    if found:
        raise RegressionError(
            f"{len(found)} regression(s) of {run_b} against {run_a} beyond the thresholds",
            "raise --max-accuracy-drop/--max-latency-increase/--max-size-increase if the change is intended",
        )


@app.command()
@reports_errors
def report(
    run_dir: Path = RunDirArg,
    compare: Optional[Path] = typer.Option(
        None,
        metavar="RUN_B",
        file_okay=False,
        help="Compare RUN_DIR (A) with RUN_B instead of writing reports: per artifact × runtime changes B − A; "
        "exit 7 when B regresses beyond a threshold.",
    ),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, min=0, help="With --compare: top-1 points B may lose per row (default 0.5)."
    ),
    max_latency_increase: Optional[float] = typer.Option(
        None, min=0, help="With --compare: percent B's p50 latency (batch 1) may grow per row (default 10)."
    ),
    max_size_increase: Optional[float] = typer.Option(
        None, min=0, help="With --compare: percent an artifact's file may grow (default 5)."
    ),
) -> None:
    """Write report.md and report.html from the run's manifest and print report.md (or compare two runs)."""
    from pipeline.errors import ConfigError

    given = dict(
        max_accuracy_drop=max_accuracy_drop,
        max_latency_increase=max_latency_increase,
        max_size_increase=max_size_increase,
    )
    limits = {name: value for name, value in given.items() if value is not None}
    if compare is not None:
        _compare(run_dir, compare, limits)
        return
    if limits:
        option = "--" + next(iter(limits)).replace("_", "-")
        raise ConfigError(f"{option} only applies with --compare RUN_B", f"add --compare RUN_B or drop {option}")
    from pipeline.report.gate import raise_if_run_failed
    from pipeline.stages.report import run_report

    run = _open(run_dir)
    typer.echo(run_report(run))
    raise_if_run_failed(run.manifest, run.root)


@app.command()
@reports_errors
def release(
    run_dir: Path = RunDirArg,
    target: list[str] = typer.Option([], "--target", "-t", help="Exported artifact to ship (repeat)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle directory to write."),
    force: bool = typer.Option(False, help="Replace an existing non-empty --out."),
    allow_over_budget: bool = typer.Option(
        False, help="Ship an artifact over its accuracy budget anyway (its bundle entry says so)."
    ),
) -> None:
    """Bundle benched artifacts with labels.txt, a manifest saying how to feed each, and a README.

    An artifact over its accuracy budget is refused (exit 8) unless --allow-over-budget."""
    from pipeline.stages.release import build_release

    if out is None:
        raise ConfigError("release needs --out BUNDLE", "e.g. --out bundles/v1")
    bundle = build_release(_open(run_dir), target, out, force, allow_over_budget)
    for entry in bundle.artifacts.values():
        typer.echo(f"{entry.name}: {out / entry.file} ({entry.bytes} bytes, sha256 {entry.sha256[:12]})")


@app.command("targets")
@reports_errors
def list_targets() -> None:
    """List the export targets, one line each: name, description, then where a target is not built by default
    and the config key of its own options."""
    from targets import TARGETS

    width = max(map(len, TARGETS.names()))
    for name in TARGETS:
        target = TARGETS.get(name)
        notes = ["only when named in export.targets"] * (not target.default)
        notes += [f"options: export.{target.options_key()}"] * (target.options is not None)
        typer.echo(f"{name:<{width}}  {target.description}" + (f" ({'; '.join(notes)})" if notes else ""))


@app.command()
def schema() -> None:
    """Print the JSON schema of manifest.json (pipeline/schemas/manifest.schema.json in the package)."""
    from pipeline.manifest import SCHEMA_PATH

    typer.echo(SCHEMA_PATH.read_text(), nl=False)


@app.command()
@reports_errors
def doctor() -> None:
    """Check the installation: tool versions, onnxruntime providers, the default data, any GPU (exit 9 and one
    fix line per missing thing; a missing GPU is only reported)."""
    from pipeline.doctor import diagnose, render
    from pipeline.errors import SetupError

    _quiet_frameworks()
    checks, gpu = diagnose()
    typer.echo(render(checks, gpu))
    failed = [check for check in checks if not check.ok]
    for check in failed:
        typer.echo(f"edgepipe: fix: {check.fix}", err=True)
    if failed:
        raise SetupError(
            f"{len(failed)} of {len(checks)} checks failed: {', '.join(check.label for check in failed)}",
            "run the fix lines above",
        )


def main() -> None:
    bound_openmp_spin()  # before anything imports torch
    app(prog_name="edgepipe")


if __name__ == "__main__":
    sys.exit(main())
