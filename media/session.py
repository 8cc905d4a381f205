"""One call's media content, sans-I/O: what comes in, what goes out, every 20 ms.

The RTP leg (socket, latching, pacing) feeds ``receive`` with each RTP packet and
calls ``tick`` once per 20 ms slot. In: G.711 is decoded into the jitter buffer,
telephone-events go to the DTMF receiver; each tick pulls one frame on time, runs
the VAD on it and keeps the caller's utterance (with a little audio from before
the onset) until the VAD says it ended. Out: the playout queue gives the frame to
send, or ``None`` for silence. Nothing here knows SIP or sockets; time is a
parameter.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from media.dtmf import DtmfDigit, DtmfReceiver
from media.g711 import tables
from media.jitter import JitterBuffer
from media.playout import PlayoutEvent, PlayoutQueue
from media.recording import CallRecorder
from media.speech import Pcm
from media.vad import SpeechEnded, SpeechStarted, VadState, VoiceActivityDetector

FRAME_SAMPLES = 160
FRAME_S = 0.020
SILENCE: Pcm = np.zeros(FRAME_SAMPLES, dtype=np.int16)
STREAM_GAP_SLOTS = 3  # slots without a packet before the VAD is fed silence
HOLD_AFTER_FRAMES = 2  # voice this long (40 ms) over our playout holds it
_VOICE_STATES = (VadState.STARTING, VadState.SPEAKING)


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = 2
    start_ms: int = 60  # speech this long is a start: barge-in must stop playout < 100 ms
    stop_ms: int = 500  # silence this long ends the caller's turn
    preroll_ms: int = 200  # audio kept from before the onset, for the recogniser
    max_utterance_s: float = 30.0


@dataclass(frozen=True)
class UtteranceCaptured:
    """The caller's words between SpeechStarted and SpeechEnded, for the recogniser."""

    pcm: Pcm
    started_at: float
    ended_at: float  # when the caller stopped speaking (end of the last voiced frame)
    decided_at: float  # when the VAD decided it (ended_at + the stop hangover)


@dataclass(frozen=True)
class PlayoutHeld:
    """Caller speech started over our playout: from this frame on we send silence."""

    onset_at: float  # the caller's first voiced frame
    at: float  # the first frame held back


MediaEvent = (
    SpeechStarted | SpeechEnded | UtteranceCaptured | DtmfDigit | PlayoutEvent | PlayoutHeld
)


class SessionControl(Protocol):
    """What the conversation steers: a ``MediaSession`` here, or a media worker's proxy."""

    def say(self, pcm: Pcm, utterance_id: str) -> None: ...

    def flush(self) -> list[MediaEvent]:
        """Drop queued playout at once; returns the events it caused (or they follow)."""
        ...

    def resume(self) -> None: ...

    @property
    def caller_speaking(self) -> bool: ...

    @property
    def capturing(self) -> bool: ...

    @property
    def paused(self) -> bool: ...

    @property
    def playing(self) -> bool: ...

    @property
    def queued_frames(self) -> int: ...


class MediaSession:
    def __init__(
        self,
        *,
        codec: str,
        payload_type: int,
        telephone_event_pt: int | None = None,
        vad: VadConfig | None = None,
        recorder: CallRecorder | None = None,
    ) -> None:
        self.codec = codec
        self.recorder = recorder  # both directions, a frame each per tick
        self.payload_type = payload_type
        self._encode_table, self._decode_table = tables(codec)
        self.telephone_event_pt = telephone_event_pt
        self.vad_config = vad or VadConfig()
        self.jitter = JitterBuffer()
        self.vad = VoiceActivityDetector(
            aggressiveness=self.vad_config.aggressiveness,
            start_ms=self.vad_config.start_ms,
            stop_ms=self.vad_config.stop_ms,
        )
        self.dtmf = DtmfReceiver()
        self.playout = PlayoutQueue()
        self.paused = False  # playout held (the caller may be barging in)
        preroll = max(1, self.vad_config.preroll_ms // 20)
        self._recent: deque[Pcm] = deque(maxlen=preroll)
        self._utterance: list[Pcm] | None = None
        self._utterance_started = 0.0
        self._max_frames = int(self.vad_config.max_utterance_s / FRAME_S)
        self._heard_since_tick = False
        self._quiet_slots = 0
        self._hold_onset: float | None = None
        self._voice_frames = 0  # consecutive frames the VAD was starting or speaking

    def renegotiated(self, codec: str, payload_type: int, telephone_event_pt: int | None) -> None:
        """A re-INVITE changed the codec: new numbering may follow, start the buffer over."""
        if (codec, payload_type) != (self.codec, self.payload_type):
            self.jitter.reset()
        self.codec, self.payload_type = codec, payload_type
        self.telephone_event_pt = telephone_event_pt
        self._encode_table, self._decode_table = tables(codec)

    # ---- in --------------------------------------------------------------------------

    def receive(
        self, payload_type: int, sequence: int, timestamp: int, payload: bytes, now: float
    ) -> list[MediaEvent]:
        """One RTP packet. The VAD hears audio as it arrives, not after the jitter buffer:
        barge-in must not wait the buffer's depth."""
        if payload_type == self.payload_type:
            pcm = self._decode_table.take(np.frombuffer(payload, dtype=np.uint8))
            self.jitter.put(sequence, timestamp, pcm, copy=False)  # a fresh array
            if pcm.size != FRAME_SAMPLES:
                return []
            self._heard_since_tick = True
            return self._listen(pcm, now)
        if payload_type == self.telephone_event_pt and self.telephone_event_pt is not None:
            return list(self.dtmf.feed(timestamp, payload, now))
        return []  # comfort noise, an unnegotiated codec: ignored

    def _listen(self, pcm: Pcm, now: float) -> list[MediaEvent]:
        events: list[MediaEvent] = []
        for vad_event in self.vad.process(pcm, now):
            events.append(vad_event)
            if isinstance(vad_event, SpeechStarted):
                self._utterance = list(self._recent)
                self._utterance_started = vad_event.at
            elif self._utterance is not None:
                events.append(self._captured(vad_event, now))
        if self.vad.state in _VOICE_STATES:
            self._voice_frames += 1
            if self._voice_frames == HOLD_AFTER_FRAMES and self.playout.playing and not self.paused:
                # Voice over our playout: hold it now, before the actor hears of it
                # (the caller must stop hearing us within 100 ms of their onset; the
                # VAD confirms speech later). The actor then decides: barge-in (flush)
                # or a backchannel or noise (resume).
                self.paused = True
                self._hold_onset = now - (HOLD_AFTER_FRAMES - 1) * FRAME_S
        else:
            self._voice_frames = 0
        return events

    # ---- every 20 ms -------------------------------------------------------------------

    def tick(self, now: float) -> tuple[bytes | None, list[MediaEvent]]:
        """The frame to send now (None: silence) and what happened on the way in."""
        events: list[MediaEvent] = []
        if self._heard_since_tick:
            self._quiet_slots = 0
        else:
            # No packet for a while (the caller stopped sending, or heavy loss): the VAD
            # hears silence, so a turn still ends when the stream does. Not for one
            # empty slot: senders burst, and zeros between noisy frames sound like onsets.
            self._quiet_slots += 1
            if self._quiet_slots >= STREAM_GAP_SLOTS:
                events += self._listen(SILENCE, now)
        self._heard_since_tick = False
        # What the recogniser gets comes out of the jitter buffer: in order, concealed.
        frame = self.jitter.pull()
        if self._utterance is not None:
            self._utterance.append(frame)
            if len(self._utterance) >= self._max_frames:  # a caller who never pauses
                ended = SpeechEnded(at=now, speech_s=now - self._utterance_started)
                self.vad.reset()
                events += [ended, self._captured(ended, now)]
        else:
            self._recent.append(frame)
        events += self.dtmf.tick(now)
        out: bytes | None = None
        pcm: Pcm | None = None
        if self.paused:
            if self._hold_onset is not None:
                events.append(PlayoutHeld(self._hold_onset, now))
                self._hold_onset = None
        else:
            pcm, playout_events = self.playout.next_frame()
            if playout_events:
                events += playout_events
            if pcm is not None:
                out = self._encode_table[pcm.view(np.uint16)].tobytes()
        if self.recorder is not None:
            self.recorder.add(frame, pcm)
        return out, events

    def _captured(self, ended: SpeechEnded, now: float) -> UtteranceCaptured:
        frames = self._utterance or []
        self._utterance = None
        pcm = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
        return UtteranceCaptured(pcm, self._utterance_started, ended.at, now)

    # ---- out ---------------------------------------------------------------------------

    def say(self, pcm: Pcm, utterance_id: str) -> None:
        self.playout.push(pcm, utterance_id)

    def flush(self) -> list[MediaEvent]:
        """Drop everything queued at once (barge-in); playing resumes with what comes next."""
        self.paused = False
        _, events = self.playout.flush()
        return list(events)

    @property
    def playing(self) -> bool:
        """Playout has audio to send (queued, started or not)."""
        return self.playout.playing

    @property
    def queued_frames(self) -> int:
        return self.playout.queued_frames

    def control_state(self) -> tuple[bool, bool, bool, int]:
        """(caller speaking, capturing, paused, frames queued) in one call: a media
        worker polls it for every session after every tick."""
        return (
            self.vad.state in _VOICE_STATES,
            self._utterance is not None,
            self.paused,
            self.playout.queued_frames,
        )

    @property
    def caller_speaking(self) -> bool:
        """The VAD hears the caller now (starting or confirmed)."""
        return self.vad.state in _VOICE_STATES

    @property
    def capturing(self) -> bool:
        """An utterance is being recorded (its UtteranceCaptured will follow)."""
        return self._utterance is not None

    def resume(self) -> None:
        self.paused = False
        self._hold_onset = None
