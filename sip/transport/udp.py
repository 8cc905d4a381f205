"""UDP transport: datagrams in, datagrams out, nothing else (RFC 3261 §18)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger("voxswitch.sip.udp")

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # the kernel caps it at net.core.rmem_max


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


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, UdpFlow], None]) -> None:
        self._receive = receive
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport quacks like asyncio.DatagramTransport without being one.
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Bursts of thousands of INVITEs a second must queue, not drop.
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # addr is (host, port) for IPv4 and (host, port, flow, scope) for IPv6.
        self._receive(data, UdpFlow(self._sendto, (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: nothing to do but note it.
        log.debug("UDP error: %s", exc)

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def flow_to(self, addr: tuple[str, int]) -> UdpFlow:
        return UdpFlow(self._sendto, addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def start_udp(
    host: str, port: int, receive: Callable[[bytes, UdpFlow], None]
) -> UdpTransport:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: UdpTransport(receive), local_addr=(host, port), reuse_port=False
    )
    return protocol
