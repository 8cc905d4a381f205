"""Bounds on SIP TCP/TLS connections: the caps, the idle and message timeouts on a fake
clock (sip.transport.limits), what a connection tells its listener as bytes arrive
(sip.transport.tcp, with a fake transport), and the listener's glue on loopback."""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from sip.message import Message, Response
from sip.parser import parse_message
from sip.transport.limits import ConnectionTable, StreamLimits
from sip.transport.tcp import TcpConnection, TcpServer
from sip.transport.tls import client_context, server_context
from switch.config import ConfigError, load_settings
from tests.certs import TestCa

OPTIONS = (
    b"OPTIONS sip:node@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:node@127.0.0.1>\r\nCall-ID: tcp-1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)
LIMITS = StreamLimits(
    max_connections=3, max_per_source=2, idle_timeout_s=300.0, message_timeout_s=10.0
)


def table(limits: StreamLimits = LIMITS, **kwargs: Any) -> ConnectionTable[str]:
    return ConnectionTable(limits, **kwargs)


# ---- caps and bans -------------------------------------------------------------------


def test_caps_refuse_new_connections_at_once_and_count_the_reason() -> None:
    t = table()
    assert t.admit("a1", "192.0.2.1", 0.0) is None
    assert t.admit("a2", "192.0.2.1", 0.0) is None
    assert t.admit("a3", "192.0.2.1", 0.0) == "max_per_source"
    assert t.admit("b1", "192.0.2.2", 0.0) is None
    assert t.admit("c1", "192.0.2.3", 0.0) == "max_connections"
    assert t.refused == {"max_per_source": 1, "max_connections": 1}
    # A connection that goes frees its place, for its source and in total.
    t.closed_by_peer("a1")
    t.closed_by_peer("a1")  # (told twice: no harm)
    assert t.admit("a3", "192.0.2.1", 0.0) is None
    assert t.status() == {
        "open": 3,
        "opened": 4,
        "refused": {"max_per_source": 1, "max_connections": 1},
        "closed": {},
    }


def test_exempt_sources_skip_the_per_source_cap_but_not_the_total() -> None:
    t = table(unlimited=lambda ip: ip == "10.0.0.5")  # a proxy in front of the node
    assert [t.admit(f"p{i}", "10.0.0.5", 0.0) for i in range(3)] == [None, None, None]
    assert t.admit("p3", "10.0.0.5", 0.0) == "max_connections"


def test_a_banned_source_is_refused_and_its_open_connections_are_closed() -> None:
    bans: set[str] = {"203.0.113.9"}
    t = table(banned=bans.__contains__)
    assert t.admit("x", "203.0.113.9", 0.0) == "banned"
    assert t.admit("y", "198.51.100.1", 0.0) is None
    assert not t.banned("y")
    bans.add("198.51.100.1")  # banned after it connected
    assert t.banned("y") and "y" not in t and len(t) == 0
    assert t.refused == {"banned": 1} and t.closed == {"banned": 1}


def test_our_own_connections_are_never_refused_nor_held_to_the_source_cap() -> None:
    t = table(banned=lambda ip: True)
    for i in range(5):  # past both caps, from a "banned" address: we opened them
        assert t.admit(f"out{i}", "192.0.2.1", 0.0, inbound=False) is None
    assert len(t) == 5
    assert t.admit("in", "192.0.2.7", 0.0) == "banned"
    # They owe no first message: only idleness closes them.
    assert t.expired(299.0) == []
    assert sorted(t.expired(300.0)) == [(f"out{i}", "idle") for i in range(5)]


# ---- the message timeout (slowloris) ---------------------------------------------------


def test_a_connection_that_never_completes_a_message_is_closed_after_the_timeout() -> None:
    t = table()
    t.admit("a", "192.0.2.1", 100.0)
    assert t.expired(109.9) == []
    assert t.expired(110.0) == [("a", "slow")]
    assert "a" not in t and t.closed == {"slow": 1}


def test_keepalives_do_not_stand_in_for_the_first_message() -> None:
    t = table()
    t.admit("a", "192.0.2.1", 0.0)
    t.received("a", 5.0, messages=0, keepalives=1, incomplete=False)
    t.received("a", 9.0, messages=0, keepalives=1, incomplete=False)
    assert t.expired(10.0) == [("a", "slow")]


def test_a_message_started_must_end_within_the_timeout_however_it_dribbles() -> None:
    t = table()
    t.admit("a", "192.0.2.1", 0.0)
    t.received("a", 1.0, messages=1, keepalives=0, incomplete=False)
    assert t.expired(50.0) == []  # whole messages: no deadline
    t.received("a", 60.0, messages=0, keepalives=0, incomplete=True)  # first bytes
    for now in (62.0, 64.0, 66.0, 68.0):  # a byte now and then does not extend it
        t.received("a", now, messages=0, keepalives=0, incomplete=True)
    assert t.expired(69.9) == []
    assert t.expired(70.0) == [("a", "slow")]


def test_a_message_that_ends_in_time_clears_its_deadline() -> None:
    t = table()
    t.admit("a", "192.0.2.1", 0.0)
    t.received("a", 1.0, messages=1, keepalives=0, incomplete=False)
    t.received("a", 2.0, messages=0, keepalives=0, incomplete=True)
    t.received("a", 11.0, messages=1, keepalives=0, incomplete=False)
    assert t.expired(100.0) == []


def test_a_message_begun_in_the_read_that_ended_another_gets_its_own_deadline() -> None:
    t = table()
    t.admit("a", "192.0.2.1", 0.0)
    t.received("a", 2.0, messages=0, keepalives=0, incomplete=True)
    t.received("a", 8.0, messages=1, keepalives=0, incomplete=True)  # one ended, one began
    assert t.expired(17.9) == []
    assert t.expired(18.0) == [("a", "slow")]


# ---- the idle timeout --------------------------------------------------------------------


def test_an_idle_connection_is_closed_and_messages_or_keepalives_keep_it() -> None:
    t = table()
    for key in ("talks", "pings", "quiet"):
        t.admit(key, "192.0.2.1" if key != "quiet" else "192.0.2.2", 0.0)
        t.received(key, 1.0, messages=1, keepalives=0, incomplete=False)
    t.received("talks", 200.0, messages=1, keepalives=0, incomplete=False)
    t.received("pings", 250.0, messages=0, keepalives=1, incomplete=False)  # RFC 5626
    assert t.expired(300.9) == []
    assert t.expired(301.0) == [("quiet", "idle")]
    assert t.expired(500.0) == [("talks", "idle")]
    assert t.expired(550.0) == [("pings", "idle")]
    assert t.closed == {"idle": 3}


def test_a_connection_a_live_call_runs_on_is_not_idle() -> None:
    t = table()
    t.admit("call", "192.0.2.1", 0.0)
    t.admit("none", "192.0.2.2", 0.0)
    for key in ("call", "none"):
        t.received(key, 0.0, messages=1, keepalives=0, incomplete=False)
    asked = 0
    calls_on: set[str] = {"call"}

    def in_use() -> set[str]:
        nonlocal asked
        asked += 1
        return calls_on

    assert t.expired(100.0, in_use) == [] and asked == 0  # asked only when one is due
    assert t.expired(300.0, in_use) == [("none", "idle")] and asked == 1  # once a sweep
    assert t.expired(3600.0, in_use) == [] and asked == 2  # an hour's call: still open
    calls_on.clear()  # the call ended: the connection ages from the last sweep that saw it
    assert t.expired(3899.0, in_use) == []
    assert t.expired(3900.0, in_use) == [("call", "idle")]


def test_zero_turns_caps_and_timeouts_off() -> None:
    t = table(StreamLimits(0, 0, 0.0, 0.0))
    for i in range(100):
        assert t.admit(i, "192.0.2.1", 0.0) is None  # type: ignore[arg-type]
    assert t.expired(1e9) == []


def test_limits_refuse_nonsense() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="idle_timeout_s"):
            StreamLimits(idle_timeout_s=bad)
        with pytest.raises(ValueError, match="message_timeout_s"):
            StreamLimits(message_timeout_s=bad)
    with pytest.raises(ValueError, match="max_per_source"):
        StreamLimits(max_per_source=-1)


def test_the_sweep_runs_often_enough_for_the_shortest_timeout() -> None:
    assert StreamLimits().sweep_every_s == 1.0
    assert StreamLimits(message_timeout_s=0.5).sweep_every_s == 0.1
    assert StreamLimits(idle_timeout_s=0.0, message_timeout_s=0.0).sweep_every_s == 1.0


def test_a_flood_of_idle_connections_is_swept_in_one_pass() -> None:
    t = table(StreamLimits(max_connections=0, max_per_source=0))
    for i in range(3000):
        t.admit(f"c{i}", "192.0.2.1", i / 1000)  # accepted over 3 s
    assert len(t.expired(12.0)) == 2001  # those accepted by 2.0 s
    assert len(t.expired(13.0)) == 999 and len(t) == 0


# ---- a connection and its listener (no sockets) -------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return {"peername": ("192.0.2.1", 5070)}.get(name)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close


class FakeListener:
    def __init__(self, *, banned: bool = False) -> None:
        self.reads: list[tuple[int, int, bool]] = []
        self.banned = banned

    def opened(self, conn: TcpConnection) -> bool:
        return True

    def framed(self, conn: TcpConnection, messages: int, keepalives: int, incomplete: bool) -> bool:
        self.reads.append((messages, keepalives, incomplete))
        return not self.banned

    def lost(self, conn: TcpConnection) -> None:
        pass


def connection(
    listener: FakeListener, max_message_bytes: int = 65535
) -> tuple[TcpConnection, FakeTransport, list[Message]]:
    got: list[Message] = []
    conn = TcpConnection(lambda m, c: got.append(m), listener, max_message_bytes=max_message_bytes)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, got


def test_a_connection_tells_its_listener_what_each_read_framed() -> None:
    listener = FakeListener()
    conn, transport, got = connection(listener)
    conn.data_received(OPTIONS[:30])
    conn.data_received(OPTIONS[30:])
    conn.data_received(b"\r\n\r\n")
    conn.data_received(OPTIONS + OPTIONS[:5])
    conn.data_received(b"\r\n")  # half a keepalive: neither a message nor a ping yet
    assert listener.reads == [
        (0, 0, True), (1, 0, False), (0, 1, False), (1, 0, True), (0, 0, True),
    ]  # fmt: skip
    assert len(got) == 2 and transport.written == b"\r\n"  # the pong


def test_a_body_past_the_cap_is_answered_413_and_the_connection_closed() -> None:
    conn, transport, got = connection(FakeListener(), max_message_bytes=1024)
    big = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 1025")
    conn.data_received(big)
    assert got == [] and transport.closed
    response = parse_message(transport.written)
    assert isinstance(response, Response) and response.status == 413


def test_a_connection_whose_source_was_banned_is_closed_unread() -> None:
    conn, transport, got = connection(FakeListener(banned=True))
    conn.data_received(OPTIONS)
    assert got == [] and transport.closed


# ---- the listener on loopback ---------------------------------------------------------------


def _port(server: TcpServer) -> int:
    assert server._server is not None
    return int(server._server.sockets[0].getsockname()[1])


async def _closed_by_peer(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout_s) == b""
    except ConnectionResetError:
        return True


async def test_the_listener_sweeps_idle_and_slow_connections() -> None:
    limits = StreamLimits(idle_timeout_s=0.4, message_timeout_s=0.2)
    got: list[Message] = []
    server = TcpServer(lambda m, c: got.append(m), limits=limits)
    await server.start("127.0.0.1", 0)
    try:
        silent = await asyncio.open_connection("127.0.0.1", _port(server))
        talker = await asyncio.open_connection("127.0.0.1", _port(server))
        talker[1].write(OPTIONS)
        assert await _closed_by_peer(silent[0], 1.0)
        assert await _closed_by_peer(talker[0], 1.5)
        assert len(got) == 1 and server.connections == set()
        assert server.status()["closed"] == {"slow": 1, "idle": 1}
        for _, writer in (silent, talker):
            writer.close()
    finally:
        server.close()


async def test_a_refused_tls_connection_is_reset_before_any_handshake(tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    cert = ca.issue("server", ["127.0.0.1"])
    banned = {"127.0.0.1"}
    server = TcpServer(lambda m, c: None, name="TLS",
                       server_ssl=server_context(str(cert.cert), str(cert.key)),
                       banned=banned.__contains__)  # fmt: skip
    await server.start("127.0.0.1", 0)
    client = client_context(ca=str(ca.path))
    try:
        with pytest.raises((ConnectionError, ssl.SSLError)):
            reader, _ = await asyncio.open_connection("127.0.0.1", _port(server), ssl=client)
            await reader.read()
        assert server.status()["refused"] == {"banned": 1}
        assert "handshake" not in server.status()["closed"]  # type: ignore[operator]
        banned.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(server), ssl=client)
        writer.write(OPTIONS)
        await writer.drain()
        assert server.status()["open"] == 1
        writer.close()
        # A plain TCP peer on the TLS port fails its handshake: counted, not logged loud.
        with socket.create_connection(("127.0.0.1", _port(server))) as raw:
            raw.sendall(OPTIONS)
            await asyncio.sleep(0.2)
        for _ in range(50):
            if server.status()["closed"]:
                break
            await asyncio.sleep(0.02)
        assert server.status()["closed"] == {"handshake": 1}
    finally:
        server.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_connections_the_peer_drops_at_once_are_forgotten_at_once(loop_kind: str) -> None:
    """A peer that connects and resets before the connection is made (uvloop then calls
    neither connection_made nor connection_lost) must not keep a place in the caps."""

    async def flood() -> dict[str, object]:
        server = TcpServer(lambda m, c: None, limits=StreamLimits(max_per_source=0))
        await server.start("127.0.0.1", 0)
        try:
            for _ in range(100):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sock.connect(("127.0.0.1", _port(server)))
                sock.close()  # a reset, likely before the node has accepted it
            for _ in range(100):
                await asyncio.sleep(0.01)
                if server.status()["opened"] == 100 and server.status()["open"] == 0:
                    break
            return server.status()
        finally:
            server.close()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        status = uvloop.run(flood())
    else:
        status = asyncio.run(flood())
    assert status["opened"] == 100 and status["open"] == 0, status


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIP_TCP_IDLE_TIMEOUT_S", "nan"),
        ("SIP_TCP_IDLE_TIMEOUT_S", "inf"),
        ("SIP_TCP_MESSAGE_TIMEOUT_S", "-1"),
        ("SIP_TCP_MAX_CONNECTIONS", "-5"),
        ("SIP_TCP_MAX_PER_SOURCE", "-1"),
        ("SIP_TCP_MAX_MESSAGE_BYTES", "100"),
    ],
)
def test_bad_connection_settings_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name.lower()):
        load_settings(env={f"VOXSWITCH_{name}": value})


def test_the_connection_settings_default_to_the_limits_defaults() -> None:
    s = load_settings(env={})
    assert StreamLimits(
        s.sip_tcp_max_connections, s.sip_tcp_max_per_source, s.sip_tcp_idle_timeout_s,
        s.sip_tcp_message_timeout_s, s.sip_tcp_max_message_bytes,
    ) == StreamLimits()  # fmt: skip
