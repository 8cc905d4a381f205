"""TCP and TLS transports: stream framing by Content-Length (RFC 3261 §18.3).

A framing error closes the connection after a 400 when the request could be
understood far enough to answer it. TLS (RFC 3261 §26.3.1, RFC 5630) is the same
stream under the ``ssl`` module: a TLS connection also knows the names in the
peer's certificate when it presented one that verified (a trunk's client check).

What a peer may hold is bounded (``sip.transport.limits``): connection caps, per
source and in total, an idle timeout, a deadline for each message, and the bytes one
message may buffer. The listener accepts connections itself so that the caps and the
source's ban are checked on the bare socket: a refused connection is reset before a
TLS handshake costs any CPU. One timer per listener sweeps the timeouts; the rules
themselves are sans-I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import struct
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sip.errors import RemoteProtocolError
from sip.message import Message, Request, make_response, reason_phrase
from sip.parser import MAX_HEADER_BYTES, StreamFramer
from sip.transport.limits import CLOSED_SLOW, ConnectionTable, StreamLimits

log = logging.getLogger("voxswitch.sip.tcp")

TLS_HANDSHAKE_TIMEOUT_S = 10.0
TLS_SHUTDOWN_TIMEOUT_S = 5.0  # a closed TLS connection waits this long for close_notify
LISTEN_BACKLOG = 1024
ACCEPTS_PER_WAKEUP = 128  # then let the loop run other work
ACCEPT_PAUSE_S = 1.0  # out of descriptors: stop accepting for this long
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends a reset, leaves no TIME_WAIT


class _Framer(StreamFramer):
    @property
    def incomplete(self) -> bool:
        """Part of a message is buffered (CRLF keepalives are consumed as they come)."""
        return bool(self._buffer) or self._pending is not None


class _Listener(Protocol):
    """What a connection tells the server that owns it."""

    def opened(self, conn: TcpConnection) -> bool: ...  # False: close it
    def framed(
        self, conn: TcpConnection, messages: int, keepalives: int, incomplete: bool
    ) -> bool: ...  # False: close it (its source is banned)
    def lost(self, conn: TcpConnection) -> None: ...


class TcpConnection(asyncio.Protocol):
    """One TCP connection; it is also the flow its messages are answered on."""

    reliable = True

    def __init__(
        self,
        receive: Callable[[Message, TcpConnection], None],
        listener: _Listener,
        name: str = "TCP",
        *,
        inbound: bool = True,
        max_message_bytes: int = 0,
    ) -> None:
        self._receive = receive
        self._listener = listener
        self._name = name
        self.inbound = inbound  # the peer opened it (not one of ours to a trunk)
        header_cap = min(MAX_HEADER_BYTES, max_message_bytes or MAX_HEADER_BYTES)
        if max_message_bytes:
            self._framer = _Framer(header_cap, max_message_bytes)
        else:
            self._framer = _Framer()
        self._transport: asyncio.Transport | None = None
        self.establishing: asyncio.Task[None] | None = None  # accepted, TLS under way
        self.made = False  # connection_made was called (it is, or was, established)
        self.remote: tuple[str, int] = ("", 0)
        self.peer_names: frozenset[str] = frozenset()  # TLS: a verified certificate's

    @property
    def transport(self) -> str:  # the Flow protocol's name for the transport kind
        return self._name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport quacks like asyncio.Transport without being one.
        self._transport = cast(asyncio.Transport, transport)
        self.made = True
        peer: Any = transport.get_extra_info("peername")
        if peer:  # (None from uvloop when the peer has already reset it)
            self.remote = (peer[0], peer[1])
        # Only a certificate that verified shows up here (an empty dict otherwise).
        self.peer_names = certificate_names(transport.get_extra_info("peercert"))
        if not self._listener.opened(self):
            self._transport.abort()

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
        keepalives = self._framer.keepalives
        self._framer.keepalives = 0
        if not self._listener.framed(self, len(messages), keepalives, self._framer.incomplete):
            self.close()  # its source was banned since it connected
            return
        if keepalives:
            with contextlib.suppress(OSError):
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
        self.close()

    def send(self, data: bytes) -> None:
        """Raises OSError when the connection is gone (the endpoint logs it and goes on)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError(f"{self._name} connection to {self.remote} is closed")
        try:
            transport.write(data)
        except RuntimeError as exc:  # uvloop: a handle closed under us (a reset peer)
            raise ConnectionResetError(str(exc)) from exc

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._listener.lost(self)

    def close(self) -> None:
        """Close after what was written has left."""
        if self.establishing is not None and not self.establishing.done():
            self.establishing.cancel()  # closes the socket
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping what is unsent."""
        if self.establishing is not None and not self.establishing.done():
            self.establishing.cancel()
        elif self._transport is not None:
            self._transport.abort()

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


@dataclass
class _Listening:
    loop: asyncio.AbstractEventLoop
    sockets: list[socket.socket] = field(default_factory=list)


class TcpServer:
    """Accepts connections, and opens ours to peers (a carrier trunk over TCP or
    TLS): one per peer address, reused while it stays open (RFC 3261 §18.1.1).

    ``banned`` (source IP -> refuse its connections) and ``unlimited`` (source IP ->
    exempt from the per-source cap) are the node's source policy; ``in_use`` says which
    connections carry a live call (never closed as idle).
    """

    def __init__(
        self,
        receive: Callable[[Message, TcpConnection], None],
        *,
        name: str = "TCP",
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        limits: StreamLimits | None = None,
        banned: Callable[[str], bool] | None = None,
        unlimited: Callable[[str], bool] | None = None,
        in_use: Callable[[], Container[object]] | None = None,
    ) -> None:
        self._receive = receive
        self.name = name
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self.limits = limits or StreamLimits()
        self.table: ConnectionTable[TcpConnection] = ConnectionTable(
            self.limits, banned=banned, unlimited=unlimited
        )
        self._in_use = in_use
        self.connections: set[TcpConnection] = set()
        self._server: _Listening | None = None
        self._opened: dict[tuple[str, int], TcpConnection] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._accept_paused = False
        self._reported = (0, 0)  # refusals and closes last logged

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
            connecting = loop.create_connection(self._make_outbound, host, port)
        else:
            connecting = loop.create_connection(
                self._make_outbound, host, port, ssl=self._client_ssl,
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

    def _make_outbound(self) -> TcpConnection:
        return TcpConnection(
            self._receive, self, self.name, inbound=False,
            max_message_bytes=self.limits.max_message_bytes,
        )  # fmt: skip

    # ---- accepting -----------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Listen on every address ``host`` resolves to (as ``loop.create_server``)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        listening = _Listening(loop)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                listening.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
        except OSError:
            for sock in listening.sockets:
                sock.close()
            raise
        self._server = listening
        for sock in listening.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = self.limits.max_connections
        if soft != resource.RLIM_INFINITY and (not cap or cap > soft // 2):
            log.warning(
                "%s: up to %s connections but %d file descriptors (ulimit -n) for "
                "everything: raise the limit or lower sip_tcp_max_connections",
                self.name, cap or "unlimited", soft,
            )  # fmt: skip

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting(exc)
                    return
                log.info("%s accept failed: %s", self.name, exc)  # e.g. ECONNABORTED
                continue
            self._accepted(sock, address)

    def _pause_accepting(self, exc: OSError) -> None:
        self.table.refused["no_descriptors"] += 1
        if self._accept_paused or self._server is None:
            return
        log.warning(
            "%s: cannot accept (%s): pausing %.0f s; raise the descriptor limit or lower "
            "sip_tcp_max_connections", self.name, exc.strerror, ACCEPT_PAUSE_S,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        self._accept_paused = True
        for sock in self._server.sockets:
            loop.remove_reader(sock.fileno())
        loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_paused = False
        if self._server is not None:
            loop = asyncio.get_running_loop()
            for sock in self._server.sockets:
                loop.add_reader(sock.fileno(), self._accept, sock)

    def _accepted(self, sock: socket.socket, address: Any) -> None:
        loop = asyncio.get_running_loop()
        conn = TcpConnection(
            self._receive, self, self.name, max_message_bytes=self.limits.max_message_bytes
        )
        conn.remote = (address[0], address[1])
        why = self.table.admit(conn, address[0], loop.time())
        if why is not None:
            log.debug("refused a %s connection from %s: %s", self.name, conn.remote, why)
            with contextlib.suppress(OSError):  # a peer that already reset it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
            return
        sock.setblocking(False)
        self.connections.add(conn)
        conn.establishing = loop.create_task(self._establish(conn, sock))
        self._arm_sweep()

    async def _establish(self, conn: TcpConnection, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._server_ssl is None:
                await loop.connect_accepted_socket(lambda: conn, sock)
            else:
                await loop.connect_accepted_socket(
                    lambda: conn, sock, ssl=self._server_ssl,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S,
                    ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S,
                )  # fmt: skip
        except asyncio.CancelledError:  # closed by us (a sweep, the server's close)
            sock.close()  # (a no-op if the transport already did)
            self._forget(conn)
            raise
        except Exception as exc:  # a failed handshake: the peer's doing, not a bug
            log.debug("%s connection from %s failed: %s", self.name, conn.remote, exc)
            sock.close()
            if conn in self.table:
                self.table.closed_by_peer(conn)
                self.table.closed["handshake"] += 1
            self._forget(conn)
            return
        if not conn.made:  # gone before it was made (uvloop then calls neither callback)
            self._forget(conn)

    # ---- what connections tell us (the _Listener protocol) -------------------------

    def opened(self, conn: TcpConnection) -> bool:
        if conn.inbound:  # admitted at the accept; still there unless swept meanwhile
            return conn in self.table
        # Ours to a peer: counted, never refused.
        self.table.admit(conn, conn.remote[0], asyncio.get_running_loop().time(), inbound=False)
        self.connections.add(conn)
        self._arm_sweep()
        return True

    def framed(self, conn: TcpConnection, messages: int, keepalives: int, incomplete: bool) -> bool:
        if self.table.banned(conn):
            log.debug("closing %s connection from %s: source banned", self.name, conn.remote)
            return False
        now = asyncio.get_running_loop().time()
        self.table.received(
            conn, now, messages=messages, keepalives=keepalives, incomplete=incomplete
        )
        return True

    def lost(self, conn: TcpConnection) -> None:
        self._forget(conn)

    def _forget(self, conn: TcpConnection) -> None:
        self.connections.discard(conn)
        self.table.closed_by_peer(conn)

    # ---- the sweep -----------------------------------------------------------------

    def _arm_sweep(self) -> None:
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.limits.sweep_every_s, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        for conn, why in self.table.expired(loop.time(), self._in_use):
            log.debug("closing %s connection from %s: %s", self.name, conn.remote, why)
            self.connections.discard(conn)
            if why == CLOSED_SLOW:
                conn.abort()  # nothing of a half-sent message to wait for
            else:
                conn.close()
        self._report()
        if self.connections:
            self._arm_sweep()

    def _report(self) -> None:
        """One line a sweep at most, when connections were refused or closed (a flood
        is not a line per connection)."""
        table = self.table
        counts = (sum(table.refused.values()), sum(table.closed.values()))
        if counts != self._reported:
            self._reported = counts
            log.info("%s connections: %d open; so far refused %s, closed %s", self.name,
                     len(table), dict(table.refused), dict(table.closed))  # fmt: skip

    def status(self) -> dict[str, object]:
        """Open, opened, refused and closed by reason (for /health)."""
        return self.table.status()

    def close(self) -> None:
        if self._server is not None:
            for sock in self._server.sockets:
                if not self._accept_paused:
                    self._server.loop.remove_reader(sock.fileno())
                sock.close()
            self._server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close()
