"""The one-line reasons every stage quotes from an error (pipeline.errors.first_line, failure_reason)."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError, failure_reason, first_line


def test_first_line_skips_blank_lines_strips_and_cuts() -> None:
    assert first_line(ValueError("\n   \n  shape mismatch  \ndetails")) == "shape mismatch"
    assert first_line(KeyError()) == "KeyError"  # nothing said: the type's name
    assert first_line(ValueError("x" * 10), limit=5) == "xxxx…"
    assert first_line(ValueError("x" * 5), limit=5) == "xxxxx"


class _Reshape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 100)


def test_first_line_of_a_torchscript_error_is_its_reason() -> None:
    """A scripted model that fails inside the interpreter: the line quoted is the failure, not the preamble."""
    with pytest.raises(Exception) as caught:
        torch.jit.script(_Reshape())(torch.zeros(2, 1, 8, 8))
    assert str(caught.value).splitlines()[0] == "The following operation failed in the TorchScript interpreter."
    assert first_line(caught.value) == "RuntimeError: shape '[-1, 100]' is invalid for input of size 128"


def test_failure_reason_keeps_an_edgepipe_hint() -> None:
    assert failure_reason(ConfigError("bad key", "see the docs")) == "bad key (hint: see the docs)"
    assert failure_reason(RuntimeError("boom\ntrace")) == "boom"
