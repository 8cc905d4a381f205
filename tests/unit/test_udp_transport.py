"""The UDP transport: everything read is triaged at once, the rest processed in order a
bounded time's worth per turn of the loop (real sockets on loopback, a real loop)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

import pytest

from sip.transport import udp
from sip.transport.udp import UdpFlow, start_udp

WORK_S = 0.001  # what processing one datagram costs here


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_a_burst_is_triaged_before_the_work_in_front_of_it_and_processed_in_order() -> None:
    log: list[str] = []
    sources: set[tuple[str, int]] = set()

    def triage(data: bytes, flow: UdpFlow) -> bool:
        if data.startswith(b"refuse"):
            log.append("refused " + data.decode().split()[1])
            return True
        return False

    def process(data: bytes, flow: UdpFlow) -> None:
        sources.add(flow.remote)
        busy(WORK_S)
        log.append(data.decode())

    transport = await start_udp("127.0.0.1", 0, process, triage)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        address = transport.local_address
        # 40 datagrams of work (40 ms of it), then 20 that triage settles: all in the
        # socket before the loop reads any.
        for i in range(40):
            sender.sendto(f"work {i}".encode(), address)
        for i in range(20):
            sender.sendto(f"refuse {i}".encode(), address)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if len(log) == 60:
                break
        work = [entry for entry in log if entry.startswith("work")]
        assert work == [f"work {i}" for i in range(40)]  # in the order sent
        last_refusal = max(i for i, entry in enumerate(log) if entry.startswith("refused"))
        # Every refusal went out before most of the work was done (at most a turn's
        # worth of work was processed in the meantime).
        work_before = last_refusal - 19
        assert work_before <= int(udp.PROCESS_BUDGET_S / WORK_S) + 1, log
        assert sources == {("127.0.0.1", sender.getsockname()[1])}
        # The wait counts the time in our own queue: the last one waited for ~40 ms of
        # the work in front of it.
        assert transport.take_queue_delay() >= 30 * WORK_S
    finally:
        sender.close()
        transport.close()


async def test_processing_gives_the_loop_back_every_few_milliseconds() -> None:
    processed = 0
    ticks: list[int] = []  # datagrams processed when the loop's other callback ran

    def process(data: bytes, flow: UdpFlow) -> None:
        nonlocal processed
        busy(WORK_S)
        processed += 1

    transport = await start_udp("127.0.0.1", 0, process)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def tick() -> None:
        ticks.append(processed)
        if processed < 100:
            loop.call_soon(tick)
        else:
            done.set()

    try:
        loop.call_soon(tick)  # the loop's other work: it runs on every turn
        for i in range(100):
            sender.sendto(b"x%d" % i, transport.local_address)
        await asyncio.wait_for(done.wait(), 5)
        steps = [b - a for a, b in itertools.pairwise(ticks)]
        budget = int(udp.PROCESS_BUDGET_S / WORK_S) + 1
        assert max(steps) <= budget, steps  # never more than a turn's budget at once
        assert sum(steps) == 100 and len([s for s in steps if s]) >= 100 // budget
    finally:
        sender.close()
        transport.close()


async def test_past_its_bound_the_queue_drops_new_datagrams_and_counts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(udp, "QUEUE_MAX", 10)
    got: list[bytes] = []
    transport = await start_udp("127.0.0.1", 0, lambda data, flow: got.append(data))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(30):
            sender.sendto(b"%d" % i, transport.local_address)
        await asyncio.sleep(0.05)  # all in the socket, read in one wake-up
        for _ in range(100):
            await asyncio.sleep(0.005)
            if len(got) + transport.queue_dropped >= 30:
                break
        # All 30 were read in one wake-up, and the queue held only 10 of them.
        assert got == [b"%d" % i for i in range(10)]
        assert transport.queue_dropped == 20
    finally:
        sender.close()
        transport.close()
