"""captured_output: C-level, Python-level and logging output into the log; progress bars stay on the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.converter_log import captured_output, log_tail

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import ctypes, logging, os, sys, warnings
    from pathlib import Path
    from pipeline import progress
    from pipeline.converter_log import captured_output

    log = Path(sys.argv[1])
    with captured_output(log):
        os.write(2, b"fd2 mlir dump\\n")
        os.write(1, b"fd1 chatter\\n")
        ctypes.CDLL(None).printf(b"c stdio line\\n")
        print("python print")
        print("python stderr", file=sys.stderr)
        logging.warning("Please consider to run pre-processing")
        warnings.warn("a converter warning")
        progress.console.print("progress line")
    with progress.view("plain") as view, view.stage("export"), progress.task("export", total=1) as bar:
        with captured_output(log):
            with captured_output(log):  # a converter's capture inside the command's
                os.write(2, b"second capture\\n")
                print("edgepipe: warning: said on the terminal", file=sys.stderr)
            progress.log("event line")
            bar.advance()
    print("after capture", file=sys.stderr)
    logging.warning("root logging restored")
    """
)


def test_captured_output_keeps_progress_on_the_terminal(tmp_path: Path) -> None:
    """Everything a converter writes lands in the log (appended), nested captures included; the progress console,
    the view's lines, edgepipe's own warnings and anything written after the capture still reach the original
    stderr."""
    log = tmp_path / "logs" / "tflite-fp32.log"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(log)], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    captured = log.read_text()
    for line in (
        "fd2 mlir dump",
        "fd1 chatter",
        "c stdio line",
        "python print",
        "python stderr",
        "Please consider to run pre-processing",
        "a converter warning",
        "second capture",
    ):
        assert line in captured, line
        assert line not in done.stdout + done.stderr, line
    for line in ("progress line", "export: event line", "edgepipe: warning: said on the terminal"):
        assert line in done.stderr and line not in captured, line
    assert "after capture" in done.stderr and "root logging restored" in done.stderr


def test_captured_output_restores_on_error(tmp_path: Path, capfd) -> None:
    """An exception inside the capture leaves the descriptors restored; ``log_tail`` reads what was written."""
    import os

    log = tmp_path / "x.log"
    try:
        with captured_output(log):
            os.write(2, b"before the failure\n")
            raise ValueError("converter failed")
    except ValueError:
        pass
    os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"
    assert log_tail(log) == "before the failure\n"
    assert log_tail(None) == "" and log_tail(tmp_path / "absent.log") == ""
    with captured_output(tmp_path / "quiet.log"):
        pass
    assert not (tmp_path / "quiet.log").exists(), "a quiet converter leaves no empty log"
