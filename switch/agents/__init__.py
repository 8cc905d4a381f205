"""Agent brains (see :mod:`actors.agent`): an offline scripted one and an OpenAI client.

``DEMO_AGENT_PATH`` is the YAML of the offline demo bot (Voxswitch Pizza), the default
for a node with no API key and no network: ``ScriptedAgent.from_file(DEMO_AGENT_PATH)``.
"""

from __future__ import annotations

from pathlib import Path

from switch.agents.openai_chat import OpenAIChatAgent
from switch.agents.scripted import AgentConfigError, ScriptedAgent

DEMO_AGENT_PATH = Path(__file__).with_name("demo.yaml")

__all__ = ["DEMO_AGENT_PATH", "AgentConfigError", "OpenAIChatAgent", "ScriptedAgent"]
