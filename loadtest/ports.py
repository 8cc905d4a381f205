"""Free ports on the loopback for nodes and SIPp under test.

Probing is racy by nature (a port found free may be taken before it is used), so the
helpers bind to check and pick at random among candidates: two test runs on one
machine rarely collide, and a collision shows up as a clear bind error, not a hang.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterable

LOOPBACK = "127.0.0.1"

# RTP ranges stay out of the kernel's ephemeral range (32768-60999 on Linux), where
# SIPp's and the node's own client sockets come from, and away from the node's
# default range (20000-29999) that a developer's `make run` may hold.
RTP_RANGE_REGIONS: tuple[tuple[int, int], ...] = ((30000, 32767), (61000, 65535))

# Ports this process handed out already. The kernel happily returns the same port
# from two bind(0) calls in a row once the first socket is closed, so without this
# a node's SIP and HTTP ports, or SIPp's own port and its target, could coincide.
_handed_out: set[int] = set()


def _bindable(kind: socket.SocketKind, port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def release(ports: Iterable[int]) -> None:
    """Ports whose user has exited: they may be handed out again (a long test session
    starts more nodes than the RTP regions hold 200-port blocks)."""
    _handed_out.difference_update(ports)


def port_is_free(port: int, *, udp: bool = True, tcp: bool = True, host: str = LOOPBACK) -> bool:
    """True when `port` can be bound now on `host` for each of the asked protocols."""
    if udp and not _bindable(socket.SOCK_DGRAM, port, host):
        return False
    return not (tcp and not _bindable(socket.SOCK_STREAM, port, host))


def free_port(*, udp: bool = True, tcp: bool = True, span: int = 1, host: str = LOOPBACK) -> int:
    """A port (and the `span - 1` ports above it) free for UDP and/or TCP.

    The kernel picks the candidate (bind to port 0), so it comes from the ephemeral
    range and is unlikely to be handed out again soon.
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        ports = range(port, port + span)
        if port + span > 65536 or any(p in _handed_out for p in ports):
            continue
        if all(port_is_free(p, udp=udp, tcp=tcp, host=host) for p in ports):
            _handed_out.update(ports)
            return port
    raise RuntimeError(f"no free port (udp={udp}, tcp={tcp}, span={span}) on {host}")


def free_listen_ports(
    span: int, *, udp: bool = True, tcp: bool = True, host: str = LOOPBACK
) -> int:
    """The first of `span` consecutive ports free for UDP and/or TCP, chosen out of the
    kernel's ephemeral range: for a listener started seconds after the pick (a script
    that checks services first), where a client socket's ephemeral port — its own
    connection to Redis, say — could otherwise take the port in between."""
    regions = [(lo, hi - span + 1) for lo, hi in RTP_RANGE_REGIONS if hi - lo + 1 >= span]
    rng = random.Random(os.getpid() ^ random.getrandbits(32))
    for _ in range(500):
        lo, hi = rng.choice(regions)
        start = rng.randint(lo, hi)
        ports = range(start, start + span)
        if any(p in _handed_out for p in ports):
            continue
        if all(port_is_free(p, udp=udp, tcp=tcp, host=host) for p in ports):
            _handed_out.update(ports)
            return start
    raise RuntimeError(f"no {span} free ports (udp={udp}, tcp={tcp}) out of the ephemeral range")


def free_port_range(
    size: int,
    *,
    regions: Iterable[tuple[int, int]] = RTP_RANGE_REGIONS,
    host: str = LOOPBACK,
    exclude: Iterable[tuple[int, int]] = (),
) -> tuple[int, int]:
    """An even-aligned block of `size` consecutive UDP ports, all bindable now.

    Returns (start, end) inclusive, as the node's ``--rtp-ports START-END`` wants it.
    Blocks that overlap `exclude`, or ports this process handed out before, are
    skipped.
    """
    if size < 4:
        raise ValueError(f"range size must be >= 4, got {size}")
    size += size % 2
    taken = list(exclude)
    blocks = [
        (start, start + size - 1)
        for lo, hi in regions
        for start in range(lo + lo % 2, hi - size + 2, size)
    ]
    random.Random(os.getpid() ^ random.getrandbits(32)).shuffle(blocks)
    for start, end in blocks:
        if any(start <= t_end and t_start <= end for t_start, t_end in taken):
            continue
        ports = range(start, end + 1)
        if any(p in _handed_out for p in ports):
            continue
        if all(_bindable(socket.SOCK_DGRAM, port, host) for port in ports):
            _handed_out.update(ports)
            return start, end
    raise RuntimeError(f"no free block of {size} UDP ports in {list(regions)} on {host}")
