"""The progress view of a command: the stages it runs, the current stage's bars with steady ETAs, the elapsed time
and an estimated total.

A command opens one view (:func:`view`) in one of three modes: ``rich`` (a live display on a terminal), ``plain``
(one line per event, no ANSI codes or carriage returns: CI logs) or ``quiet`` (warnings only). Stage code reports
through the module functions :func:`stage`, :func:`task`, :func:`status`, :func:`log` and :func:`warn`; outside a
view (a library call, a test) they draw nothing, and log lines and warnings go to stderr.

An ETA is the predicted end of a task minus now: the seconds per item measured over this task's items up to its
last boundary (an export target, a bench group, a training epoch with its validation), times the items left. The
predicted end changes only at a boundary, so the ETA counts down steadily instead of following the last seconds'
speed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

Mode = Literal["rich", "plain", "quiet"]
Clock = Callable[[], float]

console = Console(stderr=True, log_path=False)  # the terminal: pinned there while fd 1 and 2 point at a log

_SHOWN = {"stage": ("plain",), "event": ("plain", "rich"), "warning": ("plain", "rich", "quiet")}  # kind: modes
_MARKS = {"pending": ("·", "dim"), "running": ("▸", "bold cyan"), "done": ("✓", "green"), "failed": ("✗", "red")}


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an s unless the count is 1: "1 target", "6 targets"."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def duration(seconds: float) -> str:
    """``12.3 s`` under a minute, else ``2:05`` (m:ss) or ``1:02:05`` (h:mm:ss)."""
    return f"{seconds:.1f} s" if seconds < 59.95 else clock_text(seconds)


def clock_text(seconds: float) -> str:
    """``0:07``, ``2:05`` or ``1:02:05``: whole seconds as m:ss, with hours when there are any."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Stage:
    """One stage of a command as the view lists it.

    Attributes:
        name: the stage (``distill``, ``export``, …).
        detail: what it covers, shown beside the name (``6 targets``).
        quick: it takes about a second (calibrate, report): counted as nothing in the estimated total instead of
            making the total a lower bound.
        outcome: pending, running, done or failed.
        started: clock time it started (seconds), None before.
        seconds: how long it took, once it ended.
    """

    name: str
    detail: str = ""
    quick: bool = False
    outcome: str = "pending"
    started: float | None = None
    seconds: float | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


class Task:
    """One bar: ``total`` items, of which ``completed`` are done (a resumed training starts part-way).

    Its ETA comes from the seconds per item measured since the task started, up to its last boundary; see the
    module docstring."""

    def __init__(self, description: str, total: int, completed: int, clock: Clock) -> None:
        self.description, self.total, self.completed, self.status = description, total, completed, ""
        self.clock = clock
        self.start = (clock(), completed)
        self.boundary: tuple[float, int] | None = None

    def advance(self, items: int = 1, status: str | None = None, boundary: bool = True) -> None:
        """``items`` more done; ``boundary``: the ETA is measured up to here (False: steps within an epoch, whose
        boundary is :meth:`mark`)."""
        self.completed += items
        if status is not None:
            self.status = status
        if boundary:
            self.mark()

    def update(self, status: str) -> None:
        """Say what the task works on now (an artifact, an epoch and its loss)."""
        self.status = status

    def mark(self) -> None:
        """A boundary: the seconds per item are measured up to now (e.g. the end of an epoch, its validation
        included)."""
        self.boundary = (self.clock(), self.completed)

    def eta(self) -> float | None:
        """Seconds left (never below 0), or None before an item is done. Without a boundary yet, the items done so
        far give the rate."""
        started_at, started_items = self.start
        at, items = self.boundary or (self.clock(), self.completed)
        if items <= started_items:
            return None
        end = at + (at - started_at) / (items - started_items) * (self.total - items)
        return max(0.0, end - self.clock())


class View:
    """The stages of one command, the bars of the current one, and the lines said above them."""

    def __init__(self, mode: Mode, terminal: IO[str], clock: Clock = time.monotonic) -> None:
        self.mode, self.terminal, self.clock = mode, terminal, clock
        self.started = clock()
        self.stages: list[Stage] = []
        self.tasks: list[Task] = []
        self.current: Stage | None = None
        self.status_text = ""
        self.copy: IO[str] | None = None  # the run's log: every event line goes there too
        self.live: Live | None = None

    # --- what stage code reports

    def header(self, line: str) -> None:
        """The command's first line (``edgepipe run → runs/default``)."""
        self._say(line, "event")

    def plan(self, stages: list[Stage]) -> None:
        """The stages the command will run, in order (in plain mode one line, when there are several)."""
        self.stages = list(stages)
        if len(self.stages) > 1:
            self._say("stages: " + ", ".join(stage.label for stage in self.stages), "stage")

    @contextlib.contextmanager
    def copying_to(self, log: IO[str]) -> Iterator[None]:
        """Every line said also goes to ``log`` (the run's log) while the block runs."""
        self.copy = log
        try:
            yield
        finally:
            self.copy = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Run stage ``name`` (added to the list when the plan lacks it); its outcome and duration are recorded,
        also when it raises."""
        stage = next((s for s in self.stages if s.name == name), None)
        if stage is None:
            stage = Stage(name)
            self.stages.append(stage)
        stage.outcome, stage.started, stage.seconds = "running", self.clock(), None
        self.current, self.status_text = stage, ""
        self._say(f"{name}: started", "stage")
        try:
            yield stage
        except BaseException as e:
            self._end(stage, "failed")
            how = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            self._say(f"{name}: {how} after {duration(stage.seconds)}", "stage")
            raise
        self._end(stage, "done")
        self._say(f"{name}: done in {duration(stage.seconds)}", "stage")

    @contextlib.contextmanager
    def task(self, description: str, total: int, completed: int = 0) -> Iterator[Task]:
        """A bar under the current stage while the block runs."""
        task = Task(description, total, completed, self.clock)
        self.tasks.append(task)
        self.status_text = ""
        try:
            yield task
        finally:
            self.tasks.remove(task)

    def status(self, text: str) -> None:
        """What the current stage does between bars (``teacher logits over the training split``)."""
        self.status_text = text

    def log(self, line: str) -> None:
        """An event line of the current stage (an epoch's summary, a target built, a bench row)."""
        prefix = f"{self.current.name}: " if self.current else ""
        tasks = list(self.tasks)
        remaining = self.stage_remaining() if tasks and tasks[0].completed < tasks[0].total else None
        left = f" ({clock_text(remaining)} left)" if remaining is not None and self.mode == "plain" else ""
        self._say(prefix + line + left, "event")

    def warn(self, line: str) -> None:
        """A line that reaches the terminal in every mode (``edgepipe: warning: …``)."""
        self._say(line, "warning")

    # --- estimates

    def stage_remaining(self) -> float | None:
        """Seconds the current stage has left: its outermost bar's ETA (None without one)."""
        tasks = list(self.tasks)
        return tasks[0].eta() if tasks and self.current is not None else None

    def estimate(self) -> tuple[float, list[str]]:
        """(estimated total seconds, stages it cannot count yet): finished stages, the current one's elapsed time
        and ETA, quick stages as nothing. With stages left out, the total is a lower bound."""
        now, total, missing = self.clock(), 0.0, []
        for stage in self.stages:
            if stage.seconds is not None:
                total += stage.seconds
            elif stage.outcome == "running":
                remaining = self.stage_remaining()
                total += now - stage.started + (remaining or 0.0)
                if remaining is None and not stage.quick:
                    missing.append(stage.name)
            elif not stage.quick:
                missing.append(stage.name)
        return max(total, now - self.started), missing

    # --- drawing

    def _end(self, stage: Stage, outcome: str) -> None:
        stage.outcome, stage.seconds = outcome, self.clock() - stage.started
        self.status_text = ""

    def _say(self, line: str, kind: str) -> None:
        """``line`` in the run's log, and on the terminal when its kind shows in this mode: stage lines in plain
        mode only (the live display lists the stages), events (epochs, targets, bench rows) also above the live
        display, warnings in every mode."""
        if self.copy is not None:
            self.copy.write(line + "\n")
            self.copy.flush()
        if self.mode not in _SHOWN[kind]:
            return
        if self.live is not None:
            console.print(Text(line), soft_wrap=True)  # above the live display
        else:
            self.terminal.write(line + "\n")
            self.terminal.flush()

    def render(self) -> RenderableType:
        """The live display: the stage list with the current stage's bars under it, then elapsed and total."""
        now, rows, stages = self.clock(), [], list(self.stages)
        width = max((len(stage.label) for stage in stages), default=0)
        for stage in stages:
            rows.append(self._stage_row(stage, width, now))
            if stage.outcome == "running":
                rows.extend(self._task_rows())
        total = self.total_text() if self.stages else "loading the libraries and the config"
        rows.append(Text(f"elapsed {clock_text(now - self.started)} · {total}", style="dim"))
        return Group(*rows)

    def total_text(self) -> str:
        """``total ~4:10``, or ``total ≥ 2:40, not counting export, bench`` while some stage has no estimate, or
        ``stopped in export`` after a stage failed."""
        failed = [stage.name for stage in self.stages if stage.outcome == "failed"]
        if failed:
            return f"stopped in {failed[0]}"
        total, missing = self.estimate()
        if not missing:
            finished = all(stage.seconds is not None for stage in self.stages)
            return f"total {clock_text(total)}" if finished else f"total ~{clock_text(total)}"
        return f"total ≥ {clock_text(total)}, not counting {', '.join(missing)}"

    def _stage_row(self, stage: Stage, width: int, now: float) -> Text:
        mark, style = _MARKS[stage.outcome]
        row = Text(f"{mark} ", style=style)
        row.append(f"{stage.label:<{width}}", style=style)
        if stage.seconds is not None:
            row.append(f" {duration(stage.seconds)}")
        elif stage.started is not None:
            row.append(f" {clock_text(now - stage.started)}")
            if self.status_text and not self.tasks:
                row.append(f"  {self.status_text}", style="dim")
        return row

    def _task_rows(self) -> list[RenderableType]:
        """The current stage's bars: description, bar, done/total, ETA, what it works on."""
        grid = Table.grid(padding=(0, 1))
        for justify in ("left", "left", "left", "right", "left", "left"):
            grid.add_column(justify=justify, no_wrap=True)
        for task in list(self.tasks):
            eta = task.eta()
            grid.add_row(
                "  ",
                Text(task.description, style="bold"),
                ProgressBar(total=max(task.total, 1), completed=task.completed, width=30),
                f"{task.completed}/{task.total}",
                "ETA " + (f"~{clock_text(eta)}" if eta is not None else "…"),
                Text(task.status, style="dim"),
            )
        return [grid] if self.tasks else []

    def start_live(self) -> None:
        """Draw :meth:`render` on the console, refreshed 4 times a second, until :meth:`close`."""
        self.live = Live(
            console=console, get_renderable=self.render, redirect_stdout=False, redirect_stderr=False, transient=False
        )
        self.live.start(refresh=True)

    def close(self, finished: bool) -> None:
        """Stop drawing; a finished command ends with its total time (plain: one line)."""
        if self.live is not None:
            self.tasks.clear()
            self.live.stop()
            self.live = None
        elif finished:
            self._say(f"finished in {duration(self.clock() - self.started)}", "stage")


_active: View | None = None


def choose_mode(progress: str = "auto", quiet: bool = False) -> Mode:
    """``quiet`` wins; ``auto``: rich when stderr is a terminal (not TERM=dumb), plain otherwise (a pipe, a CI
    log, a test's capture)."""
    if quiet:
        return "quiet"
    if progress != "auto":
        return progress  # type: ignore[return-value]
    interactive = bool(getattr(sys.stderr, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
    return "rich" if interactive else "plain"


@contextlib.contextmanager
def _terminal() -> Iterator[IO[str]]:
    """The terminal as the command found it: a duplicate of stderr's descriptor (so a capture that points fd 2 at a
    log leaves it on the terminal), or stderr itself when it is no descriptor (a test's capture)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield sys.stderr
        return
    sys.stderr.flush()
    with os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace") as terminal:
        yield terminal


@contextlib.contextmanager
def view(mode: Mode, clock: Clock = time.monotonic) -> Iterator[View]:
    """Open the command's view: stage code reports to it until the block ends. The rich console draws on the
    terminal the command started with (even while fd 1 and 2 point at a log); quiet mode silences it."""
    global _active
    with _terminal() as terminal:
        pinned, was_quiet = console._file, console.quiet
        console.file, console.quiet = terminal, mode == "quiet"
        active = View(mode, terminal, clock)
        _active, finished = active, False
        try:
            if mode == "rich":
                active.start_live()
            yield active
            finished = True
        finally:
            active.close(finished)
            _active = None
            console._file, console.quiet = pinned, was_quiet


def plan(stages: list[Stage]) -> None:
    """The active view's :meth:`View.plan`; nothing outside a view."""
    if _active is not None:
        _active.plan(stages)


def stage(name: str) -> contextlib.AbstractContextManager:
    """The active view's :meth:`View.stage`; nothing outside a view."""
    return _active.stage(name) if _active is not None else contextlib.nullcontext()


@contextlib.contextmanager
def task(description: str, total: int, completed: int = 0) -> Iterator[Task]:
    """A bar in the active view (outside a view: a task that is counted, not drawn)."""
    if _active is None:
        yield Task(description, total, completed, time.monotonic)
    else:
        with _active.task(description, total, completed) as bar:
            yield bar


def status(text: str) -> None:
    """The active view's :meth:`View.status`; nothing outside a view."""
    if _active is not None:
        _active.status(text)


def log(line: str) -> None:
    """An event line: in the active view, else on stderr (the terminal while a capture holds fd 2)."""
    if _active is not None:
        _active.log(line)
    else:
        console.print(Text(line), soft_wrap=True)


def warn(line: str) -> None:
    """A warning line: on the terminal in every mode, above any live display."""
    if _active is not None:
        _active.warn(line)
    else:
        console.print(Text(line), soft_wrap=True)
