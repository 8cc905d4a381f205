"""The agent's "brain" as the call actor sees it: text in, a stream of text and tools out.

Implementations live in ``switch/agents/`` (an offline scripted agent from a YAML
file, an OpenAI-compatible chat-completions client). The actor feeds the caller's
words (or ``DTMF: 5``) with the conversation so far, speaks the text as it streams
(sentence by sentence) and carries out tool calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]
TOOL_NAMES = ("hang_up", "transfer", "send_dtmf")


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply, as it streams (a token or a whole sentence)."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """``hang_up`` {reason?}, ``transfer`` {target}, ``send_dtmf`` {digits}."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KnowledgeUsed:
    """The brain looked the question up: the entry ids it answers from (cited in the
    turn record), how long the lookup took, and the outage if the store failed."""

    entries: tuple[str, ...] = ()
    lookup_s: float | None = None
    error: str | None = None


AgentEvent = TextDelta | ToolCall | KnowledgeUsed


class AgentBrain(Protocol):
    def greeting(self) -> str:
        """What the agent says when the call is answered."""
        ...

    def respond(
        self, history: Sequence[ChatMessage], caller_input: str
    ) -> AsyncIterator[AgentEvent]:
        """The reply to ``caller_input``; ``history`` holds the turns before it."""
        ...

    def phrases(self) -> list[str]:
        """Words the agent expects to hear (for the ASR's in-domain language model)."""
        ...


class AgentError(RuntimeError):
    """The brain failed (provider unreachable, bad reply); the message says how."""
