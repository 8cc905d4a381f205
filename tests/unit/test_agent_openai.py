"""The OpenAI-compatible client against a minimal HTTP/1.1 + SSE server run in the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from actors.agent import AgentError, AgentEvent, ChatMessage, TextDelta, ToolCall
from switch.agents import OpenAIChatAgent

WAIT_S = 5.0  # upper bound for anything the tests wait on; never reached when passing


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Reply:
    """Writes an HTTP/1.1 response with a chunked body, one write (and drain) per chunk."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def head(self, status: int = 200, content_type: str = "text/event-stream") -> None:
        reason = {200: "OK", 401: "Unauthorized", 500: "Internal Server Error"}.get(status, "X")
        self.writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n".encode()
        )
        await self.writer.drain()

    async def raw(self, data: bytes | str) -> None:
        payload = data.encode() if isinstance(data, str) else data
        self.writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        await self.writer.drain()

    async def event(self, obj: dict[str, Any] | str, delay: float = 0.01) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        await self.raw(f"data: {data}\n\n")
        await asyncio.sleep(delay)

    async def content(self, text: str) -> None:
        await self.event(_chunk({"content": text}))

    async def end(self, done: bool = True) -> None:
        if done:
            await self.event("[DONE]", delay=0)
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _tool_frag(index: int, args: str, name: str | None = None) -> dict[str, Any]:
    frag: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if name is not None:
        frag.update(id=f"call_{index}", type="function")
        frag["function"]["name"] = name
    return _chunk({"tool_calls": [frag]})


Handler = Callable[[Request, Reply, asyncio.StreamReader], Awaitable[None]]


@dataclass
class FakeServer:
    handler: Handler
    requests: list[Request] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            request_line, *header_lines = head.split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            req = Request(method, path, headers, json.loads(raw) if raw else {})
            self.requests.append(req)
            await self.handler(req, Reply(writer), reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.finished.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[FakeServer]:
    fake = FakeServer(handler)
    fake.server = await asyncio.start_server(fake._conn, "127.0.0.1", 0)
    try:
        yield fake
    finally:
        fake.server.close()
        await fake.server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


def make_agent(base_url: str, client: httpx.AsyncClient, **kw: Any) -> OpenAIChatAgent:
    args: dict[str, Any] = {
        "api_key": "sk-test",
        "model": "test-model",
        "system_prompt": "You are a phone agent.",
        "greeting": "Hello!",
        "client": client,
    }
    args.update(kw)
    return OpenAIChatAgent(base_url, **args)


async def collect(agent: OpenAIChatAgent, text: str = "hi") -> list[AgentEvent]:
    async def run() -> list[AgentEvent]:
        return [ev async for ev in agent.respond([], text)]

    return await asyncio.wait_for(run(), WAIT_S)


HISTORY = [
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "What's up?"),
    ChatMessage("assistant", "Not much."),
]


# --- streaming text -----------------------------------------------------------------


async def test_content_streams_in_order_before_the_server_finishes(
    client: httpx.AsyncClient,
) -> None:
    go = asyncio.Event()

    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.event(_chunk({"role": "assistant", "content": ""}))
        await reply.content("Hello")
        await asyncio.wait_for(go.wait(), WAIT_S)  # hold the rest until the test saw "Hello"
        await reply.content(" there,")
        await reply.content(" caller!")
        await reply.event(_chunk({}, finish="stop"))
        await reply.end()

    async with serve(handler) as srv:
        agent = make_agent(srv.base_url, client)
        events: list[AgentEvent] = []
        gen = agent.respond(HISTORY, "Tell me a joke")
        async for ev in gen:
            if not events:
                assert not srv.finished.is_set()  # first delta arrived mid-stream
                assert agent.last_ttft_s is not None and agent.last_ttft_s >= 0
                go.set()
            events.append(ev)

    assert events == [TextDelta("Hello"), TextDelta(" there,"), TextDelta(" caller!")]
    [req] = srv.requests
    assert req.method == "POST"
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["content-type"] == "application/json"
    body = req.body
    assert body["stream"] is True
    assert body["model"] == "test-model"
    assert body["messages"] == [
        {"role": "system", "content": "You are a phone agent."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What's up?"},
        {"role": "assistant", "content": "Not much."},
        {"role": "user", "content": "Tell me a joke"},
    ]
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in body["tools"]}
    assert set(tools) == {"hang_up", "transfer", "send_dtmf"}
    assert tools["transfer"]["required"] == ["target"]
    assert tools["send_dtmf"]["properties"]["digits"]["pattern"] == "^[0-9*#A-D]+$"
    assert "reason" in tools["hang_up"]["properties"]


async def test_sse_lines_split_across_tcp_writes_and_comments(
    client: httpx.AsyncClient,
) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.raw(": keep-alive\n\n")
        data = "data: " + json.dumps(_chunk({"content": "Half"}))
        await reply.raw(data[:17])
        await asyncio.sleep(0.02)
        await reply.raw(data[17:] + "\n\n")
        await reply.raw("event: message\ndata:" + json.dumps(_chunk({"content": " way"})) + "\n\n")
        await reply.end()

    async with serve(handler) as srv:
        events = await collect(make_agent(srv.base_url, client))
    assert events == [TextDelta("Half"), TextDelta(" way")]


# --- tool calls ---------------------------------------------------------------------


async def test_tool_call_assembled_from_fragments(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.content("One moment.")
        await reply.event(_tool_frag(0, "", name="transfer"))
        for piece in ['{"tar', 'get": "si', "p:op@", 'x"}']:
            await reply.event(_tool_frag(0, piece))
        await reply.event(_chunk({}, finish="tool_calls"))
        await reply.end()

    async with serve(handler) as srv:
        events = await collect(make_agent(srv.base_url, client))
    assert events == [TextDelta("One moment."), ToolCall("transfer", {"target": "sip:op@x"})]


async def test_parallel_tool_calls_and_eof_without_done(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.event(_tool_frag(1, '{"reason": ', name="hang_up"))
        await reply.event(_tool_frag(0, '{"digits":', name="send_dtmf"))
        await reply.event(_tool_frag(0, ' "12#"}'))
        await reply.event(_tool_frag(1, '"done"}'))
        await reply.end(done=False)  # no [DONE], no finish_reason: flushed at EOF

    async with serve(handler) as srv:
        events = await collect(make_agent(srv.base_url, client))
    assert events == [
        ToolCall("send_dtmf", {"digits": "12#"}),
        ToolCall("hang_up", {"reason": "done"}),
    ]


async def test_hang_up_with_empty_arguments(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.event(_tool_frag(0, "", name="hang_up"))
        await reply.event(_chunk({}, finish="tool_calls"))
        await reply.end()

    async with serve(handler) as srv:
        assert await collect(make_agent(srv.base_url, client)) == [ToolCall("hang_up", {})]


@pytest.mark.parametrize(
    ("name", "fragments", "message"),
    [
        ("transfer", ['{"target": "sip:', "op@x"], "not valid JSON"),
        ("transfer", [""], "target"),
        ("transfer", ['["sip:op@x"]'], "JSON object"),
        ("send_dtmf", ['{"digits": "12x"}'], "digits"),
        ("dance", ["{}"], "unknown tool"),
    ],
)
async def test_bad_tool_calls_raise(
    client: httpx.AsyncClient, name: str, fragments: list[str], message: str
) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.event(_tool_frag(0, "", name=name))
        for piece in fragments:
            await reply.event(_tool_frag(0, piece))
        await reply.end()

    async with serve(handler) as srv:
        with pytest.raises(AgentError, match=message):
            await collect(make_agent(srv.base_url, client))


async def test_disabled_tools_are_not_offered_nor_accepted(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.event(_tool_frag(0, '{"target": "sip:x@y"}', name="transfer"))
        await reply.end()

    async with serve(handler) as srv:
        agent = make_agent(srv.base_url, client, tools_enabled=["hang_up"])
        with pytest.raises(AgentError, match="unknown tool 'transfer'"):
            await collect(agent)
        [req] = srv.requests
        assert [t["function"]["name"] for t in req.body["tools"]] == ["hang_up"]

        agent = make_agent(srv.base_url, client, tools_enabled=())
        assert "tools" not in agent.request_body([], "hi")


# --- errors -------------------------------------------------------------------------


async def test_http_error_status_raises_with_status_and_body(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head(401, "application/json")
        await reply.raw('{"error": {"message": "Incorrect API key provided"}}')
        await reply.end(done=False)

    async with serve(handler) as srv:
        with pytest.raises(AgentError, match="401") as info:
            await collect(make_agent(srv.base_url, client))
    assert "Incorrect API key provided" in str(info.value)


async def test_malformed_sse_json_raises(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.content("Fine so far")
        await reply.event('{"choices": [{"delta": {"content": "oops"')
        await reply.end()

    async with serve(handler) as srv:
        events: list[AgentEvent] = []
        with pytest.raises(AgentError, match="malformed"):
            async for ev in make_agent(srv.base_url, client).respond([], "hi"):
                events.append(ev)
    assert events == [TextDelta("Fine so far")]


async def test_error_object_in_stream_raises(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.event({"error": {"message": "model overloaded"}})
        await reply.end()

    async with serve(handler) as srv:
        with pytest.raises(AgentError, match="model overloaded"):
            await collect(make_agent(srv.base_url, client))


async def test_connection_refused_raises(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        raise AssertionError("not reached")

    async with serve(handler) as srv:
        url = srv.base_url
    with pytest.raises(AgentError):
        await collect(make_agent(url, client))


async def test_read_timeout_raises(client: httpx.AsyncClient) -> None:
    async def handler(req: Request, reply: Reply, reader: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.content("Hmm")
        await reader.read(1)  # stall until the client gives up and hangs up

    async with serve(handler) as srv:
        with pytest.raises(AgentError, match="timed out"):
            await collect(make_agent(srv.base_url, client, timeout_s=0.2))


# --- cancellation -------------------------------------------------------------------


async def test_cancel_mid_stream_closes_the_connection(client: httpx.AsyncClient) -> None:
    saw_eof = asyncio.Event()

    async def handler(req: Request, reply: Reply, reader: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.content("I was saying")
        try:
            data = await asyncio.wait_for(reader.read(1), WAIT_S)
        except ConnectionError:
            data = b""
        if data == b"":
            saw_eof.set()

    first = asyncio.Event()
    got: list[AgentEvent] = []

    async def consume(agent: OpenAIChatAgent) -> None:
        async for ev in agent.respond([], "hi"):
            got.append(ev)
            first.set()

    async with serve(handler) as srv:
        task = asyncio.create_task(consume(make_agent(srv.base_url, client)))
        await asyncio.wait_for(first.wait(), WAIT_S)
        task.cancel()  # the caller barged in
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(saw_eof.wait(), 2.0)
    assert got == [TextDelta("I was saying")]


# --- construction -------------------------------------------------------------------


async def test_v1_suffix_no_key_and_own_client() -> None:
    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        await reply.content("ok")
        await reply.end()

    async with serve(handler) as srv:
        agent = OpenAIChatAgent(
            srv.base_url + "/v1/",
            None,
            "m",
            "sys",
            "Hi there.",
            phrases=["pizza", "hours"],
        )
        try:
            assert await collect(agent) == [TextDelta("ok")]
        finally:
            await agent.aclose()
    [req] = srv.requests
    assert req.path == "/v1/chat/completions"
    assert "authorization" not in req.headers
    assert agent.greeting() == "Hi there."
    assert agent.phrases() == ["Hi there.", "pizza", "hours"]


def test_rejects_unknown_tool_names() -> None:
    with pytest.raises(ValueError, match="tools_enabled"):
        OpenAIChatAgent("http://x", None, "m", "s", "g", tools_enabled=["fly"])


# ---- the knowledge base --------------------------------------------------------------


async def test_knowledge_goes_in_the_prompt_and_search_knowledge_runs_a_lookup(
    client: httpx.AsyncClient,
) -> None:
    from actors.agent import KnowledgeUsed
    from switch.agents import DEMO_AGENT_PATH
    from switch.knowledge import KnowledgeBase
    from switch.knowledge.embedded import EmbeddedStore
    from switch.knowledge.loaders import load_file

    kb = KnowledgeBase(EmbeddedStore())
    await kb.add("default", load_file(DEMO_AGENT_PATH))

    async def handler(req: Request, reply: Reply, _: asyncio.StreamReader) -> None:
        await reply.head()
        if len(req.body["messages"]) == 3:  # system, knowledge, user: search once more
            await reply.event(_tool_frag(0, '{"query": "payment methods"}', SEARCH))
            await reply.event(_chunk({}, finish="tool_calls"))
        else:
            await reply.content("We take cards.")
        await reply.end()

    from switch.agents.openai_chat import SEARCH_TOOL as SEARCH

    async with serve(handler) as srv:
        agent = make_agent(srv.base_url, client)
        agent.use_knowledge(kb, "default", [])
        events = await collect(agent, "can you bring food to my home")
    first, second = srv.requests[0].body, srv.requests[1].body
    knowledge = first["messages"][1]
    assert knowledge["role"] == "system" and "[delivery]" in knowledge["content"]
    assert SEARCH in [t["function"]["name"] for t in first["tools"]]
    # The model's search ran: its call and our result go back; no third search offered.
    call, result = second["messages"][-2:]
    assert call["tool_calls"][0]["function"]["name"] == SEARCH
    assert result["role"] == "tool" and "[payment]" in result["content"]
    assert result["tool_call_id"] == call["tool_calls"][0]["id"]
    assert SEARCH not in [t["function"]["name"] for t in second["tools"]]
    used = [e for e in events if isinstance(e, KnowledgeUsed)]
    assert [u.entries[:1] for u in used] == [("delivery",), ("payment",)]
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("We take cards.")]
    await kb.aclose()
