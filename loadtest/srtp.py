"""What SRTP costs the media plant: N calls' media with and without SRTP.

    python -m loadtest.srtp [--calls 250,500] [--seconds 20]

For each N and each mode (plain RTP, SRTP AES_CM_128_HMAC_SHA1_80), an in-loop media
plant (``media_workers = 0``: the node's own loop, the hardest case) holds N legs
with a conversation session on each (decode, VAD, playout of silence); a peer
process pinned to the other core sends every leg 20 ms of quiet µ-law every 20 ms
(protected with the leg's keys in SRTP mode, by libsrtp there too) and drains what
the legs send back. Measured over ``--seconds`` once all legs run: the plant's
CPU time per second of wall time (its one core's share), and its 20 ms schedule's
lateness p50/p99 (``MediaPlant.lateness_ms``). The plant is pinned to CPU 1, the
peer to CPU 0. SIPp (3.6.1, Debian) speaks no SRTP, hence this harness.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from typing import Protocol

import pylibsrtp

from loadtest.cps import machine_summary
from loadtest.ports import LOOPBACK, free_port_range
from media.session import VadConfig
from media.srtp import SrtpKeys
from switch.mediaplant.leg import MediaPlant

SUITE = "AES_CM_128_HMAC_SHA1_80"
QUIET_ULAW = bytes([0xFE, 0x7E] * 80)  # ±1 LSB: frames the VAD hears as silence


class EventLike(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...


@dataclass
class Figures:
    calls: int
    srtp: bool
    cpu_share: float
    p50_ms: float
    p99_ms: float
    received: int
    rejected: int


def _peer(ports: list[int], keys: list[bytes | None], seconds: float, ready: EventLike) -> None:
    """Send every leg its packets on a 20 ms grid; drain what comes back."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    sessions = [
        None if key is None else pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
        for key in keys
    ]  # fmt: skip
    ready.set()
    start = time.monotonic()
    tick = 0
    while (now := time.monotonic()) - start < seconds:
        due = start + tick * 0.02
        if now < due:
            time.sleep(due - now)
        for i, port in enumerate(ports):
            packet = struct.pack("!BBHII", 0x80, 0, tick & 0xFFFF, tick * 160, i + 1) + QUIET_ULAW
            session = sessions[i]
            sock.sendto(packet if session is None else session.protect(packet), (LOOPBACK, port))
        tick += 1
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
    sock.close()


async def measure(calls: int, use_srtp: bool, seconds: float) -> Figures:
    ports = free_port_range(2 * calls + 2)
    plant = MediaPlant(LOOPBACK, ports, None, workers=0)
    await plant.start()
    legs = []
    peer_keys: list[bytes | None] = []
    peer_address = (LOOPBACK, 9)  # latched to the peer's real address at its first packet
    for i in range(calls):
        leg = plant.new_leg(f"bench-{i}")
        keys = None
        if use_srtp:
            keys = SrtpKeys(SUITE, secrets.token_bytes(30), secrets.token_bytes(30))
        leg.connect(peer_address, 0, "PCMU", None, keys)
        leg.start_session(lambda event, at: None, VadConfig())
        leg.play()
        legs.append(leg)
        peer_keys.append(keys.remote if keys is not None else None)
    ready = multiprocessing.get_context("spawn").Event()
    peer = multiprocessing.get_context("spawn").Process(
        target=_peer, args=([leg.local_port for leg in legs], peer_keys, seconds + 4, ready)
    )
    peer.start()
    while not ready.is_set():
        await asyncio.sleep(0.05)
    await asyncio.sleep(3.0)  # every leg latched and settled; the lateness window refills
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    p50, p99 = plant.lateness_ms(50), plant.lateness_ms(99)
    received = sum(leg.packets_received for leg in legs)
    rejected = sum(int(leg.stats().get("srtp_rejected") or 0) for leg in legs)
    peer.join(timeout=10)
    plant.close()
    return Figures(calls, use_srtp, cpu, p50, p99, received, rejected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="250,500", help="levels of N")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured span per run")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine_summary()}")
    print("| calls | media | plant CPU (one core) | lateness p50 | p99 | packets in | rejected |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for calls in (int(n) for n in args.calls.split(",")):
        for use_srtp in (False, True):
            f = asyncio.run(measure(calls, use_srtp, args.seconds))
            mode = "SRTP" if f.srtp else "RTP"
            print(f"| {f.calls} | {mode} | {f.cpu_share:.1%} | {f.p50_ms:.2f} ms "
                  f"| {f.p99_ms:.2f} ms | {f.received:,} | {f.rejected} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
