"""A UAC core and a UAS core (two real ``SipEndpoint``s) over a lossy in-memory link.

Time is a fake clock; the link drops datagrams at random (seeded) and delays the
rest. Whatever is lost, each call must end the way the RFC says: the caller sees
exactly one final response per transaction, both sides' transactions terminate,
and the 2xx/ACK exchange completes unless every copy of it was lost.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from sip.endpoint import Flow, ServerTransaction, SipEndpoint
from sip.message import Request, make_response
from sip.parser import parse_message
from sip.transaction import (
    InviteServerTransaction,
    ResponseReceived,
    SuccessRetransmitter,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
    new_branch,
)

LINK_DELAY_S = 0.02


class _Handle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just what SipEndpoint uses of an event loop: ``time`` and ``call_at``."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, _Handle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> _Handle:
        handle = _Handle()
        heapq.heappush(self._heap, (when, next(self._seq), handle, lambda: callback(*args)))
        return handle

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> _Handle:
        return self.call_at(self.now + delay, callback, *args)

    def run_until(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            when, _, handle, callback = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback()
        self.now = until


@dataclass
class LossyFlow:
    """One direction of the link: what ``send`` gets arrives at ``peer`` later, or not."""

    loop: FakeLoop
    rng: random.Random
    loss: float
    remote: tuple[str, int]
    deliver: Callable[[bytes], None] = lambda data: None
    sent: int = 0
    dropped: int = 0
    transport: str = "UDP"
    reliable: bool = False

    def send(self, data: bytes) -> None:
        self.sent += 1
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.loop.call_later(LINK_DELAY_S, self.deliver, data)


@dataclass
class Uas:
    """A UAS core: 100, then after 0.2 s the final status, 2xx retransmitted until ACK."""

    final_status: int
    endpoint: SipEndpoint = field(init=False)
    loop: FakeLoop = field(init=False)
    acks: int = 0
    retransmitter: SuccessRetransmitter | None = None
    ack_timeouts: int = 0
    byes: int = 0

    def request_received(self, request: Request, txn: ServerTransaction | None, flow: Flow) -> None:
        if request.method == "ACK":
            self.acks += 1
            if self.retransmitter is not None:
                self.retransmitter.ack_received()
            return
        assert txn is not None
        if request.method == "BYE":
            self.byes += 1
            self.endpoint.respond(txn, make_response(request, 200))
            return
        self.endpoint.respond(txn, make_response(request, 100))
        self.loop.call_later(0.2, self._final, request, txn, flow)

    def _final(self, request: Request, txn: ServerTransaction, flow: Flow) -> None:
        response = make_response(request, self.final_status, to_tag="uas1")
        if self.final_status >= 300:
            self.endpoint.respond(txn, response)
            return
        response.headers.add("Contact", "<sip:uas@192.0.2.2>")
        self.endpoint.respond(txn, response)
        self.retransmitter = self.endpoint.retransmit_until_ack(response, flow, self._no_ack)

    def _no_ack(self) -> None:
        self.ack_timeouts += 1

    def cancel_received(self, invite_txn: InviteServerTransaction, cancel: Request) -> None:
        raise AssertionError("no CANCEL in this test")


@dataclass
class Uac:
    """A UAC core: INVITE; ACK every 2xx (new branch), then BYE once."""

    endpoint: SipEndpoint = field(init=False)
    flow: LossyFlow = field(init=False)
    invite_events: list[TransactionEvent] = field(default_factory=list)
    bye_events: list[TransactionEvent] = field(default_factory=list)
    bye_sent: bool = False

    def request_received(self, request: Request, txn: ServerTransaction | None, flow: Flow) -> None:
        raise AssertionError(f"the UAS sent us a request: {request!r}")

    def cancel_received(self, invite_txn: InviteServerTransaction, cancel: Request) -> None:
        raise AssertionError("unexpected CANCEL")

    def call(self) -> None:
        self.endpoint.send_request(_invite(), self.flow, self._on_invite_event)

    def _on_invite_event(self, event: TransactionEvent) -> None:
        self.invite_events.append(event)
        if isinstance(event, ResponseReceived) and 200 <= event.response.status < 300:
            ack = _in_dialog("ACK", 1)
            self.endpoint.send_stateless(ack, self.flow)
            if not self.bye_sent:
                self.bye_sent = True
                self.endpoint.send_request(_in_dialog("BYE", 2), self.flow, self.bye_events.append)

    def finals(self, events: list[TransactionEvent]) -> list[int]:
        return [
            e.response.status
            for e in events
            if isinstance(e, ResponseReceived) and e.response.status >= 200
        ]


def _invite() -> Request:
    return _request("INVITE", 1, to_tag=None)


def _in_dialog(method: str, cseq: int) -> Request:
    return _request(method, cseq, to_tag="uas1")


def _request(method: str, cseq: int, *, to_tag: str | None) -> Request:
    to = "<sip:bot@192.0.2.2>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"{method} sip:bot@192.0.2.2 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={new_branch()}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@192.0.2.1>;tag=uac1\r\n"
        f"To: {to}\r\n"
        "Call-ID: lossy-1@192.0.2.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@192.0.2.1>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def connect(final_status: int, loss: float, seed: int) -> tuple[FakeLoop, Uac, Uas, LossyFlow]:
    loop = FakeLoop()
    rng = random.Random(seed)
    aloop = cast(asyncio.AbstractEventLoop, loop)
    uac, uas = Uac(), Uas(final_status)
    uac.endpoint = SipEndpoint(uac, loop=aloop)
    uas.endpoint = SipEndpoint(uas, loop=aloop)
    uas.loop = loop
    to_uas = LossyFlow(loop, rng, loss, ("192.0.2.2", 5060))
    to_uac = LossyFlow(loop, rng, loss, ("192.0.2.1", 5060))
    to_uas.deliver = lambda data: uas.endpoint.receive(data, to_uac)
    to_uac.deliver = lambda data: uac.endpoint.receive(data, to_uas)
    uac.flow = to_uas
    return loop, uac, uas, to_uas


@pytest.mark.parametrize("seed", range(40))
def test_rejected_call_survives_loss(seed: int) -> None:
    loop, uac, uas, _ = connect(486, loss=0.3, seed=seed)
    uac.call()
    loop.run_until(120.0)
    finals = uac.finals(uac.invite_events)
    if finals:
        assert finals == [486], "the TU hears the final response exactly once"
    else:  # every INVITE or every 486 lost: the UAC gives up on Timer B
        assert TransactionTimedOut("B") in uac.invite_events
    assert uac.invite_events[-1] == TransactionTerminated()
    assert uac.endpoint.transaction_count == 0
    assert uas.endpoint.transaction_count == 0


@pytest.mark.parametrize("seed", range(40))
def test_answered_call_survives_loss(seed: int) -> None:
    loop, uac, uas, _ = connect(200, loss=0.3, seed=seed)
    uac.call()
    loop.run_until(120.0)
    assert uac.finals(uac.invite_events)[:1] == [200]
    # The 2xx is retransmitted until an ACK gets through (§13.3.1.4).
    assert uas.acks >= 1 and uas.ack_timeouts == 0
    assert uac.finals(uac.bye_events) == [200] and uas.byes >= 1
    assert uac.endpoint.transaction_count == 0
    assert uas.endpoint.transaction_count == 0


def test_lossless_call_sends_no_retransmissions() -> None:
    loop, uac, uas, flow = connect(200, loss=0.0, seed=0)
    uac.call()
    loop.run_until(120.0)
    assert flow.sent == 3  # INVITE, ACK, BYE
    assert uas.acks == 1


def test_heavy_loss_still_terminates_everything() -> None:
    for seed in range(20):
        loop, uac, uas, _ = connect(200, loss=0.7, seed=seed)
        uac.call()
        loop.run_until(300.0)
        assert uac.endpoint.transaction_count == 0
        assert uas.endpoint.transaction_count == 0
        assert len(uac.finals(uac.invite_events)[:1]) <= 1
