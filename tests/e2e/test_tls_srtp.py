"""SIP over TLS and SRTP (SDES) with a real phone: baresip 1.0 calls the node over
TLS offering RTP/SAVP and hears the agent; the node calls baresip through a TLS
trunk whose certificate it verifies; a trunk that must present a client
certificate gets 403 without one. The RTP on the wire is captured from the
loopback interface: it must be SRTP (182-byte packets: 160 bytes of ciphertext and
a 10-byte tag, at ciphertext entropy), not plain G.711.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from loadtest.baresip import RATE, Baresip, read_wav
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.ports import LOOPBACK, free_port
from tests.certs import Issued, TestCa
from tests.e2e.api_client import ADMIN, api
from tests.e2e.conftest import PhoneFactory
from tests.e2e.phone_call import ESTABLISHED, PhoneCall, loud_regions
from tests.e2e.polling import wait_for
from tests.e2e.wire import LoopbackCapture, byte_entropy

pytestmark = pytest.mark.e2e

SRTP_PACKET = 12 + 160 + 10  # RTP header, 20 ms of G.711 (encrypted), HMAC-SHA1-80 tag
SUITE = "AES_CM_128_HMAC_SHA1_80"
CALLEE = "15557654321"  # the answering phone's user: what the trunk dials (strip_plus)
# The phones keep quiet, so the agent is not barged in on and talks on; their silence
# would be one byte value in the clear, so their SRTP's entropy tells just as well.
QUIET = np.zeros(20 * RATE, dtype=np.int16)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def node(
    voxswitch_nodes: NodeFactory, ca: TestCa, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    issued = ca.issue("node", [LOOPBACK, "localhost"])
    tls_port = free_port(udp=False, tcp=True)
    trunks = tmp_path_factory.mktemp("tls") / "trunks.json"
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUNKS_FILE": str(trunks)}
    args = ["--tls-port", str(tls_port), "--tls-cert", str(issued.cert),
            "--tls-key", str(issued.key), "--tls-ca", str(ca.path)]  # fmt: skip
    started = voxswitch_nodes.start("tls", NodeOptions(env=env, extra_args=args))
    started.tls_port = tls_port  # type: ignore[attr-defined]
    yield started


def tls_uri(node: NodeProcess) -> str:
    return f"sip:agent@{LOOPBACK}:{node.tls_port};transport=tls"  # type: ignore[attr-defined]


def check_srtp_both_ways(wire: LoopbackCapture, node: NodeProcess) -> None:
    """The call's RTP (even ports; RTCP is on the odd one above) both ways is SRTP,
    not G.711 in the clear."""
    ours = {d.source[1] for d in wire.datagrams
            if d.source[1] in range(*node.rtp_ports) and d.source[1] % 2 == 0}  # fmt: skip
    assert len(ours) == 1, f"want one RTP port of the node's in use, saw {ours}"
    (node_port,) = ours
    sent = [d for d in wire.datagrams if d.source[1] == node_port]
    got = [d for d in wire.datagrams if d.destination[1] == node_port]
    assert len(sent) >= 50 and len(got) >= 50, (len(sent), len(got))
    for direction in (sent, got):
        sizes = {len(d.payload) for d in direction}
        assert sizes == {SRTP_PACKET}, sizes  # 172 bytes would be plain 20 ms G.711
        entropy = byte_entropy([d.payload[12:] for d in direction])
        assert entropy > 7.9, f"{entropy:.2f} bits/byte: not ciphertext"


def test_phone_over_tls_with_srtp_hears_the_agent(
    node: NodeProcess, phones: PhoneFactory
) -> None:
    phone = phones(microphone=QUIET, transport="tls", mediaenc="srtp-mand")
    call = PhoneCall(node, phone)
    with LoopbackCapture(range(node.rtp_ports[0], node.rtp_ports[1] + 1)) as wire:
        phone.dial(tls_uri(node))
        assert phone.wait_for(ESTABLISHED, timeout_s=8) is not None, call.context()
        assert phone.wait_for(r"SRTP is Enabled \(cryptosuite=AES_CM_128_HMAC_SHA1_80\)", 2)
        time.sleep(4.0)  # the greeting plays
        call.hang_up()
    trace = phone.sip_trace()
    assert trace and all(m.source.startswith(f"{LOOPBACK}:") for m in trace)
    assert "TLS " in phone.log() and "\nUDP " not in phone.log()
    assert "RTP/SAVP" in phone.log()  # our answer's profile, as the phone saw it
    record = call.record()
    assert record["disposition"] == "completed"
    assert record["media"]["srtp"] == SUITE
    # baresip sends one RTCP APP "PINGPONG" in the clear to the RTCP port as the call
    # starts (a NAT pinhole opener): unauthenticated, so dropped; nothing else is.
    assert record["media"]["srtp_rejected"] <= 1
    heard = call.heard()
    assert sum(end - start for start, end in loud_regions(heard)) > 1.0, call.context()
    check_srtp_both_ways(wire, node)


def test_srtp_required_by_a_trunk_refuses_a_plain_offer(
    node: NodeProcess, phones: PhoneFactory
) -> None:
    put_trunk(node, "secure-only", host=LOOPBACK, port=5999, srtp="required",
              options_interval_s=0)  # fmt: skip
    try:
        phone = phones(microphone=QUIET, transport="tls")  # no mediaenc: plain RTP/AVP
        phone.dial(tls_uri(node))
        assert phone.wait_for(r"488 Not Acceptable Here", timeout_s=8), phone.describe()
    finally:
        assert api(node, "DELETE", "/v1/trunks/secure-only")[0] == 204


def put_trunk(node: NodeProcess, name: str, **fields: Any) -> None:
    status, body = api(node, "PUT", f"/v1/trunks/{name}", body=fields)
    assert status in (200, 201), body


def test_trunk_asking_for_a_client_certificate(
    node: NodeProcess, phones: PhoneFactory, ca: TestCa
) -> None:
    """403 without a certificate naming the trunk; established with one."""
    put_trunk(node, "pbx", host=LOOPBACK, port=5999, tls_client_cert=True,
              tls_peer_name="pbx.test", options_interval_s=0)  # fmt: skip
    try:
        anonymous = phones(microphone=QUIET, transport="tls", mediaenc="srtp-mand")
        anonymous.dial(tls_uri(node))
        assert anonymous.wait_for(r"403 Client Certificate Required", 8), anonymous.describe()
        anonymous.quit()
        other = ca.issue("other", ["other.test"]).combined  # verifies, but names another
        impostor = phones(microphone=QUIET, transport="tls", certificate=other)
        impostor.dial(tls_uri(node))
        assert impostor.wait_for(r"403 Client Certificate Required", 8), impostor.describe()
        impostor.quit()
        pbx = phones(microphone=QUIET, transport="tls", mediaenc="srtp-mand",
                     certificate=ca.issue("pbx", ["pbx.test"]).combined)  # fmt: skip
        call = PhoneCall(node, pbx)
        pbx.dial(tls_uri(node))
        assert pbx.wait_for(ESTABLISHED, timeout_s=8) is not None, call.context()
        time.sleep(1.0)  # baresip 1.0 misses a hang-up typed the moment a call is up
        call.hang_up()
        assert call.record()["trunk"] == "pbx"
    finally:
        assert api(node, "DELETE", "/v1/trunks/pbx")[0] == 204


def phone_answering(phones: PhoneFactory, certificate: Issued) -> Baresip:
    phone = phones(microphone=QUIET, transport="tls", mediaenc="srtp-mand",
                   certificate=certificate.combined, answer=True, user=CALLEE)  # fmt: skip
    phone.start()
    assert phone.wait_for(r"baresip is ready", timeout_s=5) is not None, phone.describe()
    return phone


def test_outbound_call_through_a_tls_trunk_verifies_it_and_encrypts(
    node: NodeProcess, phones: PhoneFactory, ca: TestCa
) -> None:
    phone = phone_answering(phones, ca.issue("carrier", ["carrier.test"]))
    put_trunk(node, "tls-carrier", host=LOOPBACK, port=phone.tls_port, transport="tls",
              srtp="required", tls_peer_name="carrier.test", strip_plus=True,
              options_interval_s=0)  # fmt: skip
    # The wrong name for the carrier's certificate: the TLS handshake fails, no call.
    put_trunk(node, "tls-wrong-name", host=LOOPBACK, port=phone.tls_port, transport="tls",
              tls_peer_name="elsewhere.test", options_interval_s=0)  # fmt: skip
    try:
        wrong = place(node, "tls-wrong-name")
        view = wait_for("the wrong-name call to end", lambda: ended(node, wrong), 15)
        assert view["disposition"] == "failed", view
        assert "certificate not accepted" in view["reason"], view
        assert "elsewhere.test" in view["reason"], view  # the name it was not valid for
        with LoopbackCapture(range(node.rtp_ports[0], node.rtp_ports[1] + 1)) as wire:
            call_id = place(node, "tls-carrier")
            assert phone.wait_for(r"Call established: sip:\+15550001111@", 10), phone.describe()
            wait_for("3 s of RTP both ways", lambda: len(wire.datagrams) > 300 or None, 10)
            assert api(node, "DELETE", f"/v1/calls/{call_id}")[0] in (200, 202, 204)
        view = wait_for("the call to end", lambda: ended(node, call_id), 10)
        assert view["disposition"] == "api_hangup", view
        record = wait_for("its record", lambda: next(
            (r for r in node.records() if r["call_id"] == call_id), None), 10)  # fmt: skip
        assert record["media"]["srtp"] == SUITE, record
        assert "TLS " in phone.log() and "RTP/SAVP" in phone.log()
        assert phone.wait_for(r"SRTP is Enabled \(cryptosuite=AES_CM_128_HMAC_SHA1_80\)", 1)
        phone.quit()
        heard = read_wav(phone.recording("dec"))  # decrypted by the phone: the agent
        assert sum(end - start for start, end in loud_regions(heard)) > 0.5, phone.describe()
        check_srtp_both_ways(wire, node)
    finally:
        for name in ("tls-carrier", "tls-wrong-name"):
            api(node, "DELETE", f"/v1/trunks/{name}")


def place(node: NodeProcess, trunk: str) -> str:
    body = {"to": f"+{CALLEE}", "from": "+15550001111", "trunk": trunk}
    status, answer = api(node, "POST", "/v1/calls", body=body)
    assert status == 202, answer
    return str(answer["call_id"])


def ended(node: NodeProcess, call_id: str) -> dict[str, Any] | None:
    status, view = api(node, "GET", f"/v1/calls/{call_id}")
    assert status == 200, view
    return dict(view) if view.get("state") == "ended" or view.get("disposition") else None

