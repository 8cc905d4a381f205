"""TCP and TLS transports: stream framing by Content-Length (RFC 3261 §18.3).

A framing error closes the connection after a 400 when the request could be
understood far enough to answer it. TLS (RFC 3261 §26.3.1, RFC 5630) is the same
stream under the ``ssl`` module: a TLS connection also knows the names in the
peer's certificate when it presented one that verified (a trunk's client check).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

from sip.errors import RemoteProtocolError
from sip.message import Message, Request, make_response, reason_phrase
from sip.parser import StreamFramer

log = logging.getLogger("voxswitch.sip.tcp")

IDLE_TIMEOUT_S = 600.0


class TcpConnection(asyncio.Protocol):
    """One TCP connection; it is also the flow its messages are answered on."""

    reliable = True

    def __init__(
        self,
        receive: Callable[[Message, TcpConnection], None],
        on_close: Callable[[TcpConnection], None],
        name: str = "TCP",
    ) -> None:
        self._receive = receive
        self._on_close = on_close
        self._name = name
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.peer_names: frozenset[str] = frozenset()  # TLS: a verified certificate's

    @property
    def transport(self) -> str:  # the Flow protocol's name for the transport kind
        return self._name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport quacks like asyncio.Transport without being one.
        self._transport = cast(asyncio.Transport, transport)
        peer: Any = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1])
        # Only a certificate that verified shows up here (an empty dict otherwise).
        self.peer_names = certificate_names(transport.get_extra_info("peercert"))

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
        log.info("closing %s connection from %s: %s", self._name, self.remote, exc.reason)
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
        return f"<{self._name} connection {self.remote[0]}:{self.remote[1]}>"


def certificate_names(cert: Any) -> frozenset[str]:
    """The DNS names and IP addresses a peer certificate (``getpeercert()``) is for:
    its subjectAltName entries, and its common name."""
    if not cert:
        return frozenset()
    alt_names = cert.get("subjectAltName", ())
    names = {value for kind, value in alt_names if kind in ("DNS", "IP Address")}
    for rdn in cert.get("subject", ()):
        names.update(value for key, value in rdn if key == "commonName")
    return frozenset(name.lower() for name in names)


class TcpServer:
    """Accepts connections, and opens ours to peers (a carrier trunk over TCP or
    TLS): one per peer address, reused while it stays open (RFC 3261 §18.1.1)."""

    def __init__(
        self,
        receive: Callable[[Message, TcpConnection], None],
        *,
        name: str = "TCP",
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._receive = receive
        self.name = name
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self.connections: set[TcpConnection] = set()
        self._server: asyncio.Server | None = None
        self._opened: dict[tuple[str, int], TcpConnection] = {}

    async def connect(
        self, host: str, port: int, server_hostname: str | None = None, timeout_s: float = 5.0
    ) -> TcpConnection:
        """An open connection to ``host:port`` (an address): ours if we have one. Over
        TLS the peer's certificate must name ``server_hostname`` (default: ``host``)."""
        known = self._opened.get((host, port))
        if known is not None and known in self.connections:
            return known
        loop = asyncio.get_running_loop()
        if self._client_ssl is None:
            connecting = loop.create_connection(self._make, host, port)
        else:
            connecting = loop.create_connection(
                self._make, host, port, ssl=self._client_ssl,
                server_hostname=server_hostname or host, ssl_handshake_timeout=timeout_s,
            )  # fmt: skip
        try:
            _, conn = await asyncio.wait_for(connecting, timeout_s)
        except ssl.SSLCertVerificationError as exc:  # unreachable, and say why
            why = exc.verify_message or exc.reason
            raise OSError(f"TLS to {host}:{port}: certificate not accepted: {why}") from exc
        except ssl.SSLError as exc:
            raise OSError(f"TLS to {host}:{port}: {exc.reason or exc}") from exc
        self._opened[(host, port)] = conn
        return conn

    def _make(self) -> TcpConnection:
        conn = TcpConnection(self._receive, self.connections.discard, self.name)
        self.connections.add(conn)
        return conn

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make, host, port, reuse_address=True, ssl=self._server_ssl,
            ssl_handshake_timeout=10.0 if self._server_ssl is not None else None,
        )  # fmt: skip

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
