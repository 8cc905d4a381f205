"""TCP transport: stream framing by Content-Length (RFC 3261 §18.3).

A framing error closes the connection after a 400 when the request could be
understood far enough to answer it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from sip.errors import RemoteProtocolError
from sip.message import Message, Request, make_response, reason_phrase
from sip.parser import StreamFramer

log = logging.getLogger("voxswitch.sip.tcp")

IDLE_TIMEOUT_S = 600.0


class TcpConnection(asyncio.Protocol):
    """One TCP connection; it is also the flow its messages are answered on."""

    transport_name = "TCP"
    reliable = True

    def __init__(
        self,
        receive: Callable[[Message, TcpConnection], None],
        on_close: Callable[[TcpConnection], None],
    ) -> None:
        self._receive = receive
        self._on_close = on_close
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)

    @property
    def transport(self) -> str:  # the Flow protocol's name for the transport kind
        return "TCP"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport quacks like asyncio.Transport without being one.
        self._transport = cast(asyncio.Transport, transport)
        peer: Any = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1])

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._framer.feed(data)
        except RemoteProtocolError as exc:
            # The peer's valid messages before the bad one still count; after it the
            # stream cannot be resynchronised: answer what we can, then close.
            for message in self._framer.completed_before_error:
                self._receive(message, self)
            self._fail(exc)
            return
        if self._framer.keepalives:
            self._framer.keepalives = 0
            self.send(b"\r\n")  # RFC 5626 §3.5.1 pong
        for message in messages:
            self._receive(message, self)

    def _fail(self, exc: RemoteProtocolError) -> None:
        log.info("closing TCP connection from %s: %s", self.remote, exc.reason)
        partial = exc.partial
        if isinstance(partial, Request) and partial.method != "ACK":
            try:
                response = make_response(partial, exc.status, reason_phrase(exc.status))
                self.send(bytes(response))
            except Exception:  # the partial message may be too broken to echo
                log.debug("could not build an error response", exc_info=True)
        if self._transport is not None:
            self._transport.close()

    def send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_close(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def __repr__(self) -> str:
        return f"<TcpConnection {self.remote[0]}:{self.remote[1]}>"


class TcpServer:
    """Accepts connections, and opens ours to peers (a carrier trunk over TCP): one
    per peer address, reused while it stays open (RFC 3261 §18.1.1)."""

    def __init__(self, receive: Callable[[Message, TcpConnection], None]) -> None:
        self._receive = receive
        self.connections: set[TcpConnection] = set()
        self._server: asyncio.Server | None = None
        self._opened: dict[tuple[str, int], TcpConnection] = {}

    async def connect(self, host: str, port: int, timeout_s: float = 5.0) -> TcpConnection:
        """An open connection to ``host:port`` (an address): ours if we have one."""
        known = self._opened.get((host, port))
        if known is not None and known in self.connections:
            return known
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(self._make, host, port), timeout_s
        )
        self._opened[(host, port)] = conn
        return conn

    def _make(self) -> TcpConnection:
        conn = TcpConnection(self._receive, self.connections.discard)
        self.connections.add(conn)
        return conn

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make, host, port, reuse_address=True)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
