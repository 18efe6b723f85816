"""Converter output into a log file: TensorFlow, onnx2tf and onnxruntime print from C++ and Python alike.

``captured_output(log_path)`` sends everything written to file descriptors 1 and 2 (C++ MLIR dumps, absl
logging, the TFLite calibration debugger), Python's ``sys.stdout``/``sys.stderr`` and the root logger's records to
``log_path`` (appended) and restores them after; the progress view keeps drawing on the terminal, and edgepipe's
own ``edgepipe: …`` lines written to ``sys.stderr`` (warnings) still reach it. Captures nest: a converter's log
inside a command's ``captured_run_output`` (``RUN/logs/run.log``).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from pipeline import progress
from pipeline.progress import console as progress_console

_STREAMS = ((1, "stdout"), (2, "stderr"))
RUN_LOG = "logs/run.log"  # a command's whole output (library lines, tracebacks of failed targets, its events)


def _flush_all() -> None:
    """Flush Python's and C stdio's buffers so nothing written before (or during) a switch lands on the wrong side."""
    for _, name in _STREAMS:
        with contextlib.suppress(Exception):
            getattr(sys, name).flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def _writes_to_fd(stream: object, fd: int) -> bool:
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def _progress_on(terminal_fds: dict[int, int]) -> Iterator[None]:
    """Pin the progress bars' console to the terminal (a duplicate of its original descriptor) while fd 1 and 2
    point at the log; a console on a non-descriptor stream (a test's capture) keeps that stream."""
    pinned = progress_console._file  # None: the console follows sys.stderr
    current = progress_console.file
    target = getattr(current, "rich_proxied_file", current)
    terminal: IO[str] | None = None
    for fd, saved in terminal_fds.items():
        if _writes_to_fd(target, fd):
            terminal = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    progress_console.file = terminal or target
    try:
        yield
    finally:
        progress_console.file = pinned
        if terminal is not None:
            with contextlib.suppress(Exception):
                terminal.flush()


@contextlib.contextmanager
def _root_logging_to(log: IO[str]) -> Iterator[None]:
    """The root logger's records go to ``log`` only (so ``logging.warning`` cannot bind a handler to a stream that
    is about to be closed, and no record reaches the terminal)."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = handlers


class _EdgepipeLinesOut(io.TextIOBase):
    """``sys.stderr`` during a capture: a line starting ``edgepipe: `` (a warning of any edgepipe module) goes to
    the terminal through the progress view; every other line into ``sink``. A line is held only while it may still
    become such a line (its first 10 characters)."""

    PREFIX = "edgepipe: "
    encoding = "utf-8"
    errors = "replace"

    def __init__(self, sink: IO[str]) -> None:
        super().__init__()
        self.sink = sink
        self.held = ""  # the start of the current line, while it may still begin with PREFIX
        self.passing = False  # the current line is not an edgepipe line: written through as it comes

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.sink.fileno()

    @property
    def buffer(self) -> IO[bytes]:
        """The log's bytes (a library writing bytes bypasses the line routing)."""
        return self.sink.buffer

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # a binary write must fail (click probes streams with b"")
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        for piece in text.splitlines(keepends=True):
            self._piece(piece)
        return len(text)

    def _piece(self, piece: str) -> None:
        ends = piece.endswith(("\n", "\r"))
        if self.passing:
            self.sink.write(piece)
        else:
            self.held += piece
            line = self.held.rstrip("\r\n")
            if line.startswith(self.PREFIX) and ends:
                progress.warn(line)
                self.held = ""
            elif not (line.startswith(self.PREFIX) or self.PREFIX.startswith(line)) or ends:
                self.sink.write(self.held)
                self.held, self.passing = "", True
        if ends:
            self.passing = False

    def flush(self) -> None:
        self.sink.flush()


@contextlib.contextmanager
def captured_output(log_path: Path | None) -> Iterator[Path | None]:
    """Redirect fd 1 and 2, ``sys.stdout``/``sys.stderr`` and root logging into ``log_path`` (appending; parent
    folders created; a log this call created and nothing was written to is removed), restoring all of them on exit,
    errors included.

    Args:
        log_path: the log file; None discards the output (a caller without a run directory).

    Yields:
        ``log_path``.
    """
    created = log_path is not None and not log_path.exists()
    if log_path is None:
        sink = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sink = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
    try:
        with sink, _captured_to(sink):
            yield log_path
    finally:
        if created and log_path.is_file() and log_path.stat().st_size == 0:
            log_path.unlink()  # a quiet converter leaves no empty log behind


@contextlib.contextmanager
def _captured_to(sink: IO[str]) -> Iterator[None]:
    """fd 1 and 2, ``sys.stdout``/``sys.stderr`` and root logging into the open ``sink``, restored on exit."""
    _flush_all()
    saved = {fd: os.dup(fd) for fd, _ in _STREAMS}
    try:
        with (
            _progress_on(saved),
            _root_logging_to(sink),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(_EdgepipeLinesOut(sink)),
        ):
            for fd, _ in _STREAMS:
                os.dup2(sink.fileno(), fd)
            try:
                yield
            finally:
                _flush_all()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
    finally:
        for copy in saved.values():
            os.close(copy)


_spool: dict[str, object] = {}  # the open captured_run_output: its root, sink and whether it is attached


@contextlib.contextmanager
def captured_run_output(root: Path, command: str) -> Iterator[IO[str]]:
    """A command's whole output (:func:`captured_output`, after a line naming ``command`` and the time), held in a
    temporary spool until :func:`attach_run_log` moves it into ``root``/logs/run.log, which the run directory does
    once this process holds the run's writer lock. A command that never gets there (a config or data error before
    the run exists, another process writing the run) leaves ``root`` as it was; so does one whose ``root`` is no run
    directory when the block ends (the log and the folders made for it are removed).

    Yields:
        The sink, open for the progress view's event lines (closed when the block ends).
    """
    sink = tempfile.TemporaryFile("w+", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    _spool.update(root=root.resolve(), sink=sink, made=[])
    try:
        with sink, _captured_to(sink):
            print(f"--- {command} at {datetime.now():%Y-%m-%d %H:%M:%S} (pid {os.getpid()}) ---", flush=True)
            yield sys.stdout
    finally:
        attached, made = _spool.get("attached"), _spool.get("made", [])
        _spool.clear()
        log = root / RUN_LOG
        if attached and not (root / "manifest.json").is_file():
            log.unlink(missing_ok=True)
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def attach_run_log(root: Path) -> None:
    """Move the spooled output of the open :func:`captured_run_output` for ``root`` (if any) into
    ``root``/logs/run.log and write there from now on (appending). Called by the holder of the run's writer lock."""
    sink = _spool.get("sink")
    if sink is None or _spool.get("root") != root.resolve() or _spool.get("attached"):
        return
    log = root / RUN_LOG
    made, folder = [], log.parent
    while not folder.exists():
        made.append(folder)  # deepest first
        folder = folder.parent
    _flush_all()
    spooled = os.fstat(sink.fileno())
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8", errors="replace") as real:
            sink.seek(0)
            real.write(sink.read())
            real.flush()
            for fd in {sink.fileno(), *(fd for fd, _ in _STREAMS)}:
                if _same_file(os.fstat(fd), spooled):
                    os.dup2(real.fileno(), fd)  # fd 1/2 and the sink now append to the log
    except OSError:  # a full or read-only disk: the output stays spooled; the command's own writes say why
        sink.seek(0, os.SEEK_END)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        return
    _spool.update(attached=True, made=made)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def log_tail(log_path: Path | None, chars: int = 20_000) -> str:
    """The last ``chars`` characters of a log ('' when there is none), to look for the failing op."""
    if log_path is None or not log_path.is_file():
        return ""
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - chars))
        return f.read().decode("utf-8", errors="replace")
