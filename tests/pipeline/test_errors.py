"""The one-line reasons every stage quotes from an error (pipeline.errors.first_line, failure_reason)."""

from __future__ import annotations

from pipeline.errors import ConfigError, failure_reason, first_line


def test_first_line_skips_blank_lines_strips_and_cuts() -> None:
    assert first_line(ValueError("\n   \n  shape mismatch  \ndetails")) == "shape mismatch"
    assert first_line(KeyError()) == "KeyError"  # nothing said: the type's name
    assert first_line(ValueError("x" * 10), limit=5) == "xxxx…"
    assert first_line(ValueError("x" * 5), limit=5) == "xxxxx"


def test_failure_reason_keeps_an_edgepipe_hint() -> None:
    assert failure_reason(ConfigError("bad key", "see the docs")) == "bad key (hint: see the docs)"
    assert failure_reason(RuntimeError("boom\ntrace")) == "boom"
