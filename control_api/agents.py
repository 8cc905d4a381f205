"""Typing to an agent: ``POST /v1/agents/{name}/reply`` (scope ``calls:read``).

What the agent would say to a caller who said ``text`` after ``history`` — the same
brain, knowledge lookup and intents a call uses, without a call: nothing is spoken,
and an action (transfer, hang-up, DTMF) is reported, not carried out. For trying an
agent from the console or a script, and for ``voxswitch eval --typed`` (the meaning
layer measured without a recogniser). An unknown agent is 404; the brain failing
(its LLM provider down) 502; taking longer than :data:`REPLY_TIMEOUT_S` 504.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from actors.agent import AgentBrain, AgentError, ChatMessage, KnowledgeUsed, TextDelta, ToolCall

REPLY_TIMEOUT_S = 30.0
MAX_TEXT = 1000
MAX_HISTORY = 50


class Said(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)


class Ask(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="what the caller said")
    history: list[Said] = Field(default_factory=list, max_length=MAX_HISTORY,
                                description="the conversation so far, oldest first")  # fmt: skip


def agents_router(brains: Mapping[str, AgentBrain], require: Callable[[str], Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/agents/{name}/reply", dependencies=[require("calls:read")])
    async def reply(name: str, ask: Ask) -> dict[str, Any]:
        """The agent's answer to ``text``: its words, the knowledge entries it answered
        from, and the action it would take (not taken)."""
        brain = brains.get(name)
        if brain is None:
            known = ", ".join(sorted(brains))
            raise HTTPException(404, f"no agent {name!r} here (agents: {known})")
        history = [ChatMessage(m.role, m.content) for m in ask.history]
        words: list[str] = []
        entries: list[str] = []
        actions: list[dict[str, Any]] = []
        lookup_error = None
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                async for event in brain.respond(history, ask.text):
                    if isinstance(event, TextDelta):
                        words.append(event.text)
                    elif isinstance(event, KnowledgeUsed):
                        entries.extend(event.entries)
                        lookup_error = event.error or lookup_error
                    elif isinstance(event, ToolCall):
                        actions.append({"name": event.name, "arguments": event.arguments})
        except TimeoutError as exc:
            raise HTTPException(504, f"no answer in {REPLY_TIMEOUT_S:.0f} s") from exc
        except AgentError as exc:  # its provider down: what a call would hear as a fallback
            raise HTTPException(502, f"the agent failed: {exc}") from exc
        return {"agent": name, "text": "".join(words), "knowledge": entries, "actions": actions,
                "knowledge_error": lookup_error}  # fmt: skip

    return router
