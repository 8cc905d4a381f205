"""Issue 23, finding 1 against a live node: an INVITE that fails after ``100 Trying``
must not leak its RTP leg or its transactions. The node trusts no source (loopback
included), records every call and publishes events to its spool, as in the attack
that found the leak; the hostile INVITEs come from loadtest/fuzz.py, drawn by
hypothesis. After their RFC timers the node holds no leg, no transaction and no call,
answered every INVITE with a final response and wrote no traceback."""

from __future__ import annotations

import random
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.fuzz import SDP, hostile_invite, valid_request
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from tests.e2e.polling import wait_for

# Timer H (64 x T1 = 32 s) ends a final response never ACKed; B for ours.
RFC_TIMERS_S = 40.0


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    options = NodeOptions(
        media_timeout_s=3, max_call_duration_s=6,
        extra_args=["--agent", "none", "--trusted-sources", "", "--record", "all",
                    "--source-max-rps", "100000"],
    )  # fmt: skip
    return voxswitch_nodes.start("hardened", options)


class Caller:
    """A UDP socket that sends INVITEs and reads every response to them."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.finals: dict[bytes, int] = {}  # Call-ID -> its final status

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.node.sip_port))

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            status = int(data[8:11]) if data.startswith(b"SIP/2.0 ") else 0
            call_id = _header(data, b"Call-ID")
            if status < 200 or call_id is None or b"INVITE" not in (_header(data, b"CSeq") or b""):
                continue
            self.finals.setdefault(call_id, status)
            self.send(_request(data, b"ACK"))  # as a UA would: ends Timer G/H early
            if status < 300:
                self.send(_request(data, b"BYE"))  # and hang up: the leg must go at once

    def close(self) -> None:
        self.sock.close()


def _header(data: bytes, name: bytes) -> bytes | None:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(name.lower() + b":"):
            return line.split(b":", 1)[1].strip()
    return None


def _request(response: bytes, method: bytes) -> bytes:
    """The ACK (same branch) or BYE (a new one) for an INVITE's final response."""
    head = response.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    keep = [ln for ln in head if ln.split(b":")[0].lower() in (b"via", b"from", b"to", b"call-id")]
    cseq = (_header(response, b"CSeq") or b"1 INVITE").split()[0]
    if method == b"BYE":
        keep = [ln.replace(b"branch=", b"branch=z9hG4bK-bye") if ln.lower().startswith(b"via")
                else ln for ln in keep]  # fmt: skip
        cseq = str(int(cseq) + 1).encode()
    lines = [method + b" sip:agent@127.0.0.1 SIP/2.0", *keep, b"CSeq: " + cseq + b" " + method,
             b"Max-Forwards: 70", b"Content-Length: 0"]  # fmt: skip
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _no_call(node: NodeProcess) -> bool:
    health = node.health()
    return health["active_calls"] == 0 and health["media"]["legs"] == 0


def _settled(node: NodeProcess) -> bool:
    """No call, no leg and (after their RFC timers) no transaction."""
    return _no_call(node) and node.health()["sip"]["transactions"] == 0


def test_bad_bytes_in_call_setup_leak_nothing(node: NodeProcess) -> None:
    """The attack that found it: 20 INVITEs with non-UTF-8 bytes where call setup
    reads them (X- headers for the events, the Call-ID for the recording's name)."""
    caller = Caller(node)
    before = node.health()
    try:
        sent = []
        for i in range(20):
            invite = valid_request("INVITE", "127.0.0.1", node.sip_port, caller.port, SDP)
            if i % 2:
                invite = invite.replace(b"CSeq:", b"X-Account: \xed\xa0\x80caf\xe9\r\nCSeq:", 1)
            else:
                invite = invite.replace(
                    b"Call-ID: fz-", b"Call-ID: \xff\xfe-" + bytes([48 + i % 10]), 1
                )
            sent.append(_header(invite, b"Call-ID"))
            caller.send(invite)
        caller.read(2.0)
        assert all(call_id in caller.finals for call_id in sent), caller.finals
        garbled = {caller.finals[c] for c in sent[::2]}
        assert garbled == {400}  # a garbled Call-ID is the peer's fault
        # Every call answered was hung up: its leg is free at once, not after a timer.
        wait_for("no leg or call left", lambda: _no_call(node), timeout_s=5)
    finally:
        caller.close()
    after = node.health()
    assert after["sip"].get("handler_errors", 0) == before["sip"].get("handler_errors", 0)


@settings(
    max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(rng=st.randoms(use_true_random=False))
def test_random_hostile_invites_each_get_a_final_answer(
    node: NodeProcess, rng: random.Random
) -> None:
    caller = Caller(node)
    try:
        sent = []
        for _ in range(5):
            invite = hostile_invite("127.0.0.1", node.sip_port, caller.port, rng)
            sent.append(_header(invite, b"Call-ID"))
            caller.send(invite)
        caller.read(0.6)
        # Every INVITE the node could parse was answered with a final response (a
        # message too broken to answer is dropped, RFC 3261 §18.2.1: none here).
        missing = [c for c in sent if c not in caller.finals]
        assert not missing, f"no final response for {missing}"
    finally:
        caller.close()


def test_after_the_hostile_invites_nothing_is_held(node: NodeProcess) -> None:
    wait_for("no leg, transaction or call left", lambda: _settled(node),
             timeout_s=RFC_TIMERS_S)  # fmt: skip
    health = node.health()
    assert health["sip"].get("handler_errors", 0) == 0
    assert node.tracebacks() == []
