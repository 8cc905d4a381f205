"""The endpoint's screen: stateless refusals, their cache, drops (a fake clock)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sip.endpoint import DROP, Flow, Refusal, ServerTransaction, SipEndpoint
from sip.message import Request, Response
from sip.parser import parse_message
from sip.quick import QuickRequest
from sip.transaction import InviteServerTransaction
from tests.unit.test_lossy_link import FakeLoop
from tests.unit.test_quick import INVITE

SOURCE = ("203.0.113.9", 40000)
ACK = (INVITE.replace(b"INVITE sip:", b"ACK sip:").replace(b"1 INVITE", b"1 ACK")
       .replace(b"Content-Length: 4\r\n\r\nv=0\n", b"Content-Length: 0\r\n\r\n"))  # fmt: skip
CANCEL = ACK.replace(b"ACK sip:", b"CANCEL sip:").replace(b"1 ACK", b"1 CANCEL")
BUSY = Refusal(503, "Overloaded", (("Retry-After", "5"),))


@dataclass
class Wire:
    sent: list[bytes] = field(default_factory=list)
    transport: str = "UDP"
    reliable: bool = False
    remote: tuple[str, int] = SOURCE

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def responses(self) -> list[Response]:
        out = []
        for data in self.sent:
            message = parse_message(data)
            assert isinstance(message, Response)
            out.append(message)
        return out


@dataclass
class Core:
    requests: list[str] = field(default_factory=list)

    def request_received(self, request: Request, txn: ServerTransaction | None, flow: Flow) -> None:
        self.requests.append(request.method)

    def cancel_received(self, invite_txn: InviteServerTransaction, cancel: Request) -> None:
        self.requests.append("CANCEL")


def endpoint(refusal: Refusal | None, *, quick: bool) -> tuple[SipEndpoint, Core, list[str]]:
    core = Core()
    asked: list[str] = []
    ep = SipEndpoint(core, loop=FakeLoop())  # type: ignore[arg-type]

    def screen(request: Request, flow: Flow) -> Refusal | None:
        asked.append("full:" + request.method)
        return refusal if request.method == "INVITE" else None

    def quick_screen(request: QuickRequest, flow: Flow) -> Refusal | None:
        asked.append("quick:" + request.method)
        return refusal

    ep.screen = screen
    if quick:
        ep.quick_screen = quick_screen
        ep.shedding = lambda: True
    return ep, core, asked


@pytest.mark.parametrize("quick", [False, True], ids=["parsed", "quick"])
def test_a_refused_invite_costs_no_transaction_and_its_retransmissions_get_the_same_bytes(
    quick: bool,
) -> None:
    ep, core, asked = endpoint(BUSY, quick=quick)
    wire = Wire()
    ep.receive(INVITE, wire)
    assert ep.transaction_count == 0 and core.requests == []
    [response] = wire.responses()
    assert response.status == 503 and response.headers.get("retry-after") == "5"
    assert response.to.tag and response.vias[0].params["received"] == SOURCE[0]
    ep.receive(INVITE, wire)  # the caller did not hear us: again, from the cache
    assert wire.sent[1] == wire.sent[0]
    assert ep.stats.refusals_repeated == 1 and ep.stats.refused == 1
    ep.receive(ACK, wire)  # the ACK of our 503 is absorbed
    assert core.requests == [] and len(wire.sent) == 2
    assert asked == ["quick:INVITE" if quick else "full:INVITE"]
    assert ep.stats.by_status_sent[503] == 1


def test_a_cancel_of_a_refused_invite_gets_200() -> None:
    ep, _, _ = endpoint(BUSY, quick=True)
    wire = Wire()
    ep.receive(INVITE, wire)
    ep.receive(CANCEL, wire)
    assert [r.status for r in wire.responses()] == [503, 200]


def test_an_admitted_invite_is_screened_once_and_goes_on_to_the_core() -> None:
    ep, core, asked = endpoint(None, quick=True)
    wire = Wire()
    ep.receive(INVITE, wire)
    assert asked == ["quick:INVITE"]  # the full path did not ask again
    assert core.requests == ["INVITE"] and ep.transaction_count == 1
    ep.receive(INVITE, wire)  # a retransmission: the transaction's, not the screen's
    assert asked == ["quick:INVITE"]


def test_a_dropped_request_is_not_answered() -> None:
    ep, core, _ = endpoint(DROP, quick=True)
    wire = Wire()
    ep.receive(INVITE, wire)
    assert wire.sent == [] and core.requests == [] and ep.stats.dropped == 1


def test_while_not_shedding_invites_skip_the_quick_look() -> None:
    ep, core, asked = endpoint(None, quick=True)
    ep.shedding = lambda: False
    wire = Wire()
    ep.receive(INVITE, wire)
    assert asked == ["full:INVITE"] and core.requests == ["INVITE"]


def test_a_dropped_source_is_not_even_parsed() -> None:
    ep, _, asked = endpoint(None, quick=True)
    ep.drop_source = lambda ip: ip == SOURCE[0]
    wire = Wire()
    ep.receive(b"garbage that would get a 400", wire)
    ep.receive(INVITE, wire)
    assert wire.sent == [] and asked == [] and ep.stats.dropped == 2
    assert ep.stats.parse_errors == 0


def test_the_refusal_cache_forgets_after_timer_h() -> None:
    ep, _, asked = endpoint(BUSY, quick=True)
    wire = Wire()
    ep.receive(INVITE, wire)
    ep.loop.now += 40  # type: ignore[attr-defined]
    other = INVITE.replace(b"z9hG4bK-1-2", b"z9hG4bK-3-4")
    ep.receive(other, wire)  # a new refusal lets the expired one go
    assert len(ep._refused) == 1
    ep.receive(INVITE, wire)  # now a new request: screened again
    assert asked.count("quick:INVITE") == 3


def test_an_admitted_invite_waiting_its_turn_is_not_screened_again() -> None:
    """A datagram transport triages all it reads, then processes in turn: the
    retransmission of an INVITE admitted but not yet processed must not be refused."""
    ep, core, asked = endpoint(None, quick=True)
    wire = Wire()
    assert ep.triage(INVITE, wire) is False  # admitted: work to do
    ep.screen = ep.quick_screen = lambda request, flow: BUSY  # the node is now full
    assert ep.triage(INVITE, wire) is False  # its retransmission, still not processed
    ep.process(INVITE, wire)
    ep.process(INVITE, wire)
    assert core.requests == ["INVITE"] and ep.transaction_count == 1
    assert [r.status for r in wire.responses()] == []  # no 503 to a call we took
    assert asked == ["quick:INVITE"]


def test_once_refusals_stop_the_ack_of_an_old_refusal_is_absorbed_by_the_full_path() -> None:
    ep, core, asked = endpoint(BUSY, quick=True)
    wire = Wire()
    ep.receive(INVITE, wire)
    ep.shedding = lambda: False  # no refusal in the last second
    ep.receive(ACK, wire)
    ep.receive(INVITE, wire)  # a late retransmission: the same bytes, still no new work
    assert core.requests == [] and wire.sent[1] == wire.sent[0]
    assert asked == ["quick:INVITE"]
