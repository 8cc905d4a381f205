"""The SIP endpoint: routes parsed messages to transactions and up to the TU.

It owns the transaction table and one timer heap for all transactions (one
``call_at`` armed for the earliest deadline, not one timer per transaction), and
answers what is malformed before anything above sees it. Transports hand it
``(bytes, flow)``; a flow is where an answer goes back (UDP source address or the
TCP connection). Responses always go back on the flow a request came in on, as if
every Via carried ``rport`` (RFC 3581): callers behind NAT get their answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sip.errors import RemoteProtocolError, UriError
from sip.message import Message, Request, Response, make_response, reason_phrase
from sip.parser import parse_message, validate_request, validate_response
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


class EndpointHandler(Protocol):
    """The transaction user: the call manager."""

    def request_received(
        self, request: Request, txn: ServerTransaction | None, flow: Flow
    ) -> None:
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


class SipEndpoint:
    def __init__(
        self,
        handler: EndpointHandler,
        *,
        loop: asyncio.AbstractEventLoop,
        timers: TimerConfig = DEFAULT_TIMERS,
        user_agent: str = "voxswitch",
        allow: str = "",
    ) -> None:
        self.handler = handler
        self.allow = allow  # the Allow header of a 405/501 we send ourselves (§20.5)
        self.loop = loop
        self.timers = timers
        self.user_agent = user_agent
        self.stats = EndpointStats()
        self._server: dict[object, _Entry] = {}
        self._client: dict[object, _Entry] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    # ---- inbound -------------------------------------------------------------

    def receive(self, data: bytes, flow: Flow) -> None:
        """Entry point for transports. Never raises: bad input is answered or dropped."""
        self.stats.received += 1
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
        self._server[key] = _Entry(txn, flow, key)
        self.handler.request_received(request, txn, flow)

    def _receive_cancel(self, cancel: Request, flow: Flow) -> None:
        now = self.loop.time()
        txn = NonInviteServerTransaction(
            cancel, reliable=flow.reliable, now=now, timers=self.timers
        )
        entry = _Entry(txn, flow, server_key(cancel))
        self._server[entry.key] = entry
        target = self._server.get(cancel_target_key(cancel))
        invite = target.txn if target is not None else None
        if not isinstance(invite, InviteServerTransaction):
            self._respond_entry(entry, make_response(cancel, 481))
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
        entry = self._server.get(txn_key(txn))
        if entry is None or entry.txn is not txn:
            log.debug("response %d for a finished transaction dropped", response.status)
            return
        self._respond_entry(entry, response)

    def _respond_entry(self, entry: _Entry, response: Response) -> None:
        if "server" not in response.headers:
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
            if "server" not in message.headers:
                message.headers.add("Server", self.user_agent)
        flow.send(bytes(message))
        self.stats.sent += 1

    # ---- timers --------------------------------------------------------------

    def _flush(self, entry: _Entry) -> None:
        txn = entry.txn
        for data in txn.datagrams_to_send():
            try:
                entry.flow.send(data)
            except OSError as exc:  # a closed TCP connection, an unreachable host
                log.info("send to %s failed: %s", entry.flow.remote, exc)
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

    @property
    def transaction_count(self) -> int:
        return len(self._server) + len(self._client)


def txn_key(txn: ServerTransaction) -> object:
    return txn.key


def _reason(exc: RemoteProtocolError) -> str:
    # The reason phrase tells the peer what was wrong; keep it one clean line.
    text = "".join(c for c in exc.reason if c.isprintable())[:100]
    return f"{reason_phrase(exc.status)} ({text})" if text else reason_phrase(exc.status)


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


__all__ = ["EndpointHandler", "Flow", "SipEndpoint", "UriError"]
