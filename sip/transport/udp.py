"""UDP transport: datagrams in, datagrams out, nothing else (RFC 3261 §18).

The socket is read with ``recvmsg`` and the kernel's receive timestamp
(``SO_TIMESTAMP``, Linux): how long each datagram waited before it was processed is
the delay a caller sees before we even parse its INVITE, and the one overload signal
no timer of the loop shows (a backlog waits while the loop's timers run on time).
``take_queue_delay`` gives the largest wait since the last call.

Two steps per datagram. Everything the socket holds is read at once and *triaged*
(a cheap look that may settle it: under overload, the refusal of a new INVITE); what
is left waits in our own queue and is *processed* in order, a bounded time's worth
per turn of the loop. So the loop comes back to the socket every few milliseconds
however much work is queued, and a refusal goes out one turn after its INVITE
arrived, not after the work of every datagram in front of it (measured: the 503s'
p99 under a 3× flood was the length of the loop's long turns, 40-80 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("voxswitch.sip.udp")

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # the kernel caps it at net.core.rmem_max
# Linux's SO_TIMESTAMP (= SCM_TIMESTAMP); the control message is a struct timeval.
SO_TIMESTAMP = 29
_TIMEVAL = struct.Struct("@ll")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMEVAL.size)
READS_PER_WAKEUP = 256  # then let timers and other sockets have the loop
PROCESS_BUDGET_S = 0.004  # processing per turn of the loop, then read the socket again
QUEUE_MAX = 50_000  # datagrams read but not yet processed; past it, new ones are dropped
MAX_DATAGRAM = 65535


class UdpFlow:
    """A peer reached over our UDP socket: responses go to its source address."""

    __slots__ = ("_sendto", "remote")

    transport = "UDP"
    reliable = False

    def __init__(self, sendto: Callable[[bytes, tuple[str, int]], None], remote: tuple[str, int]):
        self._sendto = sendto
        self.remote = remote

    def send(self, data: bytes) -> None:
        self._sendto(data, self.remote)

    def __repr__(self) -> str:
        return f"<UdpFlow {self.remote[0]}:{self.remote[1]}>"


class UdpTransport:
    """One UDP socket: read in batches with the kernel's receive times, each datagram
    triaged as read and the rest processed in turn; sends go out at once, or wait in
    order while the socket's send buffer is full."""

    def __init__(
        self,
        receive: Callable[[bytes, UdpFlow], None],
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        triage: Callable[[bytes, UdpFlow], bool] | None = None,
    ) -> None:
        self._receive = receive  # process one datagram
        self._triage = triage  # True: that settled it
        self._sock = sock
        self._loop = loop
        self._closed = False
        self._backlog: deque[tuple[bytes, tuple[str, int]]] = deque()
        # Triaged, waiting to be processed: (datagram, flow, kernel receive time).
        self._queue: deque[tuple[bytes, UdpFlow, float]] = deque()
        self._processing = False  # a turn of processing is scheduled
        self.queue_dropped = 0
        self._queue_delay = 0.0  # the longest wait in the socket's queue since taken
        self.current_wait = 0.0  # how long the datagram being handled waited
        self.timestamps = False
        with contextlib.suppress(OSError):
            if sys.platform.startswith("linux"):
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
                self.timestamps = True
        # Bursts of thousands of INVITEs a second must queue, not drop.
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def take_queue_delay(self) -> float:
        """The longest a datagram waited in the kernel before we read it (seconds),
        since the last call."""
        delay, self._queue_delay = self._queue_delay, 0.0
        return delay

    def _readable(self) -> None:
        sock = self._sock
        space = _CMSG_SPACE if self.timestamps else 0
        triage, queue = self._triage, self._queue
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(MAX_DATAGRAM, space)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP unreachable from a peer that went away
                log.debug("UDP error: %s", exc)
                continue
            now = received = time.time()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
                    seconds, micros = _TIMEVAL.unpack_from(value)
                    received = seconds + micros / 1e6
            self._waited(now - received)
            # addr is (host, port) for IPv4 and (host, port, flow, scope) for IPv6.
            flow = UdpFlow(self._sendto, (addr[0], addr[1]))
            if triage is not None and triage(data, flow):
                if self._closed:
                    return
                continue
            if len(queue) >= QUEUE_MAX:
                self.queue_dropped += 1  # as a full socket buffer would
                continue
            queue.append((data, flow, received))
        if queue and not self._processing:
            self._processing = True
            self._loop.call_soon(self._process)

    def _process(self) -> None:
        """Process queued datagrams in order for up to PROCESS_BUDGET_S, then give the
        loop back (and come again on its next turn if some are left)."""
        self._processing = False
        queue, receive = self._queue, self._receive
        deadline = time.perf_counter() + PROCESS_BUDGET_S
        while queue and not self._closed:
            data, flow, received = queue.popleft()
            self._waited(time.time() - received)
            receive(data, flow)
            if time.perf_counter() >= deadline:
                break
        if queue and not self._closed:
            self._processing = True
            self._loop.call_soon(self._process)

    def _waited(self, waited: float) -> None:
        self.current_wait = waited
        if waited > self._queue_delay:
            self._queue_delay = waited

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed:
            return
        if self._backlog:
            self._backlog.append((data, addr))
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._backlog.append((data, addr))
            self._loop.add_writer(self._sock.fileno(), self._writable)
        except OSError as exc:
            log.debug("UDP send to %s failed: %s", addr, exc)

    def _writable(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP send to %s failed: %s", addr, exc)
            self._backlog.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def flow_to(self, addr: tuple[str, int]) -> UdpFlow:
        return UdpFlow(self._sendto, addr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._backlog:
            self._loop.remove_writer(self._sock.fileno())
        self._sock.close()


async def start_udp(
    host: str,
    port: int,
    receive: Callable[[bytes, UdpFlow], None],
    triage: Callable[[bytes, UdpFlow], bool] | None = None,
) -> UdpTransport:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return UdpTransport(receive, sock, loop, triage)
