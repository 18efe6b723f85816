"""Converter output into a log file: TensorFlow, onnx2tf and onnxruntime print from C++ and Python alike.

``captured_output(log_path)`` sends everything written to file descriptors 1 and 2 (C++ MLIR dumps, absl
logging, the TFLite calibration debugger), Python's ``sys.stdout``/``sys.stderr`` and the root logger's records to
``log_path`` (appended) and restores them after; the progress bars keep drawing on the terminal.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.progress import console as progress_console

_STREAMS = ((1, "stdout"), (2, "stderr"))


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
    _flush_all()
    saved = {fd: os.dup(fd) for fd, _ in _STREAMS}
    try:
        with (
            sink,
            _progress_on(saved),
            _root_logging_to(sink),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            for fd, _ in _STREAMS:
                os.dup2(sink.fileno(), fd)
            try:
                yield log_path
            finally:
                _flush_all()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
    finally:
        for copy in saved.values():
            os.close(copy)
        if created and log_path.is_file() and log_path.stat().st_size == 0:
            log_path.unlink()  # a quiet converter leaves no empty log behind


def log_tail(log_path: Path | None, chars: int = 20_000) -> str:
    """The last ``chars`` characters of a log ('' when there is none), to look for the failing op."""
    if log_path is None or not log_path.is_file():
        return ""
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - chars))
        return f.read().decode("utf-8", errors="replace")
