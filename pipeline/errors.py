"""Error hierarchy: each user-facing failure is one readable line and a distinct exit code."""

from __future__ import annotations


class EdgepipeError(Exception):
    """Base of every error edgepipe reports to a user (never with a traceback)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        """The message and its hint on one line, as the CLI prints it."""
        text = str(self).replace("\n", " ")
        return f"{text} (hint: {self.hint})" if self.hint else text


TORCHSCRIPT_PREAMBLE = "The following operation failed in the TorchScript interpreter."


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message that says something, stripped (its type name when none does), cut
    to ``limit`` characters with "…" when given: what a one-line reason quotes from a library's error. A
    TorchScript program's error opens with a preamble and a traceback of the script; its last line says why."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0] == TORCHSCRIPT_PREAMBLE:
        lines = lines[-1:]
    line = lines[0] if lines else type(error).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def failure_reason(error: BaseException) -> str:
    """Why something failed, one line: an edgepipe error's message and hint, else the first line of the message."""
    return error.one_line() if isinstance(error, EdgepipeError) else first_line(error)


class ConfigError(EdgepipeError):
    """The config file or a command-line option is wrong."""

    exit_code = 2


class DataError(EdgepipeError):
    """A data set is missing, unreadable or inconsistent."""

    exit_code = 3


class ModelError(EdgepipeError):
    """A model or checkpoint cannot be built, loaded or trained."""

    exit_code = 4


class ExportError(EdgepipeError):
    """A converter failed or produced an artifact that does not match its source."""

    exit_code = 5


class RunStateError(EdgepipeError):
    """A run directory lacks what a stage needs (run the earlier stage first)."""

    exit_code = 6


class RegressionError(EdgepipeError):
    """`report A --compare B`: run B is worse than run A beyond a threshold."""

    exit_code = 7


class GateError(EdgepipeError):
    """The accuracy gate (config `gate:`) failed: an artifact broke a release limit."""

    exit_code = 8


class SetupError(EdgepipeError):
    """`edgepipe doctor`: a package or the default data the pipeline needs is missing or does not import; a target
    plug-in module does not load."""

    exit_code = 9
