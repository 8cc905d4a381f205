"""The node's side of the media workers: a process handle, and the leg and session
proxies the call actor uses instead of an in-process ``RtpLeg`` and ``MediaSession``.

A ``RemoteLeg`` sends its commands to the worker that holds its sockets and mirrors
what the worker reports: the session's state with every event and after every tick in
which it changed (so ``caller_speaking`` is at most one tick old), the counters once
a second. Commands the session has not yet handled win over its reports: after
``say`` the mirror says "playing" until the worker has seen the ``say``.

The leg keeps its own copy of the sockets and of its set-up commands, so when a worker
dies the plant starts another, and the leg re-adopts and replays itself there: the
call loses the audio in flight (the jitter buffer, the rest of the current reply),
not the call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from media.g711 import codec_name
from media.session import MediaEvent, VadConfig
from media.speech import Pcm
from media.srtp import SrtpKeys
from switch.mediaplant.channel import Channel, socket_pair

log = logging.getLogger("voxswitch.media")

FRAME_SAMPLES = 160


class RemoteSession:
    """A ``SessionControl`` whose ``MediaSession`` lives in a media worker."""

    def __init__(self, leg: RemoteLeg) -> None:
        self._leg = leg
        self._sent = 0  # commands sent; the worker's reports say how many it handled
        self._speaking = False
        self._capturing = False
        self._paused = False
        self._queued = 0

    def say(self, pcm: Pcm, utterance_id: str) -> None:
        self._command("say", pcm, utterance_id)
        self._queued += -(-len(pcm) // FRAME_SAMPLES)

    def flush(self) -> list[MediaEvent]:
        """The interrupted utterance's events arrive later, like every other event."""
        self._command("flush")
        self._queued = 0
        self._paused = False
        return []

    def resume(self) -> None:
        self._command("resume")
        self._paused = False

    @property
    def caller_speaking(self) -> bool:
        return self._speaking

    @property
    def capturing(self) -> bool:
        return self._capturing

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def playing(self) -> bool:
        return self._queued > 0

    @property
    def queued_frames(self) -> int:
        return self._queued

    def _command(self, kind: str, *args: Any) -> None:
        self._sent += 1
        self._leg.send(kind, self._sent, *args)

    def apply(self, state: tuple[int, bool, bool, bool, int]) -> None:
        handled, speaking, capturing, paused, queued = state
        self._speaking, self._capturing = speaking, capturing
        if handled == self._sent:  # else a command is on its way: ours is newer
            self._paused, self._queued = paused, queued

    def restarted(self) -> None:
        """A new worker holds the leg: what was queued there is gone."""
        self._sent = 0
        self._speaking = self._capturing = self._paused = False
        self._queued = 0


class RemoteLeg:
    """A ``MediaLeg`` whose RTP runs in a media worker."""

    def __init__(
        self,
        worker: MediaWorker,
        call_id: str,
        port: int,
        sock: socket.socket,
        rtcp_sock: socket.socket,
        forget: Callable[[RemoteLeg], None],
    ) -> None:
        self.worker = worker
        self._forget = forget  # the plant's: no longer an active leg
        self.call_id = call_id
        self._port = port
        self._sock = sock
        self._rtcp_sock = rtcp_sock
        self._setup: dict[str, tuple[Any, ...]] = {}  # replayed on a new worker
        self._session: RemoteSession | None = None
        self._on_event: Callable[[MediaEvent, float], None] | None = None
        self._play_started: float | None = None
        self._sent = 0
        self._received = 0
        self._silence: tuple[float, float] | None = None  # (seconds, when measured)
        self._stats: dict[str, Any] = {}
        self.ssrc = random.getrandbits(32)
        self.codec = ""
        self.target: tuple[str, int] | None = None  # where the worker sends (reported)
        self.rtp: dict[str, int | None] = {}  # the worker's stream position (reported)
        self.closed = False
        worker.adopt(self)

    # ---- MediaLeg ------------------------------------------------------------------------

    @property
    def local_port(self) -> int:
        return self._port

    def connect(
        self,
        remote: tuple[str, int],
        payload_type: int,
        codec: str,
        telephone_event_pt: int | None = None,
        srtp: SrtpKeys | None = None,
    ) -> None:
        self.codec = codec_name(codec)
        args = (remote, payload_type, codec, telephone_event_pt, srtp)
        self._setup["connect"] = args
        self.send("connect", *args)

    def start_session(
        self,
        on_event: Callable[[MediaEvent, float], None],
        vad: VadConfig | None = None,
        record: str | None = None,
    ) -> RemoteSession:
        self._session = RemoteSession(self)
        self._on_event = on_event
        # A new worker taking the leg over appends to the same recording.
        self._setup["session"] = (vad, record)
        self.send("session", vad, record)
        return self._session

    async def wait_closed(self) -> None:
        """Until the worker has closed its side (and so finished the recording)."""
        await self.worker.leg_closed(self._port)

    def play(self) -> None:
        if self._play_started is not None or self.closed:
            return
        self._play_started = self.worker.loop.time()
        self._setup["play"] = ()
        self.send("play")

    def send_dtmf(self, digits: str) -> None:
        self.send("dtmf", digits)

    def bridge(self, port: int | None) -> None:
        """Relay to and from the leg on ``port`` (the plant put it in our worker)."""
        self._setup["bridge"] = (port,)
        self.send("bridge", port)

    def silence_s(self, now: float) -> float:
        if self._play_started is None:
            return 0.0
        if self._silence is None:
            return max(0.0, now - self._play_started)
        seconds, measured = self._silence
        return max(0.0, seconds + now - measured)

    @property
    def playing(self) -> bool:
        return self._play_started is not None and not self.closed

    @property
    def packets_sent(self) -> int:
        return self._sent

    @property
    def packets_received(self) -> int:
        return self._received

    @property
    def send_errors(self) -> int:
        return int(self._stats.get("send_errors", 0))

    def stats(self) -> dict[str, Any]:
        """As of the worker's last report (at most a second old)."""
        return dict(self._stats)

    def rtp_state(self) -> dict[str, int | None]:
        """As of the worker's last report; the SSRC is ours, always current."""
        return {"sequence": None, "timestamp": None, **self.rtp, "ssrc": self.ssrc}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.send("close")
        self.worker.closed_leg(self)
        self._forget(self)
        self._sock.close()
        self._rtcp_sock.close()

    # ---- the worker's side ---------------------------------------------------------------

    @property
    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self._sock, self._rtcp_sock

    def send(self, kind: str, *args: Any) -> None:
        self.worker.channel.send((kind, self._port, *args))

    def moved_to(self, worker: MediaWorker) -> None:
        """Re-adopt on a new worker and replay the set-up (connect, session, play)."""
        self.worker = worker
        # The new leg starts its own sequence and timestamp: a new SSRC says so
        # (RFC 3550 §8.2), so the peer resets its jitter buffer instead of waiting out
        # a jump in sequence numbers.
        self.ssrc = random.getrandbits(32)
        worker.adopt(self)
        for kind in ("connect", "session", "play", "bridge"):
            if kind in self._setup:
                self.send(kind, *self._setup[kind])
        if self._session is not None:
            self._session.restarted()

    def on_event(self, event: MediaEvent, at: float, state: Any) -> None:
        if state is not None and self._session is not None:
            self._session.apply(state)
        if self._on_event is not None:
            self._on_event(event, at)

    def on_state(self, state: tuple[int, bool, bool, bool, int]) -> None:
        if self._session is not None:
            self._session.apply(state)

    def on_stats(
        self,
        sent: int,
        received: int,
        silence: float,
        at: float,
        target: tuple[str, int] | None,
        stats: dict[str, Any],
    ) -> None:
        self._sent, self._received = sent, received
        self._silence = (silence, at)
        self.target = target
        self._stats = stats


class MediaWorker:
    """One worker process and its channel, seen from the node."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        bind_host: str,
        ports: tuple[int, int],
        greeting_file: str | None,
        on_lateness: Callable[[list[float], int], None],
        on_exit: Callable[[MediaWorker], None],
        on_port_free: Callable[[int], None],
    ) -> None:
        self.loop = loop
        self._on_port_free = on_port_free
        self.closing: set[int] = set()  # legs closed here, not yet in the worker
        self._on_lateness = on_lateness
        self._on_exit = on_exit
        self.legs: dict[int, RemoteLeg] = {}
        self.late_ticks = 0
        self.ready: asyncio.Future[None] = loop.create_future()
        self._syncs: dict[int, asyncio.Future[None]] = {}
        self._closed_waiters: dict[int, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        ours, theirs = socket_pair()
        fd = theirs.fileno()
        command = [
            sys.executable, "-m", "switch.mediaplant.worker",
            str(fd), bind_host, f"{ports[0]}-{ports[1]}", greeting_file or "",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, pass_fds=(fd,))
        theirs.close()
        self.channel = Channel(loop, ours, self._on_message, self._on_close)

    def adopt(self, leg: RemoteLeg) -> None:
        self.legs[leg.local_port] = leg
        fds = [s.fileno() for s in leg.sockets]
        self.channel.send(("adopt", leg.local_port, leg.call_id, leg.ssrc), fds)

    def closed_leg(self, leg: RemoteLeg) -> None:
        """Its port is free once the worker has closed its copy of the sockets."""
        if self.legs.pop(leg.local_port, None) is leg:
            self.closing.add(leg.local_port)

    async def leg_closed(self, port: int) -> None:
        """Until the worker reports the leg on ``port`` closed (or itself exits)."""
        if port not in self.closing:
            return
        future = self._closed_waiters.get(port)
        if future is None:
            future = self._closed_waiters[port] = self.loop.create_future()
        await asyncio.shield(future)

    def _closed(self, port: int) -> None:
        future = self._closed_waiters.pop(port, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_message(self, message: Any, fds: list[int]) -> None:
        kind, port, *args = message
        if kind == "event":
            leg = self.legs.get(port)
            if leg is not None:
                leg.on_event(args[0], args[1], args[2])
        elif kind == "states":
            for leg_port, state in args[0]:
                leg = self.legs.get(leg_port)
                if leg is not None:
                    leg.on_state(state)
        elif kind == "stats":
            at, lateness, late_ticks, legs = args
            for leg_port, sent, received, silence, target, stats, rtp in legs:
                leg = self.legs.get(leg_port)
                if leg is not None:
                    leg.on_stats(sent, received, silence, at, target, stats)
                    leg.rtp = rtp
            self.late_ticks = late_ticks
            self._on_lateness(lateness, late_ticks)
        elif kind == "closed":
            if port in self.closing:
                self.closing.discard(port)
                self._on_port_free(port)
            self._closed(port)
        elif kind == "synced":
            future = self._syncs.pop(args[0], None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "hello" and not self.ready.done():
            self.ready.set_result(None)

    async def sync(self) -> None:
        """A fresh report of every leg's counters (they are otherwise up to 1 s old)."""
        token = next(self._tokens)
        future = self._syncs[token] = self.loop.create_future()
        self.channel.send(("sync", 0, token))
        await future

    def _on_close(self) -> None:
        for port in self.closing:  # its copies of the sockets died with it
            self._on_port_free(port)
            self._closed(port)
        self.closing.clear()
        for future in self._syncs.values():
            if not future.done():
                future.set_exception(ConnectionError("media worker exited"))
        self._syncs.clear()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("media worker exited before it was up"))
            self.ready.exception()  # retrieved: nobody may be waiting
        self._on_exit(self)

    def close(self) -> None:
        """Close the channel: the worker sees end of file, closes its legs and exits."""
        self.channel.close()

    def wait(self, timeout: float = 2.0) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
