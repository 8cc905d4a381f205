"""A live node fuzzed: mutated RFC 4475 messages and mutated valid requests over UDP
and TCP, malformed RTP/RTCP into a live call's ports (loadtest/fuzz.py's mutations,
drawn by hypothesis). The node answers OPTIONS after every case batch, keeps no call,
RTP leg or transaction at the end, and writes no traceback (the e2e fixture checks
the last)."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.fuzz import SDP, Fuzzer
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from tests.e2e.polling import wait_for
from tests.e2e.raw_sip import RawUdp

CASES = settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    # Hostile INVITEs are well framed: many are answered and, never ACKed, hold their
    # RTP port until the 2xx gives up (32 s): room for them and the media test's call.
    options = NodeOptions(media_timeout_s=5, max_call_duration_s=20, rtp_port_count=1000,
                          extra_args=["--agent", "none"])  # fmt: skip
    return voxswitch_nodes.start("fuzzed", options)


@pytest.fixture(scope="module")
def fuzzer(node: NodeProcess) -> Fuzzer:
    return Fuzzer(node, random.Random(0))


@CASES
@given(rng=st.randoms(use_true_random=False))
def test_mutated_sip_over_udp(fuzzer: Fuzzer, rng: random.Random) -> None:
    fuzzer.rng = rng
    fuzzer.send_udp(5)
    assert fuzzer.options_ok()


@CASES
@given(rng=st.randoms(use_true_random=False))
def test_mutated_sip_over_tcp(fuzzer: Fuzzer, rng: random.Random) -> None:
    fuzzer.rng = rng
    fuzzer.send_tcp(5)
    assert fuzzer.options_ok()


def test_malformed_media_into_a_live_call(node: NodeProcess, fuzzer: Fuzzer) -> None:
    phone = RawUdp(node)
    try:
        phone.send(phone.request("INVITE", call_id="media-fuzz", branch="z9hG4bK-mf1", body=SDP))
        ok = next(r for r in phone.responses(3.0) if r.status == 200)
        port = int(re.search(rb"m=audio (\d+)", ok.body).group(1))  # type: ignore[union-attr]
        phone.send(phone.request("ACK", call_id="media-fuzz", to_tag=ok.to.tag or ""))
        fuzzer.rng = random.Random(7)
        fuzzer.send_media(port, 300)  # RTP port
        fuzzer.send_media(port + 1, 100)  # RTCP port
        assert fuzzer.options_ok()
        view = node.health()
        assert view["active_calls"] != 0  # the call is still up after its garbage
        phone.send(phone.request("BYE", call_id="media-fuzz", to_tag=ok.to.tag or "", cseq=2))
        assert [r.status for r in phone.responses(3.0) if r.call_id == "media-fuzz"][-1] == 200
    finally:
        phone.close()


def test_after_the_fuzz_no_call_is_left(node: NodeProcess, fuzzer: Fuzzer) -> None:
    # A mutated INVITE that was answered and never ACKed ends at Timer H (32 s).
    wait_for("no call left", lambda: node.health()["active_calls"] == 0, timeout_s=60)
    # ... and nothing a call or a request took is held after the RFC timers (Timer
    # H/J: 32 s): no RTP leg, no transaction; no request our code failed on.
    def settled() -> bool:
        health = node.health()
        return health["media"]["legs"] == 0 and health["sip"]["transactions"] == 0

    wait_for("no leg or transaction left", settled, timeout_s=45)
    assert node.health()["sip"]["handler_errors"] == 0
    assert fuzzer.options_ok()
    assert fuzzer.sent >= 500
    fuzzer.close()
