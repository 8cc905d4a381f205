"""An adopted call's actor against the bytes on the wire: the re-INVITE it builds from
a dead node's checkpoint, and what each answer to it does (2xx: the call goes on
here; 481: gone, no BYE; no answer: BYE; 491: tried again).

The SIP endpoint is the real one, over a ``UdpFlow`` whose datagrams the test reads;
the media leg is a real one on loopback (no media workers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import actors.adopted
from actors.adopted import AdoptedCallActor, rebuild_dialog, stand_in_invite
from actors.call import CallConfig, CallRecord, CallState, LocalAddress
from actors.messages import AckArrived, RequestArrived
from loadtest.ports import free_port_range
from sip.endpoint import Flow, ServerTransaction, SipEndpoint
from sip.message import Request, Response
from sip.parser import parse_message
from sip.sdp import SessionDescription
from sip.transport.udp import UdpFlow
from switch.mediaplant.leg import MediaPlant

ANSWERED_AGO = -10.0  # the call was answered on the dead node 10 s before
PROXY = ("127.0.0.1", 5999)  # the record-routing balancer the dead node spoke through
OLD_SDP = (
    "v=0\r\no=voxswitch 4242 7 IN IP4 127.0.0.1\r\ns=voxswitch\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


def snapshot() -> dict[str, Any]:
    now = time.time()
    return {
        "call_id": "adopt-1@test",
        "node_id": "node-b",
        "state": "CONFIRMED",
        "saved_at": now - 0.5,
        "dialog": {
            "call_id": "adopt-1@test", "local_tag": "ours", "remote_tag": "theirs",
            "local_header": "<sip:agent@127.0.0.1>;tag=ours",
            "remote_header": "<sip:caller@127.0.0.1>;tag=theirs",
            "local_seq": 40, "remote_seq": 1, "remote_target": "sip:caller@127.0.0.1:5070",
            "route_set": ["<sip:127.0.0.1:5999;lr;ftag=theirs>"], "secure": False,
            "local_contact": "<sip:voxswitch@127.0.0.1:5090>",
        },
        "transport": "UDP",
        "peer": list(PROXY),
        "media": {
            "local_port": 30000, "codec": "PCMU", "payload_type": 0, "telephone_event_pt": 101,
            "remote_rtp": ["127.0.0.1", 40000], "srtp": None, "local_sdp": OLD_SDP,
            "packets_sent": 500, "packets_received": 480,
        },
        "record": {
            "direction": "inbound", "from_uri": "sip:caller@127.0.0.1", "to_uri": "sip:agent@x",
            "trunk": "", "agent": "none", "offered_at": now - 12, "answered_at": ANSWERED_AGO + now,
            "sip_code": 200, "codec": "PCMU", "sip_headers": {}, "metadata": {},
            "campaign_id": "", "webhook_url": "", "transfer_target": "", "nodes": ["node-b"],
        },
        "conversation": None,
    }  # fmt: skip


class Wire:
    """The datagrams the endpoint sends, as messages; in-dialog requests go to the actor."""

    def __init__(self) -> None:
        self.sent: list[Request | Response] = []
        self.actor: AdoptedCallActor | None = None
        self.arrived = asyncio.Event()

    def sendto(self, data: bytes, _addr: tuple[str, int]) -> None:
        message = parse_message(data)
        assert isinstance(message, Request | Response)
        self.sent.append(message)
        self.arrived.set()

    def requests(self, method: str) -> list[Request]:
        return [m for m in self.sent if isinstance(m, Request) and m.method == method]

    async def next_request(self, method: str, count: int = 1) -> Request:
        async with asyncio.timeout(5):
            while len(self.requests(method)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests(method)[count - 1]

    # EndpointHandler
    def request_received(self, request: Request, txn: ServerTransaction | None, flow: Flow) -> None:
        assert self.actor is not None
        if txn is None:
            self.actor.mailbox.put(AckArrived(request))
        else:
            self.actor.mailbox.put(RequestArrived(request, txn))

    def cancel_received(self, invite_txn: object, cancel: Request) -> None:
        raise AssertionError("no CANCEL in these tests")


@pytest.fixture
async def call() -> AsyncIterator[tuple[AdoptedCallActor, Wire, SipEndpoint, list[str]]]:
    loop = asyncio.get_running_loop()
    wire = Wire()
    endpoint = SipEndpoint(wire, loop=loop)
    plant = MediaPlant("127.0.0.1", free_port_range(20), None)
    await plant.start()
    local = LocalAddress("127.0.0.1", 5080)
    saved = snapshot()
    dialog = rebuild_dialog(saved, local.contact("UDP"))
    actor = AdoptedCallActor(
        invite=stand_in_invite(dialog), invite_txn=None, flow=UdpFlow(wire.sendto, PROXY),
        local_tag=dialog.local_tag, endpoint=endpoint, media=plant.new_leg(saved["call_id"]),
        local=local, config=CallConfig(node_id="node-a", media_timeout_s=0), clock=loop.time,
        state=CallState.ANSWERED, dialog=dialog,
    )  # fmt: skip
    milestones: list[str] = []
    actor.on_milestone = lambda name, _record: milestones.append(name)
    actor.restore(saved, "node-b")
    wire.actor = actor
    yield actor, wire, endpoint, milestones
    plant.close()


def answer(request: Request, status: int, *, body: bytes = b"", contact: str = "") -> bytes:
    """The caller's response to our request, as the proxy relays it."""
    head = [f"SIP/2.0 {status} Whatever"]
    for name in ("via", "from", "call-id", "cseq"):
        head += [f"{name}: {value}" for value in request.headers.values(name)]
    head.append(f"To: {request.headers.get('to')}")
    if contact:
        head.append(f"Contact: {contact}")
    if body:
        head.append("Content-Type: application/sdp")
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def caller_answer_sdp() -> bytes:
    return (
        b"v=0\r\no=caller 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
    )


async def test_the_reinvite_continues_the_dialog_from_our_new_address_and_port(
    call: tuple[AdoptedCallActor, Wire, SipEndpoint, list[str]],
) -> None:
    actor, wire, endpoint, milestones = call
    task = asyncio.create_task(actor.run())
    reinvite = await wire.next_request("INVITE")
    # The dead node's dialog: its route set, the caller's Contact, the next CSeq, its tags.
    assert reinvite.uri == "sip:caller@127.0.0.1:5070"
    assert reinvite.headers.values("route") == ["<sip:127.0.0.1:5999;lr;ftag=theirs>"]
    assert reinvite.cseq.number == 41 and reinvite.to.tag == "theirs"
    assert reinvite.from_.tag == "ours"
    assert reinvite.headers.get("contact") == "<sip:voxswitch@127.0.0.1:5080>"  # us, now
    offer = SessionDescription.parse(reinvite.body)
    # The same session, next version (RFC 3264 §8), the call's codec, our new port.
    assert (offer.origin.session_id, offer.origin.version) == ("4242", 8)
    assert offer.media[0].port == actor.media.local_port != 30000
    assert offer.media[0].formats == ["0", "101"]
    endpoint.receive(answer(reinvite, 200, body=caller_answer_sdp(),
                            contact="<sip:caller@127.0.0.1:5071>"), actor.flow)  # fmt: skip
    ack = await wire.next_request("ACK")
    assert ack.cseq.number == 41 and ack.uri == "sip:caller@127.0.0.1:5071"  # the refreshed target
    assert ack.headers.values("route") == ["<sip:127.0.0.1:5999;lr;ftag=theirs>"]
    assert actor.state is CallState.CONFIRMED and milestones == ["adopted"]
    assert actor.rebind_s is not None and actor.rebind_s < 1.0
    # The caller hangs up: its BYE reaches us by our Contact.
    bye = (
        "BYE sip:voxswitch@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKbye1\r\n"
        "From: <sip:caller@127.0.0.1>;tag=theirs\r\nTo: <sip:agent@127.0.0.1>;tag=ours\r\n"
        "Call-ID: adopt-1@test\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    endpoint.receive(bye.encode(), actor.flow)
    record: CallRecord = await asyncio.wait_for(task, 5)
    assert record.disposition == "completed" and record.nodes == ["node-b", "node-a"]
    assert record.node_id == "node-a"
    assert record.answered_at is not None and record.answered_at < record.offered_at + 12
    assert record.packets_sent >= 500 and record.packets_received >= 480  # both nodes'
    assert any(isinstance(m, Response) and m.status == 200 for m in wire.sent)


async def test_a_caller_who_is_gone_ends_the_call_without_a_bye(
    call: tuple[AdoptedCallActor, Wire, SipEndpoint, list[str]],
) -> None:
    actor, wire, endpoint, milestones = call
    task = asyncio.create_task(actor.run())
    reinvite = await wire.next_request("INVITE")
    endpoint.receive(answer(reinvite, 481), actor.flow)
    record = await asyncio.wait_for(task, 5)
    assert record.disposition == "node_failed" and "481" in record.reason
    assert wire.requests("BYE") == [] and milestones == []


async def test_no_answer_to_the_reinvite_ends_the_call_with_a_bye(
    call: tuple[AdoptedCallActor, Wire, SipEndpoint, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actors.adopted, "REBIND_TIMEOUT_S", 0.3)
    actor, wire, _, _ = call
    record = await asyncio.wait_for(actor.run(), 5)
    assert record.disposition == "node_failed" and "no answer" in record.reason
    (bye,) = wire.requests("BYE")
    assert bye.cseq.number == 42 and bye.uri == "sip:caller@127.0.0.1:5070"


async def test_a_glare_491_is_tried_again_with_the_next_cseq(
    call: tuple[AdoptedCallActor, Wire, SipEndpoint, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actors.adopted, "GLARE_WAIT_S", (0.05, 0.1))
    actor, wire, endpoint, milestones = call
    task = asyncio.create_task(actor.run())
    first = await wire.next_request("INVITE")
    endpoint.receive(answer(first, 491), actor.flow)
    second = await wire.next_request("INVITE", 2)
    assert second.cseq.number == first.cseq.number + 1
    endpoint.receive(answer(second, 200, body=caller_answer_sdp(),
                            contact="<sip:caller@127.0.0.1:5070>"), actor.flow)  # fmt: skip
    ack = await wire.next_request("ACK", 2)  # the first: the transaction's, for the 491
    assert ack.cseq.number == second.cseq.number and milestones == ["adopted"]
    task.cancel()


async def test_the_maximum_duration_counts_the_time_on_the_dead_node(
    call: tuple[AdoptedCallActor, Wire, SipEndpoint, list[str]],
) -> None:
    actor, wire, endpoint, _ = call
    actor.config = CallConfig(node_id="node-a", media_timeout_s=0, max_duration_s=10.5)
    task = asyncio.create_task(actor.run())
    reinvite = await wire.next_request("INVITE")
    endpoint.receive(answer(reinvite, 200, body=caller_answer_sdp(),
                            contact="<sip:caller@127.0.0.1:5070>"), actor.flow)  # fmt: skip
    record = await asyncio.wait_for(task, 5)  # 10 s there, half a second here
    assert record.disposition == "max_duration"
    assert wire.requests("BYE")
