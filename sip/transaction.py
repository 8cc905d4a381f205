"""SIP transactions (RFC 3261 §17, with the Accepted states of RFC 6026), sans-I/O.

A transaction is a state machine fed messages and the current time:

    txn.receive(message, now)     # a message that matched this transaction
    txn.respond(response, now)    # server side: the TU's response
    txn.handle_timer(now)         # call at (or after) next_deadline(); a no-op if nothing is due
    txn.datagrams_to_send()       # bytes to put on the flow, in order
    txn.next_event()              # what the TU must hear, FIFO; None when drained

It never sleeps and never touches a socket; the endpoint owns one timer heap for all
transactions and the flow each one sends on. Timers that are zero on reliable
transports (D, I, J, K) end the transaction at once rather than being armed.

Also here: the transaction keys used for matching (§17.1.3, §17.2.3 with the RFC 2543
fallback), the ACK for a non-2xx final response (§17.1.1.3), CANCEL construction
(§9.1), and the UAS core's 2xx retransmitter (§13.3.1.4), which is not a transaction
but runs on the same clock.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from enum import Enum

from sip.message import Headers, Message, Request, Response
from sip.timers import DEFAULT_TIMERS, TimerConfig

MAGIC_COOKIE = "z9hG4bK"

# Unique across time and space (§8.1.1.7): a random per-process prefix plus a counter.
_BRANCH_PREFIX = MAGIC_COOKIE + secrets.token_hex(5)
_branch_counter = itertools.count(1)


def new_branch() -> str:
    return f"{_BRANCH_PREFIX}.{next(_branch_counter):x}"


class TransactionState(Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"  # RFC 6026: a 2xx passed, the transaction absorbs what follows
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Client side: a response for the TU (every 1xx and 2xx, the first other final)."""

    response: Response


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B/F (client: no final response) or H (server: no ACK for a non-2xx)."""

    timer: str


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    pass


TransactionEvent = ResponseReceived | TransactionTimedOut | TransactionTerminated

_TERMINATED = TransactionTerminated()


# ---- matching keys -------------------------------------------------------------------


def server_key(request: Request) -> object:
    """The server transaction a request belongs to (§17.2.3).

    An ACK maps to its INVITE's key; a CANCEL has its own. Branches without the
    magic cookie come from RFC 2543 peers and are matched on the request's identity.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by, method)
    return _rfc2543_key(request, method)


def cancel_target_key(cancel: Request) -> object:
    """The key of the INVITE server transaction a CANCEL is meant for (§9.2)."""
    via = cancel.top_via
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by, "INVITE")
    return _rfc2543_key(cancel, "INVITE")


def _rfc2543_key(request: Request, method: str) -> object:
    # The To tag is left out: an ACK carries the tag of our response, its INVITE none.
    via = request.top_via
    return (
        "rfc2543",
        request.uri,
        request.from_.tag,
        request.call_id,
        request.cseq.number,
        method,
        via.sent_by,
        via.branch,
    )


def client_key(message: Message) -> object:
    """Our branch plus the CSeq method (§17.1.3); the same for a request and its responses."""
    return (message.top_via.branch, message.cseq.method)


# ---- building ACK and CANCEL ---------------------------------------------------------


def _copy_for(request: Request, method: str, to_value: str | None) -> Request:
    """ACK/CANCEL share the INVITE's R-URI, top Via, From, Call-ID, CSeq number, Route."""
    headers = Headers()
    headers.add("Via", request.headers.values("via")[0])
    headers.add("Max-Forwards", "70")
    headers.add("From", request.headers.get("from") or "")
    headers.add("To", to_value if to_value is not None else request.headers.get("to") or "")
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", f"{request.cseq.number} {method}")
    for route in request.headers.get_all("route"):
        headers.add("Route", route)
    return Request(method, request.uri, headers)


def make_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response; its To is the response's (with tag)."""
    return _copy_for(invite, "ACK", response.headers.get("to"))


def make_cancel(invite: Request) -> Request:
    return _copy_for(invite, "CANCEL", None)


# ---- the state machines --------------------------------------------------------------


class Transaction:
    """What every transaction shares: state, named timers, output queues."""

    __slots__ = ("_events", "_out", "_timers", "config", "key", "reliable", "request", "state")

    def __init__(
        self,
        request: Request,
        key: object,
        state: TransactionState,
        *,
        reliable: bool,
        timers: TimerConfig,
    ) -> None:
        self.request = request
        self.key = key
        self.state = state
        self.reliable = reliable
        self.config = timers
        self._timers: dict[str, float] = {}
        self._out: list[bytes] = []
        self._events: list[TransactionEvent] = []

    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    def next_deadline(self) -> float | None:
        return min(self._timers.values()) if self._timers else None

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> TransactionEvent | None:
        return self._events.pop(0) if self._events else None

    def handle_timer(self, now: float) -> None:
        # Fire what is due in deadline order; a firing may arm or cancel others.
        while self._timers:
            name, deadline = min(self._timers.items(), key=lambda item: item[1])
            if deadline > now:
                return
            del self._timers[name]
            self._fire(name, now)

    def receive(self, message: Message, now: float) -> None:
        raise NotImplementedError

    def _fire(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _start(self, name: str, now: float, duration: float) -> None:
        self._timers[name] = now + duration

    def _stop(self, *names: str) -> None:
        for name in names:
            self._timers.pop(name, None)

    def _terminate(self) -> None:
        if self.state is not TransactionState.TERMINATED:
            self.state = TransactionState.TERMINATED
            self._timers.clear()
            self._events.append(_TERMINATED)

    def _wait_then_terminate(self, name: str, now: float, duration: float) -> None:
        """Timers D, I, J, K: zero on reliable transports means terminate now."""
        if duration <= 0:
            self._terminate()
        else:
            self._start(name, now, duration)


class _ServerTransaction(Transaction):
    __slots__ = ("_last_response",)

    def __init__(
        self,
        request: Request,
        state: TransactionState,
        *,
        reliable: bool,
        timers: TimerConfig,
    ) -> None:
        super().__init__(request, server_key(request), state, reliable=reliable, timers=timers)
        self._last_response: bytes | None = None

    def _send(self, response: Response) -> None:
        data = bytes(response)
        self._last_response = data
        self._out.append(data)

    def _resend(self) -> None:
        if self._last_response is not None:
            self._out.append(self._last_response)

    def respond(self, response: Response, now: float) -> None:
        raise NotImplementedError


class InviteServerTransaction(_ServerTransaction):
    """§17.2.1 with RFC 6026: Proceeding → Completed/Accepted → Confirmed → Terminated."""

    __slots__ = ("_g_interval",)

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        super().__init__(request, TransactionState.PROCEEDING, reliable=reliable, timers=timers)
        self._g_interval = timers.t1

    def receive(self, message: Message, now: float) -> None:
        assert isinstance(message, Request)
        state = self.state
        if message.method == "ACK":
            if state is TransactionState.COMPLETED:
                self.state = TransactionState.CONFIRMED
                self._stop("G", "H")
                self._wait_then_terminate("I", now, self.config.timer_i(self.reliable))
            return  # ACKs in other states are absorbed (an ACK for a 2xx is the TU's)
        # An INVITE retransmission: repeat the last response; absorbed once Accepted.
        if state in (TransactionState.PROCEEDING, TransactionState.COMPLETED):
            self._resend()

    def respond(self, response: Response, now: float) -> None:
        status = response.status
        state = self.state
        if state is TransactionState.ACCEPTED and 200 <= status < 300:
            self._out.append(bytes(response))  # the TU retransmits its 2xx through us
            return
        if state is not TransactionState.PROCEEDING:
            return  # a late response from the TU (e.g. after CANCEL → 487): dropped
        self._send(response)
        if status < 200:
            return
        if status < 300:
            self.state = TransactionState.ACCEPTED
            self._start("L", now, self.config.transaction_timeout)
            return
        self.state = TransactionState.COMPLETED
        if not self.reliable:
            self._start("G", now, self._g_interval)
        self._start("H", now, self.config.transaction_timeout)

    def _fire(self, name: str, now: float) -> None:
        if name == "G":
            if self.state is TransactionState.COMPLETED:
                self._resend()
                self._g_interval = min(2 * self._g_interval, self.config.t2)
                self._start("G", now, self._g_interval)
        elif name == "H":
            self._events.append(TransactionTimedOut("H"))
            self._terminate()
        else:  # I, L
            self._terminate()


class NonInviteServerTransaction(_ServerTransaction):
    """§17.2.2: Trying → Proceeding → Completed → Terminated."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        super().__init__(request, TransactionState.TRYING, reliable=reliable, timers=timers)
        # Not in the RFC: a TU that never answers must not leak the transaction. The
        # client gave up at Timer F (64*T1) anyway.
        self._start("TU", now, 2 * timers.transaction_timeout)

    def receive(self, message: Message, now: float) -> None:
        if self.state in (TransactionState.PROCEEDING, TransactionState.COMPLETED):
            self._resend()  # in Trying, retransmissions are absorbed

    def respond(self, response: Response, now: float) -> None:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return
        self._send(response)
        if response.status < 200:
            self.state = TransactionState.PROCEEDING
            return
        self.state = TransactionState.COMPLETED
        self._stop("TU")
        self._wait_then_terminate("J", now, self.config.timer_j(self.reliable))

    def _fire(self, name: str, now: float) -> None:
        if name == "TU":
            self._events.append(TransactionTimedOut("TU"))
        self._terminate()  # J


class _ClientTransaction(Transaction):
    __slots__ = ("_data", "_interval")

    def __init__(
        self,
        request: Request,
        state: TransactionState,
        *,
        reliable: bool,
        timers: TimerConfig,
    ) -> None:
        super().__init__(request, client_key(request), state, reliable=reliable, timers=timers)
        self._data = bytes(request)
        self._out.append(self._data)
        self._interval = timers.t1


class InviteClientTransaction(_ClientTransaction):
    """§17.1.1 with RFC 6026: Calling → Proceeding → Completed/Accepted → Terminated."""

    __slots__ = ("_ack",)

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        super().__init__(request, TransactionState.CALLING, reliable=reliable, timers=timers)
        self._ack: bytes | None = None
        if not reliable:
            self._start("A", now, timers.t1)
        self._start("B", now, timers.transaction_timeout)

    def receive(self, message: Message, now: float) -> None:
        assert isinstance(message, Response)
        status = message.status
        state = self.state
        if state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            self._stop("A", "B")
            self._events.append(ResponseReceived(message))
            if status < 200:
                self.state = TransactionState.PROCEEDING
            elif status < 300:
                self.state = TransactionState.ACCEPTED
                self._start("M", now, self.config.transaction_timeout)
            else:
                self.state = TransactionState.COMPLETED
                self._ack = bytes(make_ack(self.request, message))
                self._out.append(self._ack)
                self._wait_then_terminate("D", now, self.config.timer_d(self.reliable))
        elif state is TransactionState.COMPLETED and status >= 300:
            assert self._ack is not None
            self._out.append(self._ack)  # our ACK was lost: send it again
        elif state is TransactionState.ACCEPTED and 200 <= status < 300:
            # 2xx retransmissions (or other forks) go to the TU, which ACKs them.
            self._events.append(ResponseReceived(message))

    def _fire(self, name: str, now: float) -> None:
        if name == "A":
            if self.state is TransactionState.CALLING:
                self._out.append(self._data)
                self._interval *= 2  # Timer A doubles without a cap (§17.1.1.2)
                self._start("A", now, self._interval)
        elif name == "B":
            if self.state is TransactionState.CALLING:
                self._events.append(TransactionTimedOut("B"))
                self._terminate()
        else:  # D, M
            self._terminate()


class NonInviteClientTransaction(_ClientTransaction):
    """§17.1.2: Trying → Proceeding → Completed → Terminated."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        super().__init__(request, TransactionState.TRYING, reliable=reliable, timers=timers)
        if not reliable:
            self._start("E", now, timers.t1)
        self._start("F", now, timers.transaction_timeout)

    def receive(self, message: Message, now: float) -> None:
        assert isinstance(message, Response)
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return  # retransmitted finals are absorbed in Completed
        self._events.append(ResponseReceived(message))
        if message.status < 200:
            self.state = TransactionState.PROCEEDING
            return
        self.state = TransactionState.COMPLETED
        self._stop("E", "F")
        self._wait_then_terminate("K", now, self.config.timer_k(self.reliable))

    def _fire(self, name: str, now: float) -> None:
        if name == "E":
            if self.state is TransactionState.TRYING:
                self._interval = min(2 * self._interval, self.config.t2)
            else:  # Proceeding: retransmit every T2
                self._interval = self.config.t2
            self._out.append(self._data)
            self._start("E", now, self._interval)
        elif name == "F":
            self._events.append(TransactionTimedOut("F"))
            self._terminate()
        else:  # K
            self._terminate()


class SuccessRetransmitter:
    """The UAS core's 2xx retransmission until the ACK comes (§13.3.1.4).

    Resends at T1, 2*T1, ... capped at T2 on unreliable transports; on any transport
    gives up after 64*T1 (``timed_out``), when the TU ends the dialog with a BYE.
    """

    __slots__ = (
        "_data", "_deadline", "_give_up_at", "_interval", "_out", "_t2", "acked", "timed_out",
    )  # fmt: skip

    def __init__(
        self,
        data: bytes,
        *,
        reliable: bool,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        self._data = data
        self._out: list[bytes] = []
        self._interval = timers.t1
        self._t2 = timers.t2
        self._give_up_at = now + timers.transaction_timeout
        self._deadline: float | None = None if reliable else now + timers.t1
        self.acked = False
        self.timed_out = False

    def ack_received(self) -> None:
        self.acked = True
        self._deadline = None

    def next_deadline(self) -> float | None:
        if self.acked or self.timed_out:
            return None
        if self._deadline is None:
            return self._give_up_at
        return min(self._deadline, self._give_up_at)

    def handle_timer(self, now: float) -> None:
        if self.acked or self.timed_out:
            return
        if now >= self._give_up_at:
            self.timed_out = True
            self._deadline = None
            return
        if self._deadline is not None and now >= self._deadline:
            self._out.append(self._data)
            self._interval = min(2 * self._interval, self._t2)
            self._deadline = now + self._interval

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out
