"""What crosses the loopback interface, captured with a raw packet socket (needs root,
as the test machines run: CAP_NET_RAW): the UDP datagrams to or from some ports."""

from __future__ import annotations

import math
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # the copy of a packet as it leaves; on lo it comes back as incoming


@dataclass(frozen=True)
class Datagram:
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


class LoopbackCapture:
    """``with LoopbackCapture(ports) as wire: ...`` then ``wire.datagrams``."""

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self.datagrams: list[Datagram] = []
        self._stop = threading.Event()
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError as exc:
            raise AssertionError("capturing on lo needs root (CAP_NET_RAW)") from exc
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == PACKET_OUTGOING:
                continue
            datagram = _udp_of(frame[14:])  # lo's frames carry an all-zero Ethernet header
            if datagram is not None and (
                datagram.source[1] in self.ports or datagram.destination[1] in self.ports
            ):
                self.datagrams.append(datagram)

    def between(self, source_port: int, destination_port: int) -> list[bytes]:
        return [d.payload for d in self.datagrams
                if (d.source[1], d.destination[1]) == (source_port, destination_port)]  # fmt: skip


def _udp_of(packet: bytes) -> Datagram | None:
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    header = (packet[0] & 0x0F) * 4
    source = socket.inet_ntoa(packet[12:16])
    destination = socket.inet_ntoa(packet[16:20])
    sport, dport, length = struct.unpack_from("!HHH", packet, header)
    payload = packet[header + 8 : header + length]
    return Datagram((source, sport), (destination, dport), payload)


def byte_entropy(chunks: list[bytes]) -> float:
    """Shannon entropy of the bytes, in bits per byte: ~8 for ciphertext, far less for
    G.711 (silence is one byte value; speech and tones a few dozen)."""
    counts = Counter(b"".join(chunks))
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values()) if total else 0.0
