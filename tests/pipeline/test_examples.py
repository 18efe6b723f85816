"""The shipped example configs: each one loads, and examples/config.yaml ("every key, with its default") says the
defaults the embedded default run actually uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config_load import load_config

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_example_config_loads(path: Path) -> None:
    load_config(path)


def test_config_yaml_states_the_defaults() -> None:
    assert load_config(EXAMPLES / "config.yaml").model_dump() == load_config(None).model_dump()
