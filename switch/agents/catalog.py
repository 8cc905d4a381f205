"""Which agents a configuration has, without building them: what ``kb`` commands and the
settings' inbound routes check a name against.

A node answers as ``default`` (the ``agent`` setting, unless it is ``none``) and as each
``<name>.yaml`` in ``agents_dir`` (``switch/voice.py`` builds them the same way).
"""

from __future__ import annotations

import re
from pathlib import Path

from switch.agents import DEMO_AGENT_PATH
from switch.config import ConfigError, Settings
from switch.trunking.trunks import AGENT_NAME


def agent_files(settings: Settings) -> dict[str, Path | None]:
    """Every agent of ``settings`` and its YAML file (None: the LLM agent has none).
    An ``agents_dir`` that is not a folder, or holds a file whose name is not an agent
    name, is a :class:`ConfigError`."""
    agents: dict[str, Path | None] = {}
    if settings.agent != "none":
        own = {"demo": DEMO_AGENT_PATH, "openai": None}
        agents["default"] = own.get(settings.agent, Path(settings.agent))
    if settings.agents_dir:
        folder = Path(settings.agents_dir)
        if not folder.is_dir():
            raise ConfigError(f"agents_dir: {folder} is not a directory")
        for path in sorted(folder.glob("*.yaml")):
            if not re.match(AGENT_NAME, path.stem) or path.stem in ("default", "none"):
                raise ConfigError(f"agents_dir: {path.name}: agent names are letters, digits, _ -")
            agents[path.stem] = path
    return agents


def unknown_agent(name: str, known: list[str]) -> str:
    """One line for an agent name the configuration does not have."""
    listed = ", ".join(known) if known else "none (agent = none and no agents_dir)"
    return f"no agent named {name!r} (this configuration's agents: {listed})"
