"""What the simulated caller hears, sans-I/O: the received audio laid on the caller's
clock, and a speech detector that says when a party starts and stops talking.

Time here is the caller's: seconds (or samples at 8 kHz) since the call was answered.

``ReceivedTrack`` places each RTP packet's samples where its timestamp says, anchored
to the arrival of the stream's first packet: the track keeps the sender's own spacing
(no jitter smear) and stays on the caller's clock. A new SSRC, or a packet newer than
any before whose place is more than ``REANCHOR_S`` from its arrival (a sender whose
timestamps jump or stand still over a pause), re-anchors the stream to that packet's
arrival; a late (reordered) packet keeps the place its timestamp gives it.

``SpeechDetector`` is the node's VAD (``media.vad``: webrtcvad with hysteresis and its
hangover taken back) behind an energy gate: a frame quieter than ``floor_rms`` counts
as silence, so line hiss or comfort noise never reads as talking. ``gap_ms`` of
non-speech ends an utterance (pauses inside a sentence shorter than that do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from media.speech import SAMPLE_RATE, Pcm
from media.vad import SpeechEnded, SpeechStarted, VadEvent, VoiceActivityDetector

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
REANCHOR_S = 0.25
_TS_MOD = 1 << 32
_INITIAL_SAMPLES = 10 * SAMPLE_RATE

__all__ = [
    "FRAME_S",
    "FRAME_SAMPLES",
    "GrowingPcm",
    "ReceivedTrack",
    "SpeechDetector",
    "SpeechEnded",
    "SpeechStarted",
]


class GrowingPcm:
    """An int16 track written at any sample position, grown on demand up to a cap."""

    def __init__(self, max_samples: int) -> None:
        if max_samples <= 0:
            raise ValueError("max_samples must be positive")
        self.max_samples = max_samples
        self._data = np.zeros(min(_INITIAL_SAMPLES, max_samples), dtype=np.int16)
        self.length = 0  # one past the last sample written
        self.dropped_samples = 0  # written past the cap (or before 0)

    def write(self, position: int, samples: Pcm) -> None:
        start, end = position, position + len(samples)
        if start < 0:
            self.dropped_samples += min(len(samples), -start)
            samples, start = samples[-start:], 0
        if end > self.max_samples:
            self.dropped_samples += end - max(start, self.max_samples)
            end = self.max_samples
        if end <= start:
            return
        if end > len(self._data):
            grown = np.zeros(min(self.max_samples, max(end, 2 * len(self._data))), np.int16)
            grown[: self.length] = self._data[: self.length]
            self._data = grown
        self._data[start:end] = samples[: end - start]
        self.length = max(self.length, end)

    def read(self, start: int, count: int) -> Pcm:
        """``count`` samples from ``start``; zeros where nothing was written."""
        out = np.zeros(count, dtype=np.int16)
        lo, hi = max(0, start), min(start + count, self.length)
        if hi > lo:
            out[lo - start : hi - start] = self._data[lo:hi]
        return out

    def array(self, length: int | None = None) -> Pcm:
        """A copy of the track, cut or padded with zeros to ``length`` samples."""
        n = self.length if length is None else length
        return self.read(0, n)


@dataclass
class ReceiveStats:
    packets: int = 0
    reanchored: int = 0  # times the stream's anchor was moved (SSRC change, jump)


class ReceivedTrack:
    """Received audio on the caller's clock (see the module docstring)."""

    def __init__(self, max_samples: int) -> None:
        self.pcm = GrowingPcm(max_samples)
        self.stats = ReceiveStats()
        self._ssrc: int | None = None
        self._anchor = 0  # caller-clock sample of RTP timestamp _ts0
        self._ts0 = 0
        self._last_ts = 0  # unwrapped timestamp of the newest packet

    def put(self, ssrc: int, timestamp: int, samples: Pcm, arrival_s: float) -> int:
        """Place one packet's decoded samples; returns where (caller-clock sample)."""
        self.stats.packets += 1
        arrival = round(arrival_s * SAMPLE_RATE)
        if self._ssrc != ssrc:
            self._restart(ssrc, timestamp, arrival)
        ts = _unwrap(timestamp, self._last_ts)
        position = self._anchor + ts - self._ts0
        # A late (reordered) packet keeps its place; a newer one far from its arrival
        # means the sender's clock jumped or stood still.
        if ts > self._last_ts and abs(position - arrival) > REANCHOR_S * SAMPLE_RATE:
            self._restart(ssrc, timestamp, arrival)
            ts, position = timestamp, arrival
        self._last_ts = max(self._last_ts, ts)
        self.pcm.write(position, samples)
        return position

    def _restart(self, ssrc: int, timestamp: int, arrival: int) -> None:
        if self._ssrc is not None:
            self.stats.reanchored += 1
        self._ssrc = ssrc
        self._anchor = arrival
        self._ts0 = self._last_ts = timestamp


def _unwrap(value: int, reference: int) -> int:
    """The integer congruent to ``value`` (mod 2**32) nearest ``reference``."""
    delta = (value - reference) % _TS_MOD
    if delta >= _TS_MOD // 2:
        delta -= _TS_MOD
    return reference + delta


class SpeechDetector:
    """One party's talking, frame by frame: ``SpeechStarted`` at the onset (the start of
    its first voiced frame), ``SpeechEnded`` at the end of its last voiced frame,
    decided ``gap_ms`` later. Frames are 20 ms of 8 kHz int16, fed in order."""

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        start_ms: int = 60,
        gap_ms: int = 300,
        floor_rms: float = 50.0,
    ) -> None:
        if floor_rms < 0:
            raise ValueError("floor_rms must not be negative")
        self.gap_ms = gap_ms
        self.floor_rms = floor_rms
        self._vad = VoiceActivityDetector(aggressiveness, start_ms=start_ms, stop_ms=gap_ms)
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._floor_sq = floor_rms * floor_rms * FRAME_SAMPLES  # compare sums, no sqrt
        self.speaking = False  # between a SpeechStarted and its SpeechEnded
        self.starts = 0  # utterances started so far
        self.onset_s: float | None = None  # of the utterance going on, or the last one
        self.last_end_s: float | None = None  # end of the last finished utterance
        self.heard_until_s = 0.0  # end of the last frame fed

    def feed(self, frame: Pcm, at_s: float) -> list[VadEvent]:
        """One frame starting at ``at_s`` (caller-clock seconds)."""
        wide = frame.astype(np.int64)
        loud = int(np.dot(wide, wide)) >= self._floor_sq
        events = self._vad.process(frame if loud else self._silence, at_s)
        self.heard_until_s = at_s + FRAME_S
        for event in events:
            if isinstance(event, SpeechStarted):
                self.speaking = True
                self.starts += 1
                self.onset_s = event.at
            else:
                self.speaking = False
                self.last_end_s = event.at
        return events

    def finish(self) -> list[VadEvent]:
        """The audio is over: end an utterance still going on (fed silence until the VAD
        lets go, so its end is where the voice stopped)."""
        events: list[VadEvent] = []
        for _ in range(self.gap_ms // 20 + 8):
            if not self.speaking:
                break
            events += self.feed(self._silence, self.heard_until_s)
        return events
