"""Issue 23, finding 7 against a live node that trusts no source (loopback included):
a scanner that calls itself a phone (svwar with a normal User-Agent) is banned for
what it does, within a few requests and before any call; no response names the
product; behind a trusted proxy the real source (X-Source-IP) is the one banned, and
the header from anyone else changes nothing; with Redis a sweep spread over the
nodes behind a balancer adds up."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from sip.message import Response
from sip.parser import parse_message
from switch.guard.conduct import ConductLimits
from switch.guard.shared import SharedGuardStore
from switch.guard.sources import SourceGuard, SourceLimits
from tests.e2e.api_client import ADMIN, api
from tests.e2e.raw_sip import SDP

UNTRUSTING = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUSTED_SOURCES": ""}
PHONE_UA = "Linphone/5.2.0 (belle-sip/5.2.0)"
LIMIT = 10  # ban_max_unknown_targets' default
ANSWER_S = 0.4  # a loopback node answers in milliseconds; silence this long is a drop


class Scanner:
    """svwar's requests, one extension each, from an address of our choosing."""

    def __init__(self, node: NodeProcess, host: str = "127.0.0.1") -> None:
        self.node = node
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]

    def ask(self, method: str, ext: str, *, source: str | None = None) -> list[Response]:
        """Send one request; what came back until its final response or ANSWER_S."""
        call_id = uuid.uuid4().hex
        target = f"sip:{ext}@{self.node.sip_address}" if ext else f"sip:{self.node.sip_address}"
        extra = f"X-Source-IP: {source}\r\n" if source is not None else ""
        body = SDP if method == "INVITE" else ""
        kind = "Content-Type: application/sdp\r\n" if body else ""
        data = (
            f"{method} {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK-{call_id};rport\r\n"
            f'From: "{ext}" <sip:{ext or "x"}@{self.host}>;tag={call_id[:8]}\r\n'
            f"To: <{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
            f"Contact: <sip:{ext or 'x'}@{self.host}:{self.port}>\r\nMax-Forwards: 70\r\n"
            f"User-Agent: {PHONE_UA}\r\n{extra}{kind}Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        self.sock.sendto(data, ("127.0.0.1", self.node.sip_port))
        out: list[Response] = []
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline:
            try:
                reply = parse_message(self.sock.recv(65535))
            except TimeoutError:
                continue
            if isinstance(reply, Response) and reply.call_id == call_id:
                out.append(reply)
                if reply.status >= 200:
                    if method == "INVITE":  # ACK it, as svwar does (ends Timer G/H)
                        self.sock.sendto(_ack(data, reply), ("127.0.0.1", self.node.sip_port))
                    break
        return out

    def sweep(self, method: str, first: int, count: int, **kw: str) -> list[list[int]]:
        return [[r.status for r in self.ask(method, str(ext), **kw)]
                for ext in range(first, first + count)]  # fmt: skip

    def close(self) -> None:
        self.sock.close()


def _ack(invite: bytes, final: Response) -> bytes:
    head = invite.split(b"\r\n\r\n")[0].decode().split("\r\n")
    uri = head[0].split()[1]
    keep = [h for h in head[1:] if h.split(":")[0] in ("Via", "From", "Call-ID", "Max-Forwards")]
    to = f"To: {final.headers.get('to')}"
    return ("\r\n".join([f"ACK {uri} SIP/2.0", *keep, to, "CSeq: 1 ACK",
                         "Content-Length: 0"]) + "\r\n\r\n").encode()  # fmt: skip


@pytest.fixture
def scanners() -> Iterator[list[Scanner]]:
    made: list[Scanner] = []
    yield made
    for scanner in made:
        scanner.close()


def bans(node: NodeProcess) -> list[tuple[str, str]]:
    status, body = api(node, "GET", "/v1/bans")
    assert status == 200
    return sorted((b["ip"], b["reason"]) for b in body["bans"])


def test_an_invite_sweep_with_a_phones_user_agent_is_banned_before_any_call(
    voxswitch_nodes: NodeFactory, scanners: list[Scanner]
) -> None:
    # Digest is on, as on a node that takes calls from registered users: every
    # extension is challenged, none answered.
    env = {**UNTRUSTING, "VOXSWITCH_SIP_AUTH_REALM": "voxswitch.test",
           "VOXSWITCH_SIP_AUTH_USERS": "alice:right-password"}  # fmt: skip
    node = voxswitch_nodes.start("swept", NodeOptions(media_timeout_s=0, env=env))
    scanner = Scanner(node)
    scanners.append(scanner)
    answers = scanner.sweep("INVITE", 100, LIMIT + 5)  # svwar -m INVITE -e100-114
    assert answers == [[401]] * LIMIT + [[]] * 5  # the 11th extension: banned, unanswered
    assert bans(node) == [("127.0.0.1", "targets")]
    health = node.health()
    assert health["refused"] == {"source_targets": 1}
    assert health["active_calls"] == 0 and health["calls_offered"] == 0
    assert health["sip"]["responses_by_code"] == {"401": LIMIT}  # type: ignore[index]


def test_an_options_sweep_on_an_open_node_is_banned_and_learns_no_product(
    voxswitch_nodes: NodeFactory, scanners: list[Scanner]
) -> None:
    node = voxswitch_nodes.start("open", NodeOptions(media_timeout_s=0, env=UNTRUSTING))
    scanner = Scanner(node)
    scanners.append(scanner)
    keepalive = scanner.ask("OPTIONS", "")  # svmap's probe: a request to no one
    assert [r.status for r in keepalive] == [200]
    answered = keepalive + [
        r for ext in range(100, 100 + LIMIT) for r in scanner.ask("OPTIONS", str(ext))
    ]
    assert [r.status for r in answered] == [200] * (LIMIT + 1)
    assert scanner.ask("OPTIONS", str(100 + LIMIT)) == []
    assert bans(node) == [("127.0.0.1", "targets")]
    for response in answered:  # svmap reads Server/User-Agent: nothing to read
        assert response.headers.get("server") is None
        assert response.headers.get("user-agent") is None
        head = bytes(response).split(b"\r\n\r\n")[0].lower()
        assert b"voxswitch" not in head, head


def test_the_real_source_is_taken_from_a_trusted_proxy_only(
    voxswitch_nodes: NodeFactory, scanners: list[Scanner]
) -> None:
    env = {**UNTRUSTING, "VOXSWITCH_TRUSTED_PROXIES": "127.0.0.2"}
    node = voxswitch_nodes.start("proxied", NodeOptions(media_timeout_s=0, env=env))
    proxy, stranger = Scanner(node, "127.0.0.2"), Scanner(node, "127.0.0.1")
    scanners.extend((proxy, stranger))
    # A scanner behind the proxy: banned by its own address, and then answered 403
    # (the proxy would take silence for a dead node).
    swept = proxy.sweep("OPTIONS", 100, LIMIT + 2, source="198.51.100.7")
    assert swept == [[200]] * LIMIT + [[403]] * 2
    assert bans(node) == [("198.51.100.7", "targets")]
    # Another caller behind the same proxy, and the proxy's own probe, go on.
    assert [r.status for r in proxy.ask("OPTIONS", "100", source="198.51.100.8")] == [200]
    assert [r.status for r in proxy.ask("OPTIONS", "")] == [200]
    # The header from anyone else is a spoof: the sweep is its own, and so is the ban.
    spoofed = stranger.sweep("OPTIONS", 200, LIMIT + 1, source="198.51.100.9")
    assert spoofed == [[200]] * LIMIT + [[]]
    assert bans(node) == [("127.0.0.1", "targets"), ("198.51.100.7", "targets")]


def _cluster(url: str) -> tuple[SharedGuardStore, SharedGuardStore]:
    """Two nodes' guards sharing one Redis (a prefix of their own: no other test's)."""
    prefix = f"test:guard:{uuid.uuid4().hex}:"
    limits = SourceLimits(trusted=(), conduct=ConductLimits(max_unknown_targets=LIMIT))
    return (
        SharedGuardStore(SourceGuard(limits, clock=time.time, node="a"), url, prefix=prefix),
        SharedGuardStore(SourceGuard(limits, clock=time.time, node="b"), url, prefix=prefix),
    )


async def test_a_sweep_spread_over_the_nodes_behind_a_balancer_adds_up(
    services: dict[str, str],
) -> None:
    a, b = _cluster(services["VOXSWITCH_REDIS_URL"])
    scanner, phone = "198.51.100.66", "198.51.100.70"
    try:
        # 9 extensions on each node, under the limit on each; 5 of them the same on
        # both (counted once): 13 distinct across the cluster.
        for ext in [*range(100, 105), *range(200, 204)]:
            assert a.guard.unknown_target(scanner, str(ext)) is None
        for ext in [*range(100, 105), *range(300, 304)]:
            assert b.guard.unknown_target(scanner, str(ext)) is None
        await a.sync()
        assert not a.guard.banned(scanner)  # 9 so far in Redis
        await b.sync()
        assert [(x.ip, x.reason) for x in b.guard.active_bans()] == [(scanner, "targets")]
        await b.sync()  # the ban made on b's count reaches Redis, then node a
        await a.sync()
        assert a.guard.banned(scanner)
        # A phone challenged on both nodes, authenticating each time: never adds up.
        for n in range(8):
            assert a.guard.answered(phone, 401, f"+4930{n}") is None
            assert b.guard.answered(phone, 401, f"+4940{n}") is None
        a.guard.authenticated(phone)
        b.guard.authenticated(phone)
        await a.sync()
        await b.sync()
        assert not a.guard.banned(phone) and not b.guard.banned(phone)
    finally:
        await a.close()
        await b.close()
