"""Outgoing audio of one call, sans I/O: a queue of 20 ms frames the RTP sender drains.

``push`` appends audio of any length, cut into ``frame_samples`` frames; ``next_frame``
is called by the sender every 20 ms and returns ``None`` when there is nothing to play
(the sender then sends comfort silence). ``flush`` drops everything at once (barge-in).

Utterances: audio pushed with an ``utterance_id`` reports ``UtteranceStarted`` when its
first frame is taken, ``UtteranceFinished`` when its last frame is taken, and
``UtteranceInterrupted`` when a flush drops what was left of it. Consecutive pushes with
the same id while its frames are still queued extend the same utterance (streaming TTS
chunks), and a chunk that does not fill its last frame is completed by the next chunk
instead of being padded, so chunk boundaries leave no gaps. If the queue runs dry before
the next chunk arrives, the utterance is finished and the next chunk starts a new one
with the same id. Audio pushed without an id plays the same way but reports no events.

Frames are views into one copy of each pushed array, so taking a frame copies nothing.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

from media.speech import SAMPLE_RATE, Pcm


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    utterance_id: str


@dataclass(frozen=True, slots=True)
class UtteranceFinished:
    utterance_id: str


@dataclass(frozen=True, slots=True)
class UtteranceInterrupted:
    utterance_id: str
    frames_played: int  # frames of it taken before the flush (0: never started)


PlayoutEvent = UtteranceStarted | UtteranceFinished | UtteranceInterrupted


class _Utterance:
    __slots__ = ("id", "played")

    def __init__(self, utterance_id: str | None) -> None:
        self.id = utterance_id
        self.played = 0


class PlayoutQueue:
    def __init__(self, frame_samples: int = 160, sample_rate: int = SAMPLE_RATE) -> None:
        if frame_samples <= 0 or sample_rate <= 0:
            raise ValueError("frame_samples and sample_rate must be positive")
        self.frame_samples = frame_samples
        self.sample_rate = sample_rate
        self._frames: deque[tuple[Pcm, _Utterance]] = deque()
        # Valid samples in the last queued frame (< frame_samples: padded); only read
        # while that frame is still queued.
        self._tail_fill = 0

    @property
    def playing(self) -> bool:
        """True while there is audio to send (queued, whether or not it has started)."""
        return bool(self._frames)

    @property
    def queued_frames(self) -> int:
        return len(self._frames)

    @property
    def queued_s(self) -> float:
        return len(self._frames) * self.frame_samples / self.sample_rate

    def push(self, pcm: Pcm, utterance_id: str | None = None) -> None:
        """Queue audio (int16 mono, any length) after whatever is already queued."""
        samples = np.asarray(pcm)
        if samples.dtype != np.int16:
            raise TypeError(f"expected int16 PCM, got {samples.dtype}")
        samples = samples.reshape(-1)
        if samples.size == 0:
            return
        n = self.frame_samples
        utterance: _Utterance | None = None
        if self._frames and self._frames[-1][1].id == utterance_id:
            utterance = self._frames[-1][1]
            if self._tail_fill < n:  # complete the padded tail frame in place
                take = min(n - self._tail_fill, samples.size)
                self._frames[-1][0][self._tail_fill : self._tail_fill + take] = samples[:take]
                self._tail_fill += take
                samples = samples[take:]
                if samples.size == 0:
                    return
        if utterance is None:
            utterance = _Utterance(utterance_id)
        whole = samples.size // n
        rows = samples[: whole * n].reshape(whole, n).copy()  # one copy; frames are its rows
        self._frames.extend(zip(rows, itertools.repeat(utterance, whole), strict=True))
        self._tail_fill = n
        remainder = samples.size - whole * n
        if remainder:
            last = np.zeros(n, dtype=np.int16)
            last[:remainder] = samples[whole * n :]
            self._frames.append((last, utterance))
            self._tail_fill = remainder

    def next_frame(self) -> tuple[Pcm | None, list[PlayoutEvent]]:
        """The frame to send now (None: nothing queued), and what it started or finished."""
        if not self._frames:
            return None, []
        frame, utterance = self._frames.popleft()
        events: list[PlayoutEvent] = []
        if utterance.played == 0 and utterance.id is not None:
            events.append(UtteranceStarted(utterance.id))
        utterance.played += 1
        ends = not self._frames or self._frames[0][1] is not utterance
        if ends and utterance.id is not None:
            events.append(UtteranceFinished(utterance.id))
        return frame, events

    def flush(self) -> tuple[int, list[PlayoutEvent]]:
        """Drop everything queued (barge-in): frames dropped, and an interrupt per utterance.

        The utterance that was playing reports the frames it got out; utterances that
        were queued behind it report 0.
        """
        dropped = len(self._frames)
        events: list[PlayoutEvent] = []
        previous: _Utterance | None = None
        for _, utterance in self._frames:
            if utterance is not previous and utterance.id is not None:
                events.append(UtteranceInterrupted(utterance.id, utterance.played))
            previous = utterance
        self._frames.clear()
        return dropped, events
