"""The source guard on a live node: the real scanner (sipvicious) learns nothing and is
banned, the ban is on the API and in /metrics and can be lifted; a digest brute force
is banned after its allowed failures; a replayed Authorization is refused."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from sip.auth import answer_challenge
from sip.message import Response
from tests.e2e.api_client import ADMIN, api
from tests.e2e.raw_sip import SDP, RawUdp
from tests.e2e.test_metrics import scrape

# Loopback is trusted by default (the operator's own tools); these nodes trust nothing.
UNTRUSTING = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUSTED_SOURCES": ""}


def sipvicious(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name(f"sipvicious_{tool}")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=90,
                          check=False, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture
def raw_for() -> Iterator[type[RawUdp]]:
    made: list[RawUdp] = []

    class Tracked(RawUdp):
        def __init__(self, node: NodeProcess) -> None:
            super().__init__(node)
            made.append(self)

    yield Tracked
    for sock in made:
        sock.close()


def test_sipvicious_finds_nothing_and_is_banned(
    voxswitch_nodes: NodeFactory, raw_for: type[RawUdp]
) -> None:
    node = voxswitch_nodes.start("scanned", NodeOptions(media_timeout_s=0, env=UNTRUSTING))
    port = str(node.sip_port)
    svmap = sipvicious("svmap", "-p", port, "127.0.0.1")
    assert "found nothing" in svmap.stderr + svmap.stdout, svmap
    svwar = sipvicious("svwar", "-p", port, "-e100-200", "127.0.0.1")
    assert "found nothing" in svwar.stderr + svwar.stdout, svwar
    svcrack = sipvicious("svcrack", "-p", port, "-u", "100", "-r", "1-100", "127.0.0.1")
    assert "found nothing" in svcrack.stderr + svcrack.stdout, svcrack
    health = node.health()
    # The first request named the scanner: everything after it was dropped unread.
    assert health["refused"] == {"source_scanner": 1}
    assert health["sip"]["received"] == health["sip"]["dropped"]
    assert health["sip"]["responses_by_code"] == {}  # not one answer went out
    status, body = api(node, "GET", "/v1/bans")
    assert status == 200 and body["count"] == 1
    [ban] = body["bans"]
    assert ban["ip"] == "127.0.0.1" and ban["reason"] == "scanner"
    assert ban["until"] - ban["since"] == pytest.approx(600)
    m = scrape(node)
    assert m[("voxswitch_bans_active", ())] == 1
    assert m[("voxswitch_calls_refused_total", (("reason", "source_scanner"),))] == 1
    # A phone on that address gets nothing until the ban is lifted.
    phone = raw_for(node)
    phone.send(phone.request("OPTIONS"))
    assert phone.responses(1.0) == []
    assert api(node, "DELETE", "/v1/bans/127.0.0.1")[0] == 200
    assert api(node, "DELETE", "/v1/bans/127.0.0.1")[0] == 404
    phone.send(phone.request("OPTIONS"))
    assert [r.status for r in phone.responses(2.0)] == [200]


def test_bans_by_hand_over_the_api(voxswitch_nodes: NodeFactory, raw_for: type[RawUdp]) -> None:
    node = voxswitch_nodes.start("banned", NodeOptions(media_timeout_s=0, env=UNTRUSTING))
    status, body = api(node, "POST", "/v1/bans", body={"ip": "127.0.0.1", "duration_s": 2})
    assert status == 201 and body["reason"] == "api"
    bad = api(node, "POST", "/v1/bans", body={"ip": "not-an-ip"})
    assert bad[0] == 422 and bad[1]["detail"][0]["loc"][-1] == "ip"
    assert api(node, "GET", "/v1/bans", key=None)[0] == 401
    phone = raw_for(node)
    phone.send(phone.request("OPTIONS"))
    assert phone.responses(1.0) == []
    time.sleep(2.0)  # the ban ends by itself
    phone.send(phone.request("OPTIONS"))
    assert [r.status for r in phone.responses(2.0)] == [200]


def _invite(phone: RawUdp, extra: str = "", wait_s: float = 1.5) -> Response | None:
    """An INVITE and its final answer (None: no answer), ACKed as a UAC must (§17.1.1.3:
    else the node retransmits its 401 until Timer H)."""
    branch, call_id = f"z9hG4bK-{uuid.uuid4().hex}", uuid.uuid4().hex
    phone.send(phone.request("INVITE", branch=branch, call_id=call_id, extra=extra, body=SDP))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for response in phone.responses(deadline - time.monotonic()):
            if response.call_id == call_id and response.status >= 200:
                phone.send(phone.request("ACK", branch=branch, call_id=call_id,
                                         to_tag=response.to.tag or ""))  # fmt: skip
                return response
    return None


def _challenge(phone: RawUdp) -> str:
    final = _invite(phone)
    assert final is not None and final.status == 401
    return final.headers.get_all("www-authenticate")[-1]  # the MD5 one


def test_a_digest_brute_force_is_banned_after_its_allowed_failures(
    voxswitch_nodes: NodeFactory, raw_for: type[RawUdp]
) -> None:
    env = {**UNTRUSTING, "VOXSWITCH_SIP_AUTH_REALM": "voxswitch.test",
           "VOXSWITCH_SIP_AUTH_USERS": "alice:right-password",
           "VOXSWITCH_AUTH_MAX_FAILURES": "3"}  # fmt: skip
    node = voxswitch_nodes.start("cracked", NodeOptions(media_timeout_s=0, env=env))
    phone = raw_for(node)
    uri = f"sip:agent@{node.sip_address}"
    challenge = _challenge(phone)
    answers = []
    for guess in ("123456", "password", "alice", "qwerty", "letmein", "right-password"):
        credentials = answer_challenge(challenge, method="INVITE", uri=uri,
                                       username="alice", password=guess)  # fmt: skip
        final = _invite(phone, f"Authorization: {credentials}\r\n")
        answers.append(final.status if final is not None else None)
    # Three wrong guesses are answered 401, the fourth too and it bans the source: no
    # answer any more, not even to the right password.
    assert answers == [401, 401, 401, 401, None, None]
    bans = api(node, "GET", "/v1/bans")[1]["bans"]
    assert [(b["ip"], b["reason"]) for b in bans] == [("127.0.0.1", "auth")]
    assert node.health()["refused"]["source_auth"] == 1


def test_a_replayed_authorization_is_refused(
    voxswitch_nodes: NodeFactory, raw_for: type[RawUdp]
) -> None:
    env = {"VOXSWITCH_SIP_AUTH_REALM": "voxswitch.test",
           "VOXSWITCH_SIP_AUTH_USERS": "alice:right-password"}  # fmt: skip
    node = voxswitch_nodes.start("replayed", NodeOptions(media_timeout_s=0, ring_ms=4000, env=env))
    phone = raw_for(node)
    uri = f"sip:agent@{node.sip_address}"
    credentials = answer_challenge(_challenge(phone), method="INVITE", uri=uri,
                                   username="alice", password="right-password")  # fmt: skip
    extra = f"Authorization: {credentials}\r\n"
    phone.send(phone.request("INVITE", body=SDP, extra=extra, call_id="first-call"))
    assert 180 in [r.status for r in phone.responses(1.5, until_final=False)]
    # Someone who captured that INVITE sends its Authorization again in a new call.
    replayed = _invite(phone, extra)
    assert replayed is not None and replayed.status == 401
    assert "replayed" in node.stderr_text()
