"""The SIP endpoint: routes parsed messages to transactions and up to the TU.

It owns the transaction table and one timer heap for all transactions (one
``call_at`` armed for the earliest deadline, not one timer per transaction), and
answers what is malformed before anything above sees it. Transports hand it
``(bytes, flow)``; a flow is where an answer goes back (UDP source address or the
TCP connection). Responses always go back on the flow a request came in on, as if
every Via carried ``rport`` (RFC 3581): callers behind NAT get their answers.

Before a new request costs a transaction, an optional ``screen`` may refuse it
(overload, an abusive source): the refusal is sent statelessly and, for an INVITE,
kept for a while so that the INVITE's retransmissions get the same bytes again and
its ACK is absorbed, all without a transaction (RFC 3261 §17.2.1 would keep one for
Timer H; under overload that state is what we cannot afford). A ``drop_source``
check runs before parsing, for sources whose packets are not worth reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sip.errors import RemoteProtocolError, UriError
from sip.message import Message, Request, Response, make_response, reason_phrase
from sip.parser import parse_message, validate_request, validate_response
from sip.quick import QuickRequest, quick_request, refusal_bytes
from sip.timers import DEFAULT_TIMERS, TimerConfig
from sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    SuccessRetransmitter,
    Transaction,
    TransactionEvent,
    TransactionState,
    TransactionTerminated,
    cancel_target_key,
    client_key,
    server_key,
)
from sip.uri import split_outside_quotes

log = logging.getLogger("voxswitch.sip")


class Flow(Protocol):
    """Where messages to one peer go: a UDP address or a TCP connection."""

    @property
    def transport(self) -> str: ...  # "UDP" or "TCP"

    @property
    def remote(self) -> tuple[str, int]: ...

    @property
    def reliable(self) -> bool: ...

    def send(self, data: bytes) -> None: ...


ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
ClientTransaction = InviteClientTransaction | NonInviteClientTransaction

# An INVITE refused statelessly is remembered this long (Timer H: 64 × T1) ...
REFUSED_KEEP_S = 32.0
# ... and at most this many of them (a few hundred bytes each).
REFUSED_MAX = 100_000
SCREENED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a screen says about a new request: a final response, or silence
    (``status`` 0: the request is dropped unanswered)."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


DROP = Refusal(0)

# (request, flow) -> None (go on) or how to refuse it.
Screen = Callable[[Request, "Flow"], Refusal | None]
# The same for an INVITE seen only by a quick look (sip.quick), before parsing.
QuickScreen = Callable[[QuickRequest, "Flow"], Refusal | None]


class EndpointHandler(Protocol):
    """The transaction user: the call manager."""

    def request_received(self, request: Request, txn: ServerTransaction | None, flow: Flow) -> None:
        """A new request. ``txn`` is None for an ACK to a 2xx (it has no transaction)."""

    def cancel_received(self, invite_txn: InviteServerTransaction, cancel: Request) -> None:
        """A CANCEL matched a pending INVITE; the 200 for the CANCEL is already sent."""


@dataclass(slots=True, eq=False)
class _Entry:
    txn: Transaction | SuccessRetransmitter
    flow: Flow
    key: object = None
    on_event: Callable[[TransactionEvent], None] | None = None
    on_timeout: Callable[[], None] | None = None
    armed_at: float | None = None
    done: bool = False


@dataclass
class EndpointStats:
    received: int = 0
    sent: int = 0
    parse_errors: int = 0
    responses_dropped: int = 0
    handler_errors: int = 0
    by_status_sent: dict[int, int] = field(default_factory=dict)
    refused: int = 0  # new requests a screen answered statelessly
    dropped: int = 0  # new requests (or packets of a dropped source) not answered
    refusals_repeated: int = 0  # retransmissions of refused INVITEs answered from the cache


class SipEndpoint:
    def __init__(
        self,
        handler: EndpointHandler,
        *,
        loop: asyncio.AbstractEventLoop,
        timers: TimerConfig = DEFAULT_TIMERS,
        user_agent: str = "",
        allow: str = "",
    ) -> None:
        self.handler = handler
        self.allow = allow  # the Allow header of a 405/501 we send ourselves (§20.5)
        self.loop = loop
        self.timers = timers
        # Our Server header (RFC 3261 §20.35: optional, and a product/version helps
        # only whoever fingerprints us): empty sends none.
        self.user_agent = user_agent
        self.stats = EndpointStats()
        self._server: dict[object, _Entry] = {}
        self._client: dict[object, _Entry] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.screen: Screen | None = None
        self.quick_screen: QuickScreen | None = None
        # Is the node refusing new INVITEs now? Only then is the quick look worth it.
        self.shedding: Callable[[], bool] = lambda: False
        # INVITEs the quick screen admitted, waiting their turn to be processed.
        self._screened: dict[object, bool] = {}
        self.drop_source: Callable[[str], bool] | None = None  # source IP -> drop unread
        # Stateless refusals of INVITEs: server key -> (response bytes, sent at).
        self._refused: OrderedDict[object, tuple[bytes, float]] = OrderedDict()

    # ---- inbound -------------------------------------------------------------

    def receive(self, data: bytes, flow: Flow) -> None:
        """Entry point for stream transports. Never raises: bad input is answered or
        dropped."""
        if not self.triage(data, flow):
            self.process(data, flow)

    def triage(self, data: bytes, flow: Flow) -> bool:
        """The cheap first look at a datagram, as soon as it is read: True if that
        settled it (a dropped source, a refused INVITE, a refusal's retransmission or
        ACK); False: it is work, to be given to ``process`` in its turn. A datagram
        transport triages all it reads before it processes any, so the excess of a
        flood is refused at once and not after the work in front of it."""
        self.stats.received += 1
        if self.drop_source is not None and self.drop_source(flow.remote[0]):
            self.stats.dropped += 1
            return True
        start = data[:4]
        # The quick look pays only while refusals come thick: then most INVITEs are
        # refused and most ACKs are for refusals. Otherwise the full path does both.
        if (
            self.quick_screen is not None
            and (start == b"INVI" or (start == b"ACK " and self._refused))
            and self.shedding()
        ):
            try:
                return self._receive_quick(data, flow)
            except Exception:
                self.stats.handler_errors += 1
                log.exception("error in the quick look at a request from %s", flow.remote)
        return False

    def process(self, data: bytes, flow: Flow) -> None:
        """Parse a triaged datagram and hand it to its transaction or the core."""
        try:
            message = parse_message(data)
        except RemoteProtocolError as exc:
            self._reject_malformed(exc, flow)
            return
        if message is not None:
            self.receive_message(message, flow)

    def receive_message(self, message: Message, flow: Flow) -> None:
        try:
            if isinstance(message, Request):
                self._receive_request(message, flow)
            else:
                self._receive_response(message)  # type: ignore[arg-type]
        except RemoteProtocolError as exc:
            self._reject_malformed(exc, flow)
        except Exception:
            # A bug above us must not take the transport down with it.
            self.stats.handler_errors += 1
            log.exception("error handling %r from %s", message, flow.remote)

    def _receive_quick(self, data: bytes, flow: Flow) -> bool:
        """Refuse (or absorb the ACK of a refusal) without parsing; False: parse it."""
        quick = quick_request(data)
        if quick is None or quick.key in self._server or quick.key in self._screened:
            return False  # a transaction's, or admitted and waiting its turn
        refused = self._refused.get(quick.key)
        if refused is not None:
            if quick.method == "INVITE":
                self.stats.refusals_repeated += 1
                self._send_bytes(refused[0], flow)
            return True
        if quick.method != "INVITE" or quick.to_tagged:
            return False
        assert self.quick_screen is not None
        refusal = self.quick_screen(quick, flow)
        if refusal is None:
            self._admitted(quick.key)  # the full path must not ask again
            return False
        if refusal.status == 0:
            self.stats.dropped += 1
            return True
        self.stats.refused += 1
        response = refusal_bytes(
            quick, refusal.status, refusal.reason, to_tag=_refusal_tag(quick.key),
            source=flow.remote, headers=refusal.headers, server=self.user_agent,
        )  # fmt: skip
        counts = self.stats.by_status_sent
        counts[refusal.status] = counts.get(refusal.status, 0) + 1
        self._send_bytes(response, flow)
        self._remember_refusal(quick.key, response)
        return True

    def _reject_malformed(self, exc: RemoteProtocolError, flow: Flow) -> None:
        self.stats.parse_errors += 1
        partial = exc.partial
        # Without a Via there is nowhere the RFC lets us answer (§18.2.2); answering
        # the source address anyway would make us a reflector for spoofed packets.
        if isinstance(partial, Request) and partial.method != "ACK" and "via" in partial.headers:
            log.info("rejecting request from %s with %d: %s", flow.remote, exc.status, exc.reason)
            headers = [("Allow", self.allow)] if exc.status in (405, 501) and self.allow else []
            response = make_response(partial, exc.status, _reason(exc), headers=headers)
            self.send_stateless(response, flow)
        else:
            self.stats.responses_dropped += 1
            log.info("dropping malformed message from %s: %s", flow.remote, exc.reason)

    def _receive_request(self, request: Request, flow: Flow) -> None:
        validate_request(request)
        _stamp_via(request, flow)
        key = server_key(request)
        entry = self._server.get(key)
        if entry is not None:
            existing = entry.txn
            assert isinstance(existing, Transaction)
            if request.method == "ACK" and existing.state is TransactionState.ACCEPTED:
                # An RFC 2543 peer's ACK for our 2xx matches the INVITE: it is the TU's.
                self.handler.request_received(request, None, flow)
                return
            # A retransmission's answer goes where the retransmission came from (as
            # rport would have it): the peer's NAT binding or connection may be new.
            entry.flow = flow
            existing.receive(request, self.loop.time())
            self._flush(entry)
            return
        method = request.method
        if self._refused and (method == "INVITE" or method == "ACK"):
            refused = self._refused.get(key)
            if refused is not None:
                if method == "INVITE":  # a retransmission: the same answer, no new work
                    self.stats.refusals_repeated += 1
                    self._send_bytes(refused[0], flow)
                return  # the ACK of our refusal: nothing more to do
        screened = self._screened.pop(key, False)
        if self.screen is not None and method != "ACK" and not screened:
            refusal = self.screen(request, flow)
            if refusal is not None:
                self._refuse(request, flow, key, refusal)
                return
        if method == "ACK":
            self.handler.request_received(request, None, flow)
            return
        if method == "CANCEL":
            self._receive_cancel(request, flow)
            return
        now = self.loop.time()
        txn: ServerTransaction
        if method == "INVITE":
            txn = InviteServerTransaction(
                request, reliable=flow.reliable, now=now, timers=self.timers
            )
        else:
            txn = NonInviteServerTransaction(
                request, reliable=flow.reliable, now=now, timers=self.timers
            )
        entry = _Entry(txn, flow, key)
        self._server[key] = entry
        try:
            self.handler.request_received(request, txn, flow)
        except Exception as exc:
            self._handler_failed(entry, request, exc)

    def _handler_failed(self, entry: _Entry, request: Request, exc: Exception) -> None:
        """The TU failed on a new request: if unanswered, a final response (400: the
        peer's fault, 500: ours), so its transaction ends by its timers."""
        self.stats.handler_errors += 1
        txn = entry.txn
        assert isinstance(txn, InviteServerTransaction | NonInviteServerTransaction)
        peer_fault = isinstance(exc, RemoteProtocolError | UriError)
        if peer_fault:
            log.info("%s from %s refused: %s", request.method, entry.flow.remote, exc)
        else:  # a bug above us: its traceback, once; the transport goes on
            log.exception("error handling %s from %s", request.method, entry.flow.remote)
        if txn.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return
        status, reason = 500, "Server Internal Error"
        if isinstance(exc, RemoteProtocolError):
            status, reason = exc.status, _reason(exc)
        elif peer_fault:
            status, reason = 400, f"Bad Request ({_printable(str(exc))})"
        tag = _refusal_tag(entry.key)
        self._respond_entry(entry, make_response(request, status, reason, to_tag=tag))

    def _refuse(self, request: Request, flow: Flow, key: object, refusal: Refusal) -> None:
        if refusal.status == 0:
            self.stats.dropped += 1
            return
        self.stats.refused += 1
        # A fixed To tag per refused request: its retransmissions get identical bytes.
        response = make_response(
            request, refusal.status, refusal.reason, to_tag=_refusal_tag(key),
            headers=list(refusal.headers),
        )  # fmt: skip
        self.send_stateless(response, flow)
        if request.method == "INVITE":
            self._remember_refusal(key, bytes(response))

    def _admitted(self, key: object) -> None:
        screened = self._screened
        screened[key] = True
        if len(screened) > SCREENED_MAX:
            # Only an admitted INVITE that then failed to parse stays here; let go of
            # the oldest rather than grow.
            del screened[next(iter(screened))]

    def _remember_refusal(self, key: object, response: bytes) -> None:
        now = self.loop.time()
        refused = self._refused
        refused[key] = (response, now)
        while refused:
            oldest = next(iter(refused.values()))
            if len(refused) <= REFUSED_MAX and now - oldest[1] < REFUSED_KEEP_S:
                break
            refused.popitem(last=False)

    def _send_bytes(self, data: bytes, flow: Flow) -> None:
        try:
            flow.send(data)
        except OSError as exc:
            log.info("send to %s failed: %s", flow.remote, exc)
        self.stats.sent += 1

    def _receive_cancel(self, cancel: Request, flow: Flow) -> None:
        now = self.loop.time()
        txn = NonInviteServerTransaction(
            cancel, reliable=flow.reliable, now=now, timers=self.timers
        )
        entry = _Entry(txn, flow, server_key(cancel))
        self._server[entry.key] = entry
        target_key = cancel_target_key(cancel)
        target = self._server.get(target_key)
        invite = target.txn if target is not None else None
        if not isinstance(invite, InviteServerTransaction):
            # An INVITE we refused has had its final response: the CANCEL's answer is
            # 200 (§9.2) and changes nothing. One we never saw: 481.
            status = 200 if target_key in self._refused else 481
            self._respond_entry(entry, make_response(cancel, status))
            return
        # §9.2: the CANCEL gets 200 whatever happens; the INVITE gets 487 if still pending.
        self._respond_entry(entry, make_response(cancel, 200))
        if invite.state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            self.handler.cancel_received(invite, cancel)

    def _receive_response(self, response: Response) -> None:
        try:
            validate_response(response)
        except RemoteProtocolError as exc:
            self.stats.responses_dropped += 1
            log.info("dropping malformed response: %s", exc.reason)
            return
        entry = self._client.get(client_key(response))
        if entry is None:
            # §17.1.3 / §18.1.2: a response matching no transaction is discarded.
            self.stats.responses_dropped += 1
            return
        entry.txn.receive(response, self.loop.time())  # type: ignore[union-attr]
        self._flush(entry)

    # ---- outbound ------------------------------------------------------------

    def respond(self, txn: ServerTransaction, response: Response) -> None:
        entry = self._server.get(txn.key)
        if entry is None or entry.txn is not txn:
            log.debug("response %d for a finished transaction dropped", response.status)
            return
        self._respond_entry(entry, response)

    def _respond_entry(self, entry: _Entry, response: Response) -> None:
        if self.user_agent and "server" not in response.headers:
            response.headers.add("Server", self.user_agent)
        counts = self.stats.by_status_sent
        counts[response.status] = counts.get(response.status, 0) + 1
        txn = entry.txn
        assert isinstance(txn, InviteServerTransaction | NonInviteServerTransaction)
        txn.respond(response, self.loop.time())
        self._flush(entry)

    def send_request(
        self,
        request: Request,
        flow: Flow,
        on_event: Callable[[TransactionEvent], None],
    ) -> ClientTransaction:
        now = self.loop.time()
        txn: ClientTransaction
        if request.method == "INVITE":
            txn = InviteClientTransaction(
                request, reliable=flow.reliable, now=now, timers=self.timers
            )
        else:
            txn = NonInviteClientTransaction(
                request, reliable=flow.reliable, now=now, timers=self.timers
            )
        key = client_key(request)
        entry = _Entry(txn, flow, key, on_event=on_event)
        self._client[key] = entry
        self._flush(entry)
        return txn

    def retransmit_until_ack(
        self, response: Response, flow: Flow, on_timeout: Callable[[], None]
    ) -> SuccessRetransmitter:
        """Retransmit a 2xx already sent with ``respond`` until ``ack_received`` (§13.3.1.4)."""
        retx = SuccessRetransmitter(
            bytes(response), reliable=flow.reliable, now=self.loop.time(), timers=self.timers
        )
        entry = _Entry(retx, flow, on_timeout=on_timeout)
        self._flush(entry)
        return retx

    def send_stateless(self, message: Message, flow: Flow) -> None:
        if isinstance(message, Response):
            counts = self.stats.by_status_sent
            counts[message.status] = counts.get(message.status, 0) + 1
            if self.user_agent and "server" not in message.headers:
                message.headers.add("Server", self.user_agent)
        self._send_bytes(bytes(message), flow)

    # ---- timers --------------------------------------------------------------

    def _flush(self, entry: _Entry) -> None:
        txn = entry.txn
        for data in txn.datagrams_to_send():
            try:
                entry.flow.send(data)
            except OSError as exc:  # a closed TCP connection, an unreachable host
                log.info("send to %s failed: %s", entry.flow.remote, exc)
            except Exception:  # a transport's bug: the transaction must still run its timers
                log.exception("send to %s failed", entry.flow.remote)
            self.stats.sent += 1
        if isinstance(txn, SuccessRetransmitter):
            if txn.timed_out:
                entry.done = True
                if entry.on_timeout is not None:
                    entry.on_timeout()
                return
        else:
            while (event := txn.next_event()) is not None:
                if isinstance(event, TransactionTerminated):
                    entry.done = True
                    table = self._client if entry.on_event is not None else self._server
                    if table.get(entry.key) is entry:
                        del table[entry.key]
                if entry.on_event is not None:
                    entry.on_event(event)
            if entry.done:
                return
        deadline = txn.next_deadline()
        if deadline is not None and (entry.armed_at is None or deadline < entry.armed_at):
            entry.armed_at = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), entry))
            if deadline < self._timer_at:
                self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self.loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            if entry.done:
                continue
            entry.armed_at = None
            try:
                entry.txn.handle_timer(now)
                self._flush(entry)
            except Exception:
                self.stats.handler_errors += 1
                log.exception("error in transaction timer")
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        """Disarm the timer and forget every transaction: the transport is going away."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, float("inf")
        for table in (self._heap, self._server, self._client):
            table.clear()

    @property
    def transaction_count(self) -> int:
        return len(self._server) + len(self._client)


def _refusal_tag(key: object) -> str:
    return format(hash(key) & 0xFFFFFFFFFFFF, "012x")


def _reason(exc: RemoteProtocolError) -> str:
    # The reason phrase tells the peer what was wrong; keep it one clean line.
    text = _printable(exc.reason)
    return f"{reason_phrase(exc.status)} ({text})" if text else reason_phrase(exc.status)


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c.isascii())[:100]


def _stamp_via(request: Request, flow: Flow) -> None:
    """Add ``received``/``rport`` to the top Via (RFC 3261 §18.2.1, RFC 3581 §4)."""
    via = request.top_via
    host, port = flow.remote
    add_received = via.host_bare != host
    fill_rport = "rport" in via.params and not via.params["rport"]
    if not add_received and not fill_rport:
        return
    headers = request.headers
    line = headers.get("via")
    assert line is not None
    parts = split_outside_quotes(line, ",") if "," in line else [line]
    top = parts[0].rstrip()
    if fill_rport:
        top = _fill_rport(top, port)
    if add_received:
        top += f";received={host}"
    parts[0] = top
    headers.replace_first("via", ",".join(parts))
    with contextlib.suppress(KeyError):
        del request.__dict__["vias"]  # the cached parse is stale now


def _fill_rport(via: str, port: int) -> str:
    out = []
    for piece in via.split(";"):
        if piece.strip().lower() == "rport":
            piece = f"rport={port}"
        out.append(piece)
    return ";".join(out)


__all__ = ["DROP", "EndpointHandler", "Flow", "Refusal", "Screen", "SipEndpoint", "UriError"]
