"""Voice activity detection: a hysteresis state machine around webrtcvad.

Every inbound frame of every call goes through :meth:`VoiceActivityDetector.process`,
so it is cheap: one ``tobytes`` for webrtcvad and a few integer comparisons.

States::

    QUIET --voiced--> STARTING --enough voice--> SPEAKING --unvoiced--> STOPPING
      ^                  |                          ^                      |
      +---- too little --+                          +------- voiced -------+
      ^                                                                    |
      +------------------------- stop_ms of non-speech --------------------+

webrtcvad keeps saying "voiced" for a few frames after speech stops (its *hangover*:
a fixed number of frames per aggressiveness mode, longer after runs of more than six
voiced frames). The detector takes that into account, so that ``start_ms`` and
``stop_ms`` are measured against the caller's actual voice and :class:`SpeechEnded`
reports when the caller stopped speaking, not when webrtcvad let go:

* confirming speech needs ``start_ms`` of voiced frames *plus* the short hangover
  (a 40 ms click that webrtcvad stretches to 100 ms is still a click);
* the end of speech is the end of the last voiced frame minus the hangover that
  run earned, and ``stop_ms`` of quiet is counted from there.

Time stamps: ``now`` given to :meth:`~VoiceActivityDetector.process` is the time of
the frame's first sample (any clock, in seconds); a frame covers
``[now, now + frame_ms)``.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass

import _webrtcvad
import webrtcvad

from media.speech import SAMPLE_RATE, Pcm

__all__ = [
    "SpeechEnded",
    "SpeechStarted",
    "VadEvent",
    "VadState",
    "VoiceActivityDetector",
]

# webrtcvad's hangover in frames (WebRTC vad_core.c kOverHangMax1*/kOverHangMax2*), by
# frame length and aggressiveness: (after a short run, after a run > _LONG_RUN frames).
_HANGOVER: dict[int, tuple[tuple[int, int], ...]] = {
    10: ((8, 14), (8, 14), (6, 9), (6, 9)),
    20: ((4, 7), (4, 7), (3, 5), (3, 5)),
    30: ((3, 5), (3, 5), (2, 3), (2, 3)),
}
_LONG_RUN = 6  # webrtcvad's kMaxSpeechFrames


class VadState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at: float  # start of the first voiced frame of the utterance (onset)


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    at: float  # end of the last voiced frame: when the caller stopped speaking
    speech_s: float  # at - onset: the utterance's length, pauses inside included


VadEvent = SpeechStarted | SpeechEnded


class VoiceActivityDetector:
    """Turns 8 kHz int16 frames into :class:`SpeechStarted` / :class:`SpeechEnded` events.

    ``aggressiveness`` is webrtcvad's mode (0 = least, 3 = most eager to call audio
    non-speech). ``start_ms`` of voice (one unvoiced frame forgiven) confirm an
    utterance; ``stop_ms`` of non-speech end it. One detector per call direction.
    """

    __slots__ = (
        "_frame_s",
        "_frame_samples",
        "_hang_long",
        "_hang_short",
        "_is_speech",
        "_long_run_frames",
        "_misses",
        "_onset",
        "_run",
        "_speech_end",
        "_start_frames",
        "_state",
        "_stop_s",
        "_vad",
        "_voiced",
        "frame_ms",
        "start_ms",
        "stop_ms",
    )

    def __init__(
        self,
        aggressiveness: int = 2,
        start_ms: int = 100,
        stop_ms: int = 500,
        frame_ms: int = 20,
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError("aggressiveness must be 0, 1, 2 or 3")
        if frame_ms not in _HANGOVER:
            raise ValueError("frame_ms must be 10, 20 or 30 (webrtcvad frame lengths)")
        if start_ms < 0 or stop_ms < 0:
            raise ValueError("start_ms and stop_ms must not be negative")
        self.frame_ms = frame_ms
        self.start_ms = start_ms
        self.stop_ms = stop_ms
        self._vad = webrtcvad.Vad(aggressiveness)
        # The C function itself: Vad.is_speech re-checks the length on every frame.
        handle = getattr(self._vad, "_vad", None)
        self._is_speech: Callable[[bytes, int], bool] = (
            functools.partial(_webrtcvad.process, handle, SAMPLE_RATE)
            if handle is not None
            else lambda buf, _n: bool(self._vad.is_speech(buf, SAMPLE_RATE))
        )
        self._frame_samples = SAMPLE_RATE * frame_ms // 1000
        self._frame_s = frame_ms / 1000.0
        self._stop_s = stop_ms / 1000.0
        self._hang_short, self._hang_long = _HANGOVER[frame_ms][aggressiveness]
        # Voiced frames (as webrtcvad reports them) needed to confirm speech.
        self._start_frames = max(1, -(-start_ms // frame_ms)) + self._hang_short
        # A reported run this long had more than _LONG_RUN real voiced frames.
        self._long_run_frames = _LONG_RUN + 1 + self._hang_long
        self._state = VadState.QUIET
        self._onset = 0.0  # start of the first voiced frame of the current utterance
        self._speech_end = 0.0  # estimated end of voice (STOPPING)
        self._voiced = 0  # voiced frames counted while STARTING
        self._misses = 0  # unvoiced frames forgiven while STARTING
        self._run = 0  # consecutive frames webrtcvad called voiced

    @property
    def state(self) -> VadState:
        return self._state

    def reset(self) -> None:
        """Back to QUIET, forgetting any utterance in progress (no event is emitted)."""
        self._state = VadState.QUIET
        self._voiced = 0
        self._misses = 0
        self._run = 0

    def process(self, frame: Pcm, now: float) -> list[VadEvent]:
        """Feed one frame (``frame_ms`` of int16 at 8 kHz) that starts at time ``now``."""
        if len(frame) != self._frame_samples:
            raise ValueError(f"VAD frame must be {self._frame_samples} samples, got {len(frame)}")
        voiced = self._is_speech(frame.tobytes(), self._frame_samples)
        state = self._state
        if voiced:
            self._run += 1
            if state is VadState.SPEAKING:
                return []
            if state is VadState.STOPPING:
                self._state = VadState.SPEAKING
                return []
            if state is VadState.QUIET:
                self._state = VadState.STARTING
                self._onset = now
                self._voiced = 1
                self._misses = 0
            else:
                self._voiced += 1
            if self._voiced >= self._start_frames:
                self._state = VadState.SPEAKING
                return [SpeechStarted(self._onset)]
            return []

        run = self._run
        self._run = 0
        if state is VadState.QUIET:
            return []
        if state is VadState.STARTING:
            self._misses += 1
            if self._misses > 1:
                self._state = VadState.QUIET
            return []
        if state is VadState.SPEAKING:
            # ``now`` is the end of the last voiced frame; take back webrtcvad's hangover.
            hang = self._hang_long if run >= self._long_run_frames else self._hang_short
            hang = min(hang, run - 1)
            self._speech_end = now - hang * self._frame_s
            self._state = VadState.STOPPING
        if now + self._frame_s - self._speech_end >= self._stop_s - 1e-9:
            self._state = VadState.QUIET
            end = self._speech_end
            return [SpeechEnded(end, end - self._onset)]
        return []
