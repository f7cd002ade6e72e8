"""Every config committed under configs/ (the settings behind a reported number) still builds with the command
its header names, so a reader can re-run what a results entry cites."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unlearnable.config import build_config, validate
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.demo import DemoConfig
from unlearnable.experiments.immunize import ImmunizeConfig
from unlearnable.experiments.tradeoff import TradeoffConfig

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
COMMANDS = {"demo": DemoConfig, "immunize": ImmunizeConfig, "tradeoff": TradeoffConfig}


def command_of(path: Path) -> str:
    found = re.findall(r"^#.*\bunlearnable (demo|immunize|tradeoff) .*--config configs/([\w.-]+)", path.read_text(),
                       re.M)
    assert found, f"{path.name}: its header must say how to run it (`unlearnable COMMAND --config {path.name}`)"
    command, named = found[-1]
    assert named == path.name, f"{path.name}'s header runs another file ({named})"
    return command


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_committed_config_builds_with_the_command_its_header_names(path):
    cfg = build_config(COMMANDS[command_of(path)], file=path)
    if any("runs/" in line for line in path.read_text().splitlines() if not line.startswith("#")):
        return  # it names files a script stages first (its header says which)
    try:
        validate(cfg)
    except UnlearnableError as exc:
        if "pip install" not in str(exc):
            raise
        pytest.skip(f"needs an optional extra: {exc}")
