"""The HTTP API's connections, bounded: how many, how long each may take.

uvicorn bounds a request head's size (``h11_max_incomplete_event_size``) and closes a
keep-alive connection idle after a response (``timeout_keep_alive``); it does not
close a connection that never sends a whole request head (an idle or slowloris
peer), nor a stalled body, and it counts no connections per source. This module adds
those: ``ConnectionBook`` (the caps) and ``ConnectionWatch`` (one connection's
deadline) are pure, with ``now`` passed in; ``GuardedH11Protocol`` is uvicorn's h11
protocol with the two wired in and one timer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from switch.config import Settings

log = logging.getLogger("voxswitch.api")

MAX_HEAD_BYTES = 16 * 1024  # request line and headers (h11's own default, made explicit)
REFUSAL_LINGER_S = 1.0  # a refused connection's answer gets this long to be read


@dataclass(frozen=True)
class ApiLimits:
    """The HTTP API's bounds (settings ``api_*``)."""

    max_connections: int = 512
    max_connections_per_source: int = 64
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiLimits:
        return cls(
            max_connections=settings.api_max_connections,
            max_connections_per_source=settings.api_max_connections_per_source,
            header_timeout_s=settings.api_header_timeout_s,
            body_timeout_s=settings.api_body_timeout_s,
            idle_timeout_s=settings.api_idle_timeout_s,
        )


Refusal = Literal["source_full", "server_full"]


class ConnectionBook:
    """Open connections, in total and per source address: may one more open?"""

    def __init__(self, limits: ApiLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_source: dict[str, int] = {}
        self.refused: dict[Refusal, int] = {"source_full": 0, "server_full": 0}
        self.lingering = 0  # refused connections still saying why (not counted above)
        # Open connections with no request under way (a head not yet whole, or idle
        # between requests), the longest waiting first: (source, how to close it).
        self.waiting: OrderedDict[object, tuple[str, Callable[[], None]]] = OrderedDict()
        self.evicted = 0

    def admit(self, source: str) -> Refusal | None:
        """Count the connection in, or say why it may not open. When the node is full,
        the connection that has waited longest for a request is closed to make room:
        a flood of idle or slowloris connections from many addresses cannot lock the
        API (and its /health) out; one with a request under way is never taken."""
        refusal: Refusal | None = None
        if self.by_source.get(source, 0) >= self.limits.max_connections_per_source:
            refusal = "source_full"
        elif self.total >= self.limits.max_connections and not self._evict_one():
            refusal = "server_full"
        if refusal is not None:
            self.refused[refusal] += 1
            return refusal
        self.total += 1
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return None

    def waiting_for_request(self, conn: object, source: str, close: Callable[[], None]) -> None:
        """``conn`` has no request under way (since now): it may be evicted."""
        self.waiting.pop(conn, None)
        self.waiting[conn] = (source, close)

    def working(self, conn: object) -> None:
        """``conn`` has a request under way: never evicted while it lasts."""
        self.waiting.pop(conn, None)

    def _evict_one(self) -> bool:
        if not self.waiting:
            return False
        _, (source, close) = self.waiting.popitem(last=False)
        self.release(source)  # counted out now: its close comes later
        self.evicted += 1
        close()
        return True

    def release(self, source: str) -> None:
        left = self.by_source.get(source, 0) - 1
        if left > 0:
            self.by_source[source] = left
        else:
            self.by_source.pop(source, None)
        self.total = max(0, self.total - 1)


Phase = Literal["head", "body", "response", "idle"]


class ConnectionWatch:
    """One connection's deadline, by phase: its request head must be whole within
    ``header_timeout_s`` of its first byte (or of the connection opening), the body
    within ``body_timeout_s`` of the head; while the node answers there is none (a
    stream may last); between requests it may idle ``idle_timeout_s``."""

    def __init__(self, limits: ApiLimits, now: float) -> None:
        self.limits = limits
        self.phase: Phase = "head"
        self.deadline: float | None = now + limits.header_timeout_s

    def received(self, now: float) -> None:
        """Bytes arrived: between requests they start the next head's clock."""
        if self.phase == "idle":
            self._enter("head", now + self.limits.header_timeout_s)

    def request_started(self, now: float, *, body_complete: bool) -> None:
        if body_complete:
            self._enter("response", None)
        else:
            self._enter("body", now + self.limits.body_timeout_s)

    def body_completed(self) -> None:
        if self.phase == "body":
            self._enter("response", None)

    def response_completed(self, now: float) -> None:
        self._enter("idle", now + self.limits.idle_timeout_s)

    def expired(self, now: float) -> str | None:
        """Why the connection must close now (``header_timeout``…), or None."""
        if self.deadline is None or now < self.deadline:
            return None
        return f"{self.phase}_timeout"

    def _enter(self, phase: Phase, deadline: float | None) -> None:
        self.phase = phase
        self.deadline = deadline


def _refusal_bytes(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


REFUSALS: dict[Refusal, bytes] = {
    "source_full": _refusal_bytes(
        429,
        "Too Many Requests",
        "too many connections from this address (api_max_connections_per_source)",
    ),
    "server_full": _refusal_bytes(
        503, "Service Unavailable", "too many connections to the API (api_max_connections)"
    ),
}
INTERNAL_ERROR = {"detail": "internal server error"}


class ApiServerConfig(uvicorn.Config):
    """uvicorn's settings, plus the connection book its protocols share."""

    def __init__(self, app: Any, *, limits: ApiLimits, **kwargs: Any) -> None:
        super().__init__(
            app,
            http=GuardedH11Protocol,
            ws="none",  # the API has no WebSocket endpoint: no upgrade to another protocol
            timeout_keep_alive=max(1, math.ceil(limits.idle_timeout_s)),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            server_header=False,  # no product name to scanners
            **kwargs,
        )
        self.limits = limits
        self.book = ConnectionBook(limits)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with caps (refused at once, with a JSON 429/503) and a
    per-connection deadline (closed when it passes)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        assert isinstance(config, ApiServerConfig), "serve the API with ApiServerConfig"
        self._book = config.book
        self._watch = ConnectionWatch(config.limits, 0.0)
        self._timer: asyncio.TimerHandle | None = None
        self._source = ""
        self._refused = False
        self._released = False  # closing: the book has counted it out already
        self._closing = False
        self._lingering = False
        self._discarded = 0
        inner = self.app

        async def watched(scope: Any, receive: Any, send: Any) -> None:
            self._watch.request_started(self.loop.time(), body_complete=self._body_complete())
            self._book.working(self)
            self._arm()
            started = False

            async def send_watched(message: Any) -> None:
                nonlocal started
                started = True
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    self._watch.response_completed(self.loop.time())
                    if not self._released:
                        self._book.waiting_for_request(self, self._source, self._evict)
                    self._arm()

            try:
                await inner(scope, receive, send_watched)
            except Exception:
                # Starlette answers the app's own errors; this is for anything around it.
                if not started:
                    body = json.dumps(INTERNAL_ERROR).encode()
                    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                    await send({"type": "http.response.start", "status": 500, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                raise

        self.app = watched

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        refusal = self._book.admit(self._source)
        if refusal is not None:
            self._refuse(cast(asyncio.Transport, transport), refusal)  # uvloop's is no subclass
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch = ConnectionWatch(self._book.limits, self.loop.time())
        self._book.waiting_for_request(self, self._source, self._evict)
        self._arm()

    def _evict(self) -> None:
        """The book made room for a newcomer with this one (it waited longest)."""
        self._released = True
        log.debug("api: closing %s's waiting connection for a new one", self._source)
        self._close_firmly()

    def _refuse(self, transport: asyncio.Transport, refusal: Refusal) -> None:
        # Closing a socket with the peer's request unread makes the kernel send a
        # reset and drop our answer: so say it, half-close, and read (discarding) a
        # moment before closing. Lingering ones are few: past the cap, just close.
        self._refused = True
        self.transport = transport
        transport.write(REFUSALS[refusal])
        if self._book.lingering >= self._book.limits.max_connections:
            transport.close()
            return
        self._book.lingering += 1
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._discarded += len(data)
            if self._discarded > MAX_HEAD_BYTES:
                self.transport.close()
            return
        self._watch.received(self.loop.time())
        super().data_received(data)
        if self._watch.phase == "body" and self._body_complete():
            self._watch.body_completed()
        self._arm()

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._refused:
            if self._lingering:
                self._lingering = False
                self._book.lingering -= 1
            return
        self._book.working(self)  # out of the waiting line
        if not self._released:
            self._book.release(self._source)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP (or a head over MAX_HEAD_BYTES),
        as JSON like every other error; the connection closes."""
        body = json.dumps({"detail": f"bad HTTP request: {msg}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        events = (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                  h11.Data(data=body), h11.EndOfMessage())  # fmt: skip
        with contextlib.suppress(h11.LocalProtocolError):  # a response under way: just close
            self.transport.write(b"".join(self.conn.send(e) or b"" for e in events))
        self.transport.close()

    def _body_complete(self) -> bool:
        return self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    def _arm(self) -> None:
        if self._closing:
            return  # the reset after a close is armed: keep it
        deadline = self._watch.deadline
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        reason = self._watch.expired(self.loop.time())
        if reason is None:
            self._arm()
            return
        log.debug("api: closing %s's connection (%s)", self._source, reason)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        self._close_firmly()

    def _close_firmly(self) -> None:
        """Close, and reset the connection if that has not ended it a moment later: a
        peer that reads nothing keeps our unsent bytes (and a graceful close) pending
        for ever, and the slot with them."""
        self._closing = True
        if not self._released:  # out of the count now, not when the peer lets go
            self._released = True
            self._book.working(self)
            self._book.release(self._source)
        self.transport.close()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(REFUSAL_LINGER_S, self.transport.abort)
