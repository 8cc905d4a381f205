"""The API's connection bounds: the caps and one connection's deadlines on a fake
clock, then uvicorn's protocol with them wired in, over a fake transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.server import ServerState

from control_api.connections import (
    ApiLimits,
    ApiServerConfig,
    ConnectionBook,
    ConnectionWatch,
    GuardedH11Protocol,
)
from control_api.gate import parse_public_paths
from control_api.strict import attachment, finite_json, non_finite
from switch.config import ConfigError, load_settings

LIMITS = ApiLimits(max_connections=3, max_connections_per_source=2, header_timeout_s=10,
                   body_timeout_s=30, idle_timeout_s=5)  # fmt: skip


def test_book_caps_per_source_then_in_total_and_frees_on_close() -> None:
    book = ConnectionBook(LIMITS)
    assert book.admit("10.0.0.1") is None
    assert book.admit("10.0.0.1") is None
    assert book.admit("10.0.0.1") == "source_full"
    assert book.admit("10.0.0.2") is None
    assert book.admit("10.0.0.3") == "server_full"
    assert book.refused == {"source_full": 1, "server_full": 1}
    book.release("10.0.0.1")
    assert book.admit("10.0.0.3") is None
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        book.release(source)
    assert book.total == 0 and book.by_source == {}


def test_a_full_book_makes_room_by_closing_the_longest_waiting_connection() -> None:
    book, closed = ConnectionBook(LIMITS), []
    for name, source in (("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")):
        assert book.admit(source) is None
        book.waiting_for_request(name, source, lambda n=name: closed.append(n))
    book.working("a")  # a request under way: never taken
    assert book.admit("10.0.0.4") is None  # room made: b waited longest
    assert closed == ["b"] and book.evicted == 1
    assert book.total == 3 and "10.0.0.2" not in book.by_source
    book.working("c")
    assert book.admit("10.0.0.5") == "server_full"  # everyone is busy: refused
    assert book.refused["server_full"] == 1


def test_a_head_never_finished_expires_from_the_connection_opening() -> None:
    watch = ConnectionWatch(LIMITS, now=100.0)
    assert watch.expired(109.9) is None
    watch.received(105.0)  # a slowloris byte does not push the deadline
    assert watch.expired(110.0) == "head_timeout"


def test_phases_of_a_keep_alive_connection() -> None:
    watch = ConnectionWatch(LIMITS, now=0.0)
    watch.request_started(1.0, body_complete=False)
    assert (watch.phase, watch.expired(30.9), watch.expired(31.0)) == ("body", None, "body_timeout")
    watch.body_completed()
    assert watch.phase == "response" and watch.expired(10_000.0) is None  # a stream may last
    watch.response_completed(40.0)
    assert watch.expired(44.9) is None and watch.expired(45.0) == "idle_timeout"
    watch.received(44.0)  # the next request's first byte: its head has 10 s
    assert watch.phase == "head" and watch.expired(53.9) is None
    assert watch.expired(54.0) == "head_timeout"
    watch.request_started(50.0, body_complete=True)
    assert watch.phase == "response" and watch.deadline is None


def test_public_paths_parse_and_docs_open_the_schema() -> None:
    assert parse_public_paths("/health") == {"/health"}
    assert parse_public_paths(" /health, /metrics ,") == {"/health", "/metrics"}
    assert {"/openapi.json", "/docs"} <= parse_public_paths("/docs")
    assert parse_public_paths("") == frozenset()
    with pytest.raises(ValueError, match="not a path"):
        parse_public_paths("metrics")


def test_settings_reject_bad_api_bounds() -> None:
    settings = load_settings(env={})
    assert settings.api_public_paths == "/health"
    assert ApiLimits.from_settings(settings) == ApiLimits()
    for env in ({"VOXSWITCH_API_PUBLIC_PATHS": "/health,metrics"},
                {"VOXSWITCH_API_HEADER_TIMEOUT_S": "nan"},
                {"VOXSWITCH_API_IDLE_TIMEOUT_S": "0"},
                {"VOXSWITCH_API_MAX_CONNECTIONS_PER_SOURCE": "0"}):  # fmt: skip
        with pytest.raises(ConfigError, match="api_"):
            load_settings(env=env)


def test_attachment_names_encode_any_call_id() -> None:
    assert attachment("abc@host.wav") == (
        "attachment; filename=\"abc@host.wav\"; filename*=UTF-8''abc%40host.wav"
    )
    header = attachment('通話"\\\ud800.wav')  # non-Latin-1, quote, backslash, lone surrogate
    header.encode("latin-1")
    assert header.startswith('attachment; filename="_____.wav"; ')
    assert "filename*=UTF-8''%E9%80%9A%E8%A9%B1%22%5C%3F.wav" in header


def test_non_finite_numbers_are_found_by_path_even_deep() -> None:
    nan, inf = float("nan"), float("inf")
    found = list(non_finite({"a": [1.0, {"b": inf}], "c": nan, "d": "NaN"}))
    assert [where for where, _ in found] == [("a", 1, "b"), ("c",)]
    deep: Any = [inf]
    for _ in range(5000):  # deeper than the recursion limit
        deep = [deep]
    assert len(list(non_finite(deep))) == 1
    assert finite_json({"input": [nan, -inf, 1.5]}) == {"input": ["NaN", "-Infinity", 1.5]}


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.closed = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def protocol(config: ApiServerConfig, state: ServerState) -> GuardedH11Protocol:
    return GuardedH11Protocol(config, state, {}, _loop=asyncio.get_running_loop())


async def test_protocol_refuses_over_the_source_cap_with_json_and_closes() -> None:
    config = ApiServerConfig(hello, limits=ApiLimits(max_connections_per_source=1))
    state = ServerState()
    first, second = protocol(config, state), protocol(config, state)
    one, two = FakeTransport(("192.0.2.7", 1000)), FakeTransport(("192.0.2.7", 1001))
    first.connection_made(one)
    second.connection_made(two)
    assert two.written.startswith(b"HTTP/1.1 429 ")
    assert b"application/json" in two.written and b"api_max_connections_per_source" in two.written
    # Half-closed, it reads (and drops) the request a moment, so the answer is not reset.
    assert two.eof and not two.closed and config.book.lingering == 1
    second.data_received(b"GET / HTTP/1.1\r\n\r\n")
    second.eof_received()
    assert two.closed
    assert not one.closed and state.connections == {first}
    second.connection_lost(None)  # a refused connection frees nothing it never took
    first.connection_lost(None)
    assert config.book.total == 0 and config.book.lingering == 0


async def test_protocol_closes_a_silent_connection_at_the_header_timeout() -> None:
    limits = ApiLimits(header_timeout_s=0.05, idle_timeout_s=0.05)
    config = ApiServerConfig(hello, limits=limits)
    silent, answered = FakeTransport(("192.0.2.8", 1)), FakeTransport(("192.0.2.8", 2))
    protocol(config, ServerState()).connection_made(silent)
    served = protocol(config, ServerState())
    served.connection_made(answered)
    served.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.02)
    assert b"200 OK" in answered.written and not answered.closed
    await asyncio.sleep(0.1)
    assert silent.closed  # never sent a byte
    assert answered.closed  # idle after its answer


async def test_bytes_that_are_not_http_get_a_json_400_and_a_close() -> None:
    config = ApiServerConfig(hello, limits=ApiLimits())
    served, transport = protocol(config, ServerState()), FakeTransport(("192.0.2.9", 1))
    served.connection_made(transport)
    served.data_received(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400 ")
    assert b"application/json" in transport.written and b'{"detail": "bad HTTP' in transport.written
    assert transport.closed
    long_head = FakeTransport(("192.0.2.9", 2))
    served = protocol(config, ServerState())
    served.connection_made(long_head)
    served.data_received(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 20_000)  # over MAX_HEAD_BYTES
    assert long_head.written.startswith(b"HTTP/1.1 400 ") and long_head.closed
