"""A web call's media: a WebRTC peer connection (aiortc) in front of a MediaSession.

aiortc does the WebRTC part (ICE, DTLS-SRTP, Opus or G.711, its own jitter handling)
and hands us decoded frames; the call's audio then goes through the same sans-I/O
``MediaSession`` as an RTP call's, so VAD, barge-in, playout and recording behave the
same. The browser's audio is resampled to 8 kHz mono and cut into 20 ms frames, each
given to the session as a G.711 µ-law payload with its own sequence number; the
agent's audio is the session's frame every 20 ms, on the outbound track's own
absolute schedule (aiortc pulls it), and goes out at 8 kHz (aiortc's encoder
resamples for Opus).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from media.g711 import ulaw_decode, ulaw_encode
from media.session import FRAME_SAMPLES, SILENCE, MediaEvent, MediaSession, VadConfig
from media.speech import Pcm
from media.srtp import SrtpKeys
from switch.mediaplant.leg import open_recorder, silence_since

log = logging.getLogger("voxswitch.webrtc")

RATE = 8000
FRAME_S = FRAME_SAMPLES / RATE
TIME_BASE = fractions.Fraction(1, RATE)
PCMU = 0  # the payload type the session is set up with (its codec inside the leg)


class AgentTrack(MediaStreamTrack):
    """What the browser hears: one 20 ms frame of the session's playout at a time, on
    an absolute schedule (no drift from sleep jitter)."""

    kind = "audio"

    def __init__(self, leg: WebRtcLeg) -> None:
        super().__init__()
        self.leg = leg
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = self.leg.next_frame(loop.time())
        frame = av.AudioFrame.from_ndarray(
            (SILENCE if pcm is None else pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        return frame


class WebRtcLeg:
    """The ``MediaLeg`` of a web call (see ``actors.call.MediaLeg``)."""

    local_port = 0  # no RTP port of ours: aiortc's ICE sockets carry the media

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.outbound = AgentTrack(self)
        self.codec = ""  # what the browser and aiortc agreed (opus, PCMU...)
        self._session: MediaSession | None = None
        self._on_event: Callable[[MediaEvent, float], None] | None = None
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self._pending = np.zeros(0, dtype=np.int16)  # 8 kHz samples short of a frame
        self._seq = 0
        self._sent = 0
        self._received = 0
        self._play_started: float | None = None
        self._last_rx: float | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    # ---- the browser's audio -------------------------------------------------------------

    def listen(self, track: MediaStreamTrack) -> None:
        """Read the browser's audio track until it ends."""
        self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the browser stopped sending (hung up, connection gone)
            if not isinstance(frame, av.AudioFrame):
                continue
            for resampled in self._resampler.resample(frame):
                self.feed(resampled.to_ndarray().reshape(-1).astype(np.int16), loop.time())

    def feed(self, pcm: Pcm, now: float) -> None:
        """8 kHz samples from the browser: whole 20 ms frames go to the session."""
        pending = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        whole = pending.size // FRAME_SAMPLES * FRAME_SAMPLES
        self._pending = pending[whole:].copy()
        for start in range(0, whole, FRAME_SAMPLES):
            self._received += 1
            self._last_rx = now
            session = self._session
            if session is None:
                continue
            self._seq = (self._seq + 1) & 0xFFFF
            chunk = pending[start : start + FRAME_SAMPLES]
            timestamp = (self._received * FRAME_SAMPLES) & 0xFFFFFFFF
            for event in session.receive(PCMU, self._seq, timestamp, ulaw_encode(chunk), now):
                self._emit(event, now)

    # ---- the agent's audio ---------------------------------------------------------------

    def next_frame(self, now: float) -> Pcm | None:
        """The frame of this 20 ms slot (None: silence), and the session's tick."""
        session = self._session
        if session is None or self._play_started is None:
            return None
        out, events = session.tick(now)
        for event in events:
            self._emit(event, now)
        if out is None:
            return None
        self._sent += 1
        return ulaw_decode(out)

    def _emit(self, event: MediaEvent, now: float) -> None:
        if self._on_event is not None:
            self._on_event(event, now)

    # ---- MediaLeg --------------------------------------------------------------------------

    def connect(
        self,
        remote: tuple[str, int],
        payload_type: int,
        codec: str,
        telephone_event_pt: int | None = None,
        srtp: SrtpKeys | None = None,
    ) -> None:
        """Nothing to point anywhere: the peer connection knows its peer."""

    def play(self) -> None:
        if self._play_started is None:
            self._play_started = asyncio.get_running_loop().time()

    def start_session(
        self,
        on_event: Callable[[MediaEvent, float], None],
        vad: VadConfig | None = None,
        record: str | None = None,
    ) -> MediaSession:
        recorder = open_recorder(record, "web call")
        self._on_event = on_event
        self._session = MediaSession(codec="PCMU", payload_type=PCMU, vad=vad, recorder=recorder)
        return self._session

    async def wait_closed(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)

    def send_dtmf(self, digits: str) -> None:
        log.info("DTMF %s not sent: the web phone takes no telephone-events", digits)

    def bridge(self, port: int | None) -> None:
        """A web call is never bridged (its transfer has no SIP peer to REFER)."""

    def stats(self) -> dict[str, Any]:
        return {"transport": "webrtc", "codec": self.codec}

    def silence_s(self, now: float) -> float:
        return silence_since(self._play_started, self._last_rx, now)

    def rtp_state(self) -> dict[str, int | None]:
        return {"ssrc": None, "sequence": None, "timestamp": None}

    @property
    def packets_sent(self) -> int:
        return self._sent

    @property
    def packets_received(self) -> int:
        return self._received

    def close(self) -> None:
        if self._closing is not None:
            return
        self._on_event = None  # the actor and the leg let go of each other (no cycle)
        if self._reader is not None:
            self._reader.cancel()
        self.outbound.stop()
        self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(Exception):  # aiortc's own teardown; nothing to salvage
            await self.pc.close()
        session = self._session
        if session is not None and session.recorder is not None:
            session.recorder.close()
