"""The Dockerfile and .ci/run install exactly what the README's two commands install (docker cannot run in the test
environment: this checks the text, step by step)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The README's first two ```bash blocks (install + run, install + test)."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks[:2]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0], line.split(None, 1)[1] if " " in line else "") for line in lines]


def steps(command: str) -> list[str]:
    return [" ".join(step.split()) for step in command.split("&&")]


def test_dockerfile_runs_the_readme_install_steps_in_order() -> None:
    """Every step of the README's first command but the last is a step of a RUN instruction, in the same order."""
    *install, run = steps(readme_commands()[0])
    run_steps = [
        step for instruction, args in dockerfile_instructions() if instruction == "RUN" for step in steps(args)
    ]
    positions = [run_steps.index(step) if step in run_steps else -1 for step in install]
    assert -1 not in positions, [step for step, at in zip(install, positions) if at < 0]
    assert positions == sorted(positions), "the Dockerfile runs the README's steps in another order"
    assert run == ".venv/bin/edgepipe run --out runs/default"
    assert any(step == "edgepipe doctor" for step in run_steps)  # the build checks its own result


def test_dockerfile_default_command_runs_the_embedded_default() -> None:
    """`docker run -v $PWD/runs:/runs edgepipe` runs the README's last step into the volume, from the venv."""
    instructions = dockerfile_instructions()
    (cmd,) = [args for instruction, args in instructions if instruction == "CMD"]
    assert json.loads(cmd) == ["edgepipe", "run", "--out", "/runs/default"]
    assert ("VOLUME", "/runs") in instructions
    (workdir,) = [args for instruction, args in instructions if instruction == "WORKDIR"]
    env = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert f'PATH="{workdir}/.venv/bin:$PATH"' in env  # the venv the README's steps created
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")  # Debian: dataset-fashion-mnist; Python 3.11


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    (ci_command,) = re.findall(r"^TEST_CMD='(.*)'$", text, flags=re.M)
    assert ci_command == readme_commands()[1]
