"""Issue 23, finding 4 (SIP half): a live node bounds its SIP/TCP connections.

Idle connections, slowloris ones and connections past the caps are closed (or refused
at once), a banned source cannot connect, a connection a live call runs on outlives
the idle timeout, the node answers OPTIONS over UDP and TCP throughout, and its file
descriptors come back to where they were. Clients connect from several loopback
addresses (127.0.0.x) so the per-source cap can be told from the total one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from sip.message import Response
from sip.parser import StreamFramer
from tests.e2e.api_client import ADMIN, api
from tests.e2e.raw_sip import SDP, RawUdp

pytestmark = pytest.mark.e2e

IDLE_S = 3.0
MESSAGE_S = 2.0
PER_SOURCE = 50
TOTAL = 500
SETTINGS = {
    "VOXSWITCH_API_KEY": ADMIN,
    "VOXSWITCH_TRUSTED_SOURCES": "",  # loopback too is held to the per-source cap
    "VOXSWITCH_SIP_TCP_IDLE_TIMEOUT_S": str(IDLE_S),
    "VOXSWITCH_SIP_TCP_MESSAGE_TIMEOUT_S": str(MESSAGE_S),
    "VOXSWITCH_SIP_TCP_MAX_PER_SOURCE": str(PER_SOURCE),
    "VOXSWITCH_SIP_TCP_MAX_CONNECTIONS": str(TOTAL),
}
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start("tcp-bounds", NodeOptions(media_timeout_s=0, env=SETTINGS))


def fds(node: NodeProcess) -> int:
    assert node.process is not None
    return len(os.listdir(f"/proc/{node.process.pid}/fd"))


def tcp_stats(node: NodeProcess) -> dict[str, Any]:
    sip: Any = node.health()["sip"]
    return dict(sip["tcp_connections"])


def request(node: NodeProcess, method: str, local: tuple[str, int], **headers: str) -> bytes:
    call_id = headers.pop("call_id", uuid.uuid4().hex)
    body = headers.pop("body", "")
    cseq = headers.pop("cseq", f"1 {method}")
    to = headers.pop("to", f"<sip:agent@{node.sip_address}>")
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    content = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:agent@{node.sip_address};transport=tcp SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bK-{uuid.uuid4().hex[:12]}\r\n"
        f"From: <sip:tester@{local[0]}>;tag=t{local[1]}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq}\r\n"
        f"Contact: <sip:tester@{local[0]}:{local[1]};transport=tcp>\r\nMax-Forwards: 70\r\n"
        f"{extra}{content}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def connect(node: NodeProcess, source: str) -> Conn:
    return await asyncio.open_connection("127.0.0.1", node.sip_port, local_addr=(source, 0))


def local_of(conn: Conn) -> tuple[str, int]:
    host, port = conn[1].get_extra_info("sockname")[:2]
    return host, port


async def responses(
    conn: Conn, until: Callable[[Response], bool], timeout_s: float = 3.0
) -> list[Response]:
    framer = StreamFramer()
    out: list[Response] = []
    deadline = time.monotonic() + timeout_s
    while not (out and until(out[-1])):
        data = await asyncio.wait_for(conn[0].read(65535), deadline - time.monotonic())
        assert data, f"closed before the response; got {out}"
        out += [m for m in framer.feed(data) if isinstance(m, Response)]
    return out


async def options_over_tcp(node: NodeProcess, source: str) -> int:
    conn = await connect(node, source)
    conn[1].write(request(node, "OPTIONS", local_of(conn)))
    [answer] = await responses(conn, lambda r: r.status >= 200)
    conn[1].close()
    return answer.status


def options_over_udp(node: NodeProcess) -> int:
    phone = RawUdp(node)
    try:
        phone.send(phone.request("OPTIONS"))
        return next(r.status for r in phone.responses(2.0))
    finally:
        phone.close()


async def closed_within(conn: Conn, timeout_s: float) -> float:
    """Seconds until the node closes this connection (reset or end of stream)."""
    began = time.monotonic()
    try:
        while await asyncio.wait_for(conn[0].read(65535), timeout_s):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - began


async def refused(opening: Awaitable[Conn]) -> bool:
    """A connection the node resets at once (whether the reset beats the handshake)."""
    try:
        conn = await opening
    except ConnectionResetError:
        return True
    return await closed_within(conn, 1.0) < 1.0


async def slowloris(conn: Conn, message: bytes, every_s: float = 0.25) -> None:
    """A byte at a time: never a whole message before the node gives up."""
    for octet in message[:-1]:
        if conn[1].is_closing() or conn[0].at_eof():
            return
        conn[1].write(bytes([octet]))
        await asyncio.sleep(every_s)


async def settled(node: NodeProcess) -> None:
    """Until the node holds no SIP/TCP connection (it has seen our closes)."""
    for _ in range(50):
        if tcp_stats(node)["open"] == 0:
            return
        await asyncio.sleep(0.1)


async def test_idle_and_slow_connections_are_closed_past_the_caps_and_fds_return(
    node: NodeProcess,
) -> None:
    assert await options_over_tcp(node, "127.0.0.1") == 200
    await settled(node)
    await asyncio.sleep(0.2)  # the API connection /health came on is closed too
    baseline, before = fds(node), tcp_stats(node)
    sources = [f"127.0.0.{10 + i}" for i in range(TOTAL // PER_SOURCE)]
    # Fill the node to its cap: per source, 30 silent, 10 slowloris, 10 that talk once.
    silent: list[Conn] = []
    slow: list[Conn] = []
    talkers: list[Conn] = []
    for source in sources:
        for kind in [silent] * 30 + [slow] * 10 + [talkers] * 10:
            kind.append(await connect(node, source))
        if source == sources[0]:  # past its cap, a source's new connection is reset at once
            assert await refused(connect(node, source))
    began = time.monotonic()
    lorises = [
        asyncio.create_task(slowloris(c, request(node, "OPTIONS", local_of(c)))) for c in slow
    ]
    for conn in talkers:
        conn[1].write(request(node, "OPTIONS", local_of(conn)))
    for conn in talkers:
        assert [r.status for r in await responses(conn, lambda r: r.status >= 200)] == [200]
    talked = time.monotonic()
    assert tcp_stats(node)["open"] == TOTAL
    peak = fds(node)
    assert TOTAL - 2 <= peak - baseline <= TOTAL + 10, (baseline, peak)  # (API sockets)
    assert await refused(connect(node, "127.0.0.99"))  # past the node's cap: reset too
    refusals = Counter(tcp_stats(node)["refused"]) - Counter(before["refused"])
    assert refusals == {"max_per_source": 1, "max_connections": 1}
    assert options_over_udp(node) == 200  # UDP is not held up meanwhile

    # The silent and the slow are closed after the message timeout (from the accept,
    # from a slow message's first byte), the talkers after the idle timeout.
    waits = await asyncio.gather(*(closed_within(c, MESSAGE_S + 3) for c in silent + slow))
    closed_slow = time.monotonic() - began
    assert max(waits) < MESSAGE_S + 2.5, max(waits)
    assert closed_slow >= MESSAGE_S - 0.5
    assert await options_over_tcp(node, "127.0.0.2") == 200  # room again for others
    waits = await asyncio.gather(*(closed_within(c, IDLE_S + 3) for c in talkers))
    idle_for = time.monotonic() - talked
    assert IDLE_S - 0.5 <= idle_for < IDLE_S + 2.5, idle_for
    for task in lorises:
        task.cancel()
    for conn in silent + slow + talkers:
        conn[1].close()

    stats = tcp_stats(node)
    closes = Counter(stats["closed"]) - Counter(before["closed"])
    assert closes == {"slow": len(silent) + len(slow), "idle": len(talkers)}
    assert stats["open"] == 0
    for _ in range(50):
        if fds(node) <= baseline:
            break
        await asyncio.sleep(0.1)
    assert fds(node) <= baseline, (baseline, fds(node))
    assert options_over_udp(node) == 200


async def test_a_banned_source_cannot_connect_and_its_open_connection_is_closed(
    node: NodeProcess,
) -> None:
    before = tcp_stats(node)
    kept = await connect(node, "127.0.0.31")
    for ip in ("127.0.0.30", "127.0.0.31"):
        status, _ = api(node, "POST", "/v1/bans", body={"ip": ip, "duration_s": 30})
        assert status == 201
    try:
        assert await refused(connect(node, "127.0.0.30"))
        # Its next message closes the connection it already had, unanswered.
        kept[1].write(request(node, "OPTIONS", local_of(kept)))
        assert await closed_within(kept, 1.0) < 1.0
        stats = tcp_stats(node)
        assert stats["refused"].get("banned", 0) == before["refused"].get("banned", 0) + 1
        assert stats["closed"].get("banned", 0) == before["closed"].get("banned", 0) + 1
        assert await options_over_tcp(node, "127.0.0.32") == 200  # others are served
    finally:
        for ip in ("127.0.0.30", "127.0.0.31"):
            api(node, "DELETE", f"/v1/bans/{ip}")
        kept[1].close()


async def test_a_connection_with_a_live_call_outlives_the_idle_timeout(node: NodeProcess) -> None:
    conn = await connect(node, "127.0.0.40")
    local = local_of(conn)
    call_id = uuid.uuid4().hex
    conn[1].write(request(node, "INVITE", local, call_id=call_id, body=SDP))
    answers = await responses(conn, lambda r: r.status >= 200, timeout_s=10.0)
    ok = answers[-1]
    assert ok.status == 200, [r.status for r in answers]
    to = ok.headers.get("to") or ""
    conn[1].write(request(node, "ACK", local, call_id=call_id, to=to, cseq="1 ACK"))
    # Silent (no RTP either: media_timeout_s is 0) for longer than the idle timeout.
    with pytest.raises(asyncio.TimeoutError):
        while True:  # whatever the node sends in the call, it keeps the connection
            assert await asyncio.wait_for(conn[0].read(65535), IDLE_S + 1.5)
    bye = request(node, "BYE", local, call_id=call_id, to=to, cseq="2 BYE")
    conn[1].write(bye)
    answers = await responses(
        conn, lambda r: r.status >= 200 and "BYE" in (r.headers.get("cseq") or "")
    )
    assert answers[-1].status == 200
    # The call over, the connection ages from its end like any other.
    assert await closed_within(conn, IDLE_S + 3) >= IDLE_S - 1.5
    conn[1].close()


def test_a_connection_opened_and_closed_at_once_leaves_nothing(node: NodeProcess) -> None:
    baseline = fds(node)
    for _ in range(200):  # (past the per-source cap, some are reset as they connect)
        with contextlib.suppress(ConnectionResetError):
            socket.create_connection(("127.0.0.1", node.sip_port), timeout=2).close()
    # The descriptor closes a loop turn before the table hears of it (connection_lost
    # is called soon after): wait for both, descriptors first (the /health request the
    # table is read with opens a socket of its own).
    for _ in range(50):
        if fds(node) <= baseline and tcp_stats(node)["open"] == 0:
            break
        time.sleep(0.1)
    for _ in range(20):
        if fds(node) <= baseline:
            break
        time.sleep(0.1)
    assert fds(node) <= baseline
    assert tcp_stats(node)["open"] == 0
