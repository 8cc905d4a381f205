"""A media worker process: RTP, VAD and playout for a share of the node's calls.

One event loop can pace about 500–700 calls' media (measured: the Python work per
packet — RTP, jitter buffer, VAD, playout — not the syscalls, is what fills it), so
the node spreads calls over worker processes, one per core, each running the same
``MediaPlant`` and ``RtpLeg`` code it would run in-process. The node binds each call's
RTP and RTCP sockets itself (port allocation stays synchronous, and it keeps a copy of
every socket), hands them over through ``switch.mediaplant.channel``, and steers the leg
with small commands; the worker sends back speech and playout events with the
session's state, and once a second every leg's counters and its schedule lateness.

Run as ``python -m switch.mediaplant.worker FD BIND_HOST START-END [GREETING]``; it exits
when the node's end of the channel closes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import signal
import socket
import sys
from collections import deque
from typing import Any

from media.session import MediaEvent, MediaSession
from switch.mediaplant.channel import Channel
from switch.mediaplant.leg import MediaPlant, RtpLeg

log = logging.getLogger("voxswitch.media")

STATS_INTERVAL_S = 1.0  # each leg's counters reach the node this often
STATS_SLICES = 10  # ... spread over this many reports

# What the node's mirror of a session holds: (commands handled, caller speaking,
# capturing, playout held, frames queued).
SessionState = tuple[int, bool, bool, bool, int]


class _Call:
    __slots__ = ("acked", "leg", "reported", "session")

    def __init__(self, leg: RtpLeg) -> None:
        self.leg = leg
        self.session: MediaSession | None = None
        self.acked = 0  # session commands handled (the node ignores older state)
        self.reported: SessionState | None = None


class WorkerHost:
    """The worker's side of the channel: legs by local port, commands, reports."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, plant: MediaPlant, sock: socket.socket
    ) -> None:
        self.loop = loop
        self.plant = plant
        self.calls: dict[int, _Call] = {}
        self.done: asyncio.Future[None] = loop.create_future()
        self.channel = Channel(loop, sock, self.on_message, self.on_close)
        self._reported_lateness = 0
        self._stats_round: deque[int] = deque()  # legs still to report this second
        plant.after_tick = self.report_states
        self._stats_handle = loop.call_later(STATS_INTERVAL_S, self.report_stats)
        self.channel.send(("hello", os.getpid()))

    # ---- commands ----------------------------------------------------------------------

    def on_message(self, message: Any, fds: list[int]) -> None:
        kind, port, *args = message
        if kind == "adopt":
            self.adopt(port, args[0], args[1], fds)
            return
        if kind == "sync":  # report now (the answer follows the stats)
            self.report_stats(again=False)
            self.channel.send(("synced", 0, args[0]))
            return
        for fd in fds:  # only "adopt" carries descriptors
            os.close(fd)
        call = self.calls.get(port)
        if call is None:
            return
        leg = call.leg
        if kind == "connect":
            leg.connect(*args)
        elif kind == "session":
            on_event = functools.partial(self.on_event, port)
            call.session = leg.start_session(on_event, *args)
        elif kind == "play":
            leg.play()
        elif kind == "dtmf":
            leg.send_dtmf(args[0])
        elif kind == "bridge":
            leg.bridge(args[0])
        elif kind == "close":
            del self.calls[port]
            leg.close()
            self.channel.send(("closed", port))  # the port is free again
        else:
            self.session_command(call, kind, args)

    def session_command(self, call: _Call, kind: str, args: list[Any]) -> None:
        session = call.session
        call.acked = args[0]
        if session is None:
            return
        if kind == "say":
            session.say(args[1], args[2])
        elif kind == "flush":
            for event in session.flush():
                self.on_event(call.leg.local_port, event, self.loop.time())
        elif kind == "resume":
            session.resume()
        # The new acknowledgement goes out with the state after the next tick.

    def adopt(self, port: int, call_id: str, ssrc: int, fds: list[int]) -> None:
        rtp_fd, rtcp_fd = fds
        leg = self.plant.adopt(
            call_id, socket.socket(fileno=rtp_fd), port, socket.socket(fileno=rtcp_fd), ssrc
        )
        self.calls[port] = _Call(leg)

    # ---- reports -----------------------------------------------------------------------

    def on_event(self, port: int, event: MediaEvent, at: float) -> None:
        call = self.calls.get(port)
        state = self.state_of(call) if call is not None else None
        if call is not None:
            call.reported = state
        self.channel.send(("event", port, event, at, state))

    @staticmethod
    def state_of(call: _Call) -> SessionState | None:
        session = call.session
        if session is None:
            return None
        return (call.acked, *session.control_state())

    def report_states(self) -> None:
        """After every tick: the sessions whose mirrored state changed, in one message."""
        changed = []
        for port, call in self.calls.items():
            state = self.state_of(call)
            if state is not None and state != call.reported:
                call.reported = state
                changed.append((port, state))
        if changed:
            self.channel.send(("states", 0, changed))

    def report_stats(self, *, again: bool = True) -> None:
        """Every leg's counters once a second, a tenth of the legs every 100 ms (all at
        once would stall the loop for milliseconds: a late tick), and the schedule's
        lateness since the last report. ``again=False``: all legs now (a sync)."""
        now = self.loop.time()
        plant = self.plant
        fresh = min(plant.ticks - self._reported_lateness, len(plant.lateness))
        lateness = list(itertools.islice(reversed(plant.lateness), fresh))[::-1]
        self._reported_lateness = plant.ticks
        if again:
            if not self._stats_round:
                self._stats_round = deque(self.calls)
            share = -(-len(self._stats_round) // STATS_SLICES) if self._stats_round else 0
            ports = [self._stats_round.popleft() for _ in range(share)]
        else:
            ports = list(self.calls)
        legs = []
        for port in ports:
            call = self.calls.get(port)
            if call is not None:
                leg = call.leg
                legs.append(
                    (port, leg.packets_sent, leg.packets_received, leg.silence_s(now),
                     leg.target, leg.stats(), leg.rtp_state())
                )  # fmt: skip
        self.channel.send(("stats", 0, now, lateness, plant.late_ticks, legs))
        if again:
            self._stats_handle = self.loop.call_later(
                STATS_INTERVAL_S / STATS_SLICES, self.report_stats
            )

    def on_close(self) -> None:
        """The node is gone (or closed us): stop."""
        self._stats_handle.cancel()
        self.plant.close()
        if not self.done.done():
            self.done.set_result(None)


async def serve(fd: int, bind_host: str, ports: tuple[int, int], greeting: str | None) -> None:
    loop = asyncio.get_running_loop()
    plant = MediaPlant(bind_host, ports, greeting, loop=loop)
    host = WorkerHost(loop, plant, socket.socket(fileno=fd))
    await host.done


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group; the node decides when media
    # stops (it drains its calls first), so the worker leaves only when the node does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, bind_host, ports = int(argv[1]), argv[2], argv[3]
    start, _, end = ports.partition("-")
    greeting = argv[4] if len(argv) > 4 and argv[4] else None
    logging.basicConfig(level=logging.WARNING, format="media-worker %(levelname)s %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(fd, bind_host, (int(start), int(end)), greeting))
    else:
        uvloop.run(serve(fd, bind_host, (int(start), int(end)), greeting))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
