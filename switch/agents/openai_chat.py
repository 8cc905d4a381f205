"""An agent backed by an OpenAI-compatible ``/v1/chat/completions`` endpoint (streaming).

Works with OpenAI and the many servers that speak its protocol (vLLM, llama.cpp server,
Ollama, LiteLLM, ...). Each :meth:`OpenAIChatAgent.respond` call POSTs the conversation
with ``"stream": true`` and the tool schemas (``hang_up``, ``transfer``, ``send_dtmf``),
then reads the server-sent events as they arrive:

* every ``choices[0].delta.content`` piece is yielded at once as a :class:`TextDelta`
  (nothing is buffered, so the actor can start speaking the first sentence early);
* ``choices[0].delta.tool_calls`` fragments are put together by ``index`` (id, name,
  argument string pieces) and yielded as :class:`ToolCall` events when the model says
  ``finish_reason: "tool_calls"`` or the stream ends (``data: [DONE]`` or EOF).
  Arguments are checked: valid JSON object, ``transfer`` needs a ``target`` string,
  ``send_dtmf`` needs ``digits`` matching ``[0-9*#A-D]+``.

Any failure (connection refused, timeout, non-2xx status, malformed event JSON, bad tool
arguments, an ``error`` object in the stream) raises :class:`~actors.agent.AgentError`.

The HTTP response lives in ``async with client.stream(...)`` inside the generator: when
the task iterating :meth:`respond` is cancelled (the caller barges in), the cancellation
unwinds through it and the connection is closed at once. A consumer that stops early
*without* cancelling should close the generator (``contextlib.aclosing``) for the same
effect.

``base_url`` is the server root (``http://127.0.0.1:8000``); a trailing ``/v1`` is
accepted too (``https://api.openai.com/v1``). ``timeout_s`` bounds connecting and each
read (the gap between two chunks), not the whole reply.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from actors.agent import (
    TOOL_NAMES,
    AgentError,
    AgentEvent,
    ChatMessage,
    KnowledgeUsed,
    TextDelta,
    ToolCall,
)
from switch.knowledge.base import KnowledgeBase
from switch.knowledge.entries import Hit

__all__ = ["TOOL_SCHEMAS", "OpenAIChatAgent", "tool_schemas"]

_DIGITS_RE = re.compile(r"^[0-9*#A-D]+$")
_ERROR_EXCERPT = 300

TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "hang_up": {
        "type": "function",
        "function": {
            "name": "hang_up",
            "description": "End the call, after saying goodbye to the caller.",
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the call is ending."}
                },
                "required": [],
            },
        },
    },
    "transfer": {
        "type": "function",
        "function": {
            "name": "transfer",
            "description": "Transfer the caller to a human or another number (a SIP URI).",
            "parameters": {
                "type": "object",
                "properties": {
                    "target": {
                        "type": "string",
                        "description": "Where to send the call, e.g. sip:operator@example.com",
                    }
                },
                "required": ["target"],
            },
        },
    },
    "send_dtmf": {
        "type": "function",
        "function": {
            "name": "send_dtmf",
            "description": "Press keypad keys on the call (e.g. to navigate a phone menu).",
            "parameters": {
                "type": "object",
                "properties": {
                    "digits": {
                        "type": "string",
                        "pattern": "^[0-9*#A-D]+$",
                        "description": "The keys to press, in order.",
                    }
                },
                "required": ["digits"],
            },
        },
    },
}


SEARCH_TOOL = "search_knowledge"
SEARCH_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": SEARCH_TOOL,
        "description": "Search the company's knowledge base (hours, prices, policies, ...) "
        "when the entries already given do not answer the caller.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look up."}},
            "required": ["query"],
        },
    },
}
MAX_SEARCH_ROUNDS = 2  # the model may search, then must answer


def knowledge_message(hits: list[Hit], error: str | None) -> str:
    """What the knowledge base found, for the model (a system message, a tool result)."""
    if error is not None:
        return ("The knowledge base is unavailable right now: do not guess facts; say you "
                "cannot look it up at the moment and offer to transfer the caller.")  # fmt: skip
    if not hits:
        return "The knowledge base has nothing on the caller's question."
    lines = [f"[{h.entry.id}] {h.entry.title}: {h.entry.text}" for h in hits]
    return ("Knowledge base entries for the caller's question (answer from them; if they "
            "do not cover it, say so):\n" + "\n".join(lines))  # fmt: skip


def tool_schemas(names: Sequence[str] = TOOL_NAMES) -> list[dict[str, Any]]:
    """The ``tools`` request field for the named tools."""
    return [TOOL_SCHEMAS[n] for n in names]


@dataclass
class _PartialToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_EXCERPT else text[:_ERROR_EXCERPT] + "..."


def _check_arguments(name: str, args: dict[str, Any]) -> None:
    if name == "transfer":
        target = args.get("target")
        if not isinstance(target, str) or not target.strip():
            raise AgentError("tool call transfer: missing or empty string argument 'target'")
    elif name == "send_dtmf":
        digits = args.get("digits")
        if not isinstance(digits, str) or not _DIGITS_RE.match(digits):
            raise AgentError(f"tool call send_dtmf: 'digits' must match [0-9*#A-D]+: {digits!r}")
    elif name == "hang_up":
        reason = args.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise AgentError("tool call hang_up: 'reason' must be a string")


class OpenAIChatAgent:
    """An :class:`~actors.agent.AgentBrain` over an OpenAI-compatible chat endpoint.

    ``last_ttft_s`` holds the time from sending the request of the latest :meth:`respond`
    to its first content or tool-call delta (None until one arrives). It is per agent:
    when one agent serves several calls at once, it is the latest one's.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        system_prompt: str,
        greeting: str,
        tools_enabled: Sequence[str] = TOOL_NAMES,
        timeout_s: float = 30.0,
        client: httpx.AsyncClient | None = None,
        phrases: Sequence[str] = (),
    ) -> None:
        unknown = [t for t in tools_enabled if t not in TOOL_NAMES]
        if unknown:
            raise ValueError(f"tools_enabled: unknown tool {unknown[0]!r}")
        if timeout_s <= 0:
            raise ValueError("timeout_s: must be > 0")
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.url = f"{root}/v1/chat/completions"
        self.api_key = api_key
        self.model = model
        self.system_prompt = system_prompt
        self._greeting = greeting
        self.tools_enabled: tuple[str, ...] = tuple(dict.fromkeys(tools_enabled))
        self.timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None
        self._phrases = list(phrases)
        self.last_ttft_s: float | None = None
        self.knowledge: KnowledgeBase | None = None
        self.knowledge_agent = "default"

    def use_knowledge(self, knowledge: KnowledgeBase, agent: str, phrases: list[str]) -> None:
        """Look each question up in ``knowledge`` (``agent``'s entries) and put what it
        finds in the prompt; offer the model a ``search_knowledge`` tool."""
        self.knowledge, self.knowledge_agent = knowledge, agent
        self._phrases += phrases

    # AgentBrain

    def greeting(self) -> str:
        return self._greeting

    def phrases(self) -> list[str]:
        return list(dict.fromkeys([self._greeting, *self._phrases]))

    def request_body(
        self, history: Sequence[ChatMessage], caller_input: str, knowledge: str | None = None
    ) -> dict[str, Any]:
        """The JSON body :meth:`respond` POSTs (``knowledge``: what the lookup found)."""
        messages = [{"role": "system", "content": self.system_prompt}]
        if knowledge is not None:
            messages.append({"role": "system", "content": knowledge})
        messages += [{"role": m.role, "content": m.content} for m in history]
        messages.append({"role": "user", "content": caller_input})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        tools = tool_schemas(self.tools_enabled)
        if self.knowledge is not None:
            tools.append(SEARCH_SCHEMA)
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        return body

    async def respond(
        self, history: Sequence[ChatMessage], caller_input: str
    ) -> AsyncGenerator[AgentEvent, None]:
        knowledge = None
        if self.knowledge is not None:
            hits, lookup = await self.knowledge.lookup(self.knowledge_agent, caller_input)
            yield KnowledgeUsed(tuple(lookup.entries), lookup.lookup_s, lookup.error)
            if hits or lookup.error:  # nothing found: no message (the model can search)
                knowledge = knowledge_message(hits, lookup.error)
        body = self.request_body(history, caller_input, knowledge)
        for _ in range(MAX_SEARCH_ROUNDS):
            searches: list[tuple[str, ToolCall]] = []
            async with aclosing(self._complete(body)) as events:
                async for call_id, event in events:
                    if isinstance(event, ToolCall) and event.name == SEARCH_TOOL:
                        searches.append((call_id, event))
                    else:
                        yield event
            if not searches or self.knowledge is None:
                return
            body["messages"].append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": SEARCH_TOOL, "arguments": json.dumps(call.arguments)}}
                for call_id, call in searches]})  # fmt: skip
            for call_id, call in searches:
                query = str(call.arguments.get("query") or caller_input)
                hits, lookup = await self.knowledge.lookup(self.knowledge_agent, query)
                yield KnowledgeUsed(tuple(lookup.entries), lookup.lookup_s, lookup.error)
                found = knowledge_message(hits, lookup.error)
                body["messages"].append({"role": "tool", "tool_call_id": call_id, "content": found})
            # The last round offers no search: the model answers with what it has.
            body["tools"] = tool_schemas(self.tools_enabled)
            if not body["tools"]:
                del body["tools"], body["tool_choice"]

    async def _complete(
        self, body: dict[str, Any]
    ) -> AsyncGenerator[tuple[str, TextDelta | ToolCall], None]:
        """One streamed completion: its text pieces and (id, tool call)s as they come."""
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        client = self._get_client()
        self.last_ttft_s = None
        started = time.monotonic()
        tools: dict[int, _PartialToolCall] = {}
        try:
            async with client.stream(
                "POST",
                self.url,
                json=body,
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s),
            ) as response:
                if not 200 <= response.status_code < 300:
                    raise AgentError(
                        f"chat completions: HTTP {response.status_code}: "
                        f"{_excerpt(await self._read_some(response))}"
                    )
                async with aclosing(self._sse_data(response)) as events:
                    async for data in events:
                        if data == "[DONE]":
                            break
                        chunk = self._parse_chunk(data)
                        text, finish = self._take_delta(chunk, tools)
                        if self.last_ttft_s is None and (text or tools):
                            self.last_ttft_s = time.monotonic() - started
                        if text:
                            yield "", TextDelta(text)
                        if finish == "tool_calls":
                            for pair in self._finish_tools(tools):
                                yield pair
        except httpx.TimeoutException as exc:
            raise AgentError(
                f"chat completions: timed out after {self.timeout_s:g}s ({type(exc).__name__})"
            ) from exc
        except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL) as exc:
            raise AgentError(f"chat completions: {type(exc).__name__}: {exc}") from exc
        for pair in self._finish_tools(tools):
            yield pair

    # lifecycle

    async def aclose(self) -> None:
        """Close the HTTP client if this agent created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    # internals

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient()
        return self._client

    @staticmethod
    async def _read_some(response: httpx.Response) -> bytes:
        buf = b""
        async for piece in response.aiter_bytes():
            buf += piece
            if len(buf) > 4 * _ERROR_EXCERPT:
                break
        return buf

    @staticmethod
    async def _sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
        """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
        lines: list[str] = []
        async for line in response.aiter_lines():
            if not line:
                if lines:
                    yield "\n".join(lines)
                    lines = []
                continue
            if line.startswith(":"):
                continue  # comment / keep-alive
            name, _, value = line.partition(":")
            if name != "data":
                continue  # event:, id:, retry:
            lines.append(value[1:] if value.startswith(" ") else value)
            if lines == ["[DONE]"]:
                yield "[DONE]"
                return
        if lines:
            yield "\n".join(lines)

    @staticmethod
    def _parse_chunk(data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise AgentError(f"chat completions: malformed event JSON: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise AgentError(f"chat completions: event is not a JSON object: {data[:200]!r}")
        error = chunk.get("error")
        if error:
            message = error.get("message", error) if isinstance(error, dict) else error
            raise AgentError(f"chat completions: provider error: {message}")
        return chunk

    @staticmethod
    def _take_delta(
        chunk: dict[str, Any], tools: dict[int, _PartialToolCall]
    ) -> tuple[str, str | None]:
        """Content text and finish_reason of ``chunk``; tool-call fragments go to ``tools``."""
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return "", None  # e.g. a usage-only chunk
        choice = choices[0]
        delta = choice.get("delta")
        text = ""
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                text = content
            fragments = delta.get("tool_calls")
            if isinstance(fragments, list):
                for pos, frag in enumerate(fragments):
                    if not isinstance(frag, dict):
                        raise AgentError(f"chat completions: bad tool_calls delta: {frag!r}")
                    index = frag.get("index", pos)
                    if not isinstance(index, int):
                        raise AgentError(f"chat completions: bad tool call index: {index!r}")
                    part = tools.setdefault(index, _PartialToolCall())
                    if isinstance(frag.get("id"), str) and frag["id"]:
                        part.id = frag["id"]
                    function = frag.get("function")
                    if isinstance(function, dict):
                        name = function.get("name")
                        if isinstance(name, str) and name and name != part.name:
                            part.name += name
                        arguments = function.get("arguments")
                        if isinstance(arguments, str):
                            part.arguments.append(arguments)
        finish = choice.get("finish_reason")
        return text, finish if isinstance(finish, str) else None

    def _finish_tools(self, tools: dict[int, _PartialToolCall]) -> list[tuple[str, ToolCall]]:
        """The assembled (id, tool call)s, in index order; ``tools`` is emptied."""
        calls: list[tuple[str, ToolCall]] = []
        for index in sorted(tools):
            part = tools[index]
            name = part.name
            if not name:
                raise AgentError(f"tool call #{index}: no function name")
            searchable = name == SEARCH_TOOL and self.knowledge is not None
            if name not in self.tools_enabled and not searchable:
                raise AgentError(f"tool call #{index}: unknown tool {name!r}")
            raw = "".join(part.arguments).strip()
            if not raw:
                args: Any = {}
            else:
                try:
                    args = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise AgentError(
                        f"tool call {name}: arguments are not valid JSON: {raw[:200]!r}"
                    ) from exc
            if not isinstance(args, dict):
                raise AgentError(f"tool call {name}: arguments must be a JSON object: {raw!r}")
            _check_arguments(name, args)
            calls.append((part.id or f"call_{index}", ToolCall(name, args)))
        tools.clear()
        return calls
