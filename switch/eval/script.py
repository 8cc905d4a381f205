"""A simulated caller's script, and the runner that plays it, sans-I/O.

A ``CallScript`` is a list of steps run in order once the call is answered:

- ``WaitAgentSpeech(timeout_s)``: until the agent starts talking (a start heard after
  the step began; with ``ongoing=True`` one already going on counts too);
- ``WaitAgentSilence(silence_ms, timeout_s)``: until the agent has been quiet for
  ``silence_ms`` (after ``WaitAgentSpeech``: its answer ended);
- ``Wait(ms)``: ``ms`` after the moment the previous step stands for;
- ``Say(pcm)``: send 8 kHz int16 audio (the runner keeps hearing meanwhile);
- ``Dtmf(digits)``: RFC 4733 telephone-events (in-band tones if the peer has none);
- ``Hangup()``: the script is over (so is a script that runs out of steps).

Every step has a moment it *stands for*, and ``Wait`` counts from it: the agent's
onset for ``WaitAgentSpeech`` (as heard, not when the detector confirmed it), the
moment the silence was long enough for ``WaitAgentSilence``, the end of the audio
for ``Say`` and ``Dtmf``, the deadline for a ``Wait`` or a wait that timed out. So a
barge-in 400 ms into the agent's greeting is ``WaitAgentSpeech(), Wait(400), Say(q)``
and the question starts 400 ms after the greeting's onset, to the sample, unless the
detector confirmed the onset later than that (about 180 ms after it): then at once.

A wait that times out is noted in the timeline and the script goes on.

``WaitAgentSpeech`` after a ``Say`` wants an utterance that starts after the ``Say``
ended: a reply that began inside the ``Say``'s audio (in a long pause, or in trailing
silence left on a synthesized line) does not count, so trim what a voice appends.

The runner is driven by the 20 ms clock: ``tick(slot, agent)`` says what the caller
sends in slot ``slot`` (samples ``slot*160`` to ``slot*160 + 160`` since the answer)
given what it has heard of the agent so far. Time inside is integer samples at 8 kHz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from media.dtmf import DIGITS, DtmfSender, OutgoingEvent
from media.speech import SAMPLE_RATE, Pcm
from switch.eval.hearing import FRAME_SAMPLES
from switch.eval.timeline import (
    DTMF_END,
    DTMF_START,
    HANGUP,
    SAY_END,
    SAY_START,
    WAIT_TIMED_OUT,
    TimelineEvent,
)

_DTMF_FREQS = ((697, 770, 852, 941), (1209, 1336, 1477, 1633))
_DTMF_KEYPAD = "123A456B789C*0#D"  # row-major: row = low tone, column = high tone
_TONE_LEVEL = 6000.0  # per tone, of 32767: about -11 dBFS each, well above any VAD
_PACKET_MS = 20


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class WaitAgentSpeech:
    timeout_s: float = 10.0
    ongoing: bool = False  # the agent already talking when the step begins counts

    def __post_init__(self) -> None:
        _positive("timeout_s", self.timeout_s)


@dataclass(frozen=True)
class WaitAgentSilence:
    silence_ms: int = 800
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _positive("silence_ms", self.silence_ms)
        _positive("timeout_s", self.timeout_s)


@dataclass(frozen=True)
class Wait:
    ms: int

    def __post_init__(self) -> None:
        if not (isinstance(self.ms, int) and self.ms >= 0):
            raise ValueError(f"Wait.ms must be an int, 0 or more, got {self.ms!r}")


@dataclass(frozen=True, eq=False)
class Say:
    pcm: Pcm  # mono int16 at 8 kHz
    label: str = ""

    def __post_init__(self) -> None:
        pcm = self.pcm
        if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError("Say.pcm must be a 1-D numpy int16 array (8 kHz mono)")

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


@dataclass(frozen=True)
class Dtmf:
    digits: str
    duration_ms: int = 100
    gap_ms: int = 100

    def __post_init__(self) -> None:
        bad = [d for d in self.digits if d.upper() not in DIGITS or len(d) != 1]
        if not self.digits or bad:
            raise ValueError(f"Dtmf.digits must be 0-9, *, #, A-D; got {self.digits!r}")
        if self.duration_ms < _PACKET_MS or self.gap_ms < 0:
            raise ValueError("Dtmf.duration_ms must be >= 20 and gap_ms >= 0")

    @property
    def seconds(self) -> float:
        # RFC 4733: each tone, its end packet twice more, then the gap.
        per = max(self.duration_ms + self.gap_ms, self.duration_ms + 2 * _PACKET_MS)
        return len(self.digits) * per / 1000


@dataclass(frozen=True)
class Hangup:
    pass


Step = WaitAgentSpeech | WaitAgentSilence | Wait | Say | Dtmf | Hangup
_STEP_TYPES = (WaitAgentSpeech, WaitAgentSilence, Wait, Say, Dtmf, Hangup)


@dataclass(frozen=True)
class CallScript:
    steps: tuple[Step, ...]

    def __init__(self, steps: list[Step] | tuple[Step, ...]) -> None:
        for step in steps:
            if not isinstance(step, _STEP_TYPES):
                raise TypeError(f"not a script step: {step!r}")
        object.__setattr__(self, "steps", tuple(steps))

    def longest_s(self) -> float:
        """The longest the script can take, every wait timing out."""
        total = 0.0
        for step in self.steps:
            if isinstance(step, WaitAgentSpeech | WaitAgentSilence):
                total += step.timeout_s
            elif isinstance(step, Wait):
                total += step.ms / 1000
            elif isinstance(step, Say | Dtmf):
                total += step.seconds + 0.02
        return total


class AgentHearing(Protocol):
    """What the runner knows of the agent (a ``SpeechDetector`` on received audio)."""

    @property
    def speaking(self) -> bool: ...

    @property
    def starts(self) -> int: ...  # utterances started so far

    @property
    def onset_s(self) -> float | None: ...  # of the latest utterance

    @property
    def last_end_s(self) -> float | None: ...  # of the latest finished utterance

    @property
    def heard_until_s(self) -> float: ...  # end of the audio judged so far


@dataclass
class SlotPlan:
    """What to send in one 20 ms slot."""

    audio: Pcm  # 160 samples (silence included)
    dtmf: list[OutgoingEvent] = field(default_factory=list)  # sent instead of audio
    events: list[TimelineEvent] = field(default_factory=list)
    hangup: bool = False  # the script is over: hang up after this slot


def dtmf_tones(digits: str, duration_ms: int, gap_ms: int) -> Pcm:
    """In-band DTMF: each digit's two tones for ``duration_ms``, then ``gap_ms`` quiet."""
    tone_n = duration_ms * SAMPLE_RATE // 1000
    gap_n = gap_ms * SAMPLE_RATE // 1000
    t = np.arange(tone_n) / SAMPLE_RATE
    parts = []
    for digit in digits.upper():
        row, column = divmod(_DTMF_KEYPAD.index(digit), 4)
        low, high = _DTMF_FREQS[0][row], _DTMF_FREQS[1][column]
        tone = _TONE_LEVEL * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
        parts += [tone.astype(np.int16), np.zeros(gap_n, dtype=np.int16)]
    return np.concatenate(parts)


class ScriptRunner:
    """Plays a ``CallScript`` slot by slot (see the module docstring)."""

    def __init__(self, script: CallScript, *, telephone_event_pt: int | None) -> None:
        self.script = script
        self._dtmf = DtmfSender(telephone_event_pt) if telephone_event_pt is not None else None
        self._index = 0
        self._begun = False
        self._ref = 0  # the sample the previous step stands for
        self._cursor = 0  # the first sample not yet planned
        self.finished = False
        # The current step's state.
        self._deadline = 0
        self._baseline = 0
        self._speaking_at_begin = False
        self._begin = 0
        self._pcm: Pcm | None = None  # audio being sent (Say, in-band DTMF)
        self._start = 0
        self._packets: list[tuple[int, OutgoingEvent]] = []  # (slot, packet) to send

    @property
    def step_index(self) -> int:
        return self._index

    def tick(self, slot: int, agent: AgentHearing) -> SlotPlan:
        s0 = slot * FRAME_SAMPLES
        plan = SlotPlan(np.zeros(FRAME_SAMPLES, dtype=np.int16))
        if self.finished:
            plan.hangup = True
            return plan
        self._cursor = max(self._cursor, s0)
        steps = self.script.steps
        while self._index < len(steps):
            step = steps[self._index]
            if not self._begun:
                self._begun = True
                self._enter(step, plan, agent)
            if not self._advance(step, slot, plan, agent):
                return plan
            self._index += 1
            self._begun = False
            if isinstance(step, Hangup):
                break
        self.finished = plan.hangup = True
        plan.events.append(TimelineEvent(self._cursor / SAMPLE_RATE, HANGUP, "caller"))
        return plan

    # ---- steps -------------------------------------------------------------------------

    def _enter(self, step: Step, plan: SlotPlan, agent: AgentHearing) -> None:
        now = self._begin = self._cursor
        if isinstance(step, WaitAgentSpeech | WaitAgentSilence):
            self._deadline = now + round(step.timeout_s * SAMPLE_RATE)
            self._baseline = agent.starts
            self._speaking_at_begin = agent.speaking
        elif isinstance(step, Wait):
            self._deadline = self._ref + step.ms * SAMPLE_RATE // 1000
        elif isinstance(step, Say):
            self._pcm, self._start = step.pcm, now
            plan.events.append(TimelineEvent(now / SAMPLE_RATE, SAY_START, step.label))
        elif isinstance(step, Dtmf):
            self._enter_dtmf(step, plan)

    def _enter_dtmf(self, step: Dtmf, plan: SlotPlan) -> None:
        if self._dtmf is None:  # no telephone-event with this peer: tones in the audio
            self._pcm = dtmf_tones(step.digits, step.duration_ms, step.gap_ms)
            self._start = self._cursor
        else:  # RFC 4733 packets go out on slot boundaries
            first_slot = -(-self._cursor // FRAME_SAMPLES)
            self._start = first_slot * FRAME_SAMPLES
            events = self._dtmf.events(
                step.digits, self._start, step.duration_ms, _PACKET_MS, step.gap_ms
            )
            self._packets = [(first_slot + e.send_offset_ms // _PACKET_MS, e) for e in events]
            self._pcm = None
        plan.events.append(TimelineEvent(self._start / SAMPLE_RATE, DTMF_START, step.digits))

    def _advance(self, step: Step, slot: int, plan: SlotPlan, agent: AgentHearing) -> bool:
        """Run ``step`` in this slot; True when it is done."""
        s0 = slot * FRAME_SAMPLES
        s1 = s0 + FRAME_SAMPLES
        if isinstance(step, WaitAgentSpeech):
            onset = agent.onset_s
            if onset is not None and (
                agent.starts > self._baseline or (step.ongoing and self._speaking_at_begin)
            ):
                self._ref = round(onset * SAMPLE_RATE)
                return True
            return self._timed_out(step, s0, plan)
        if isinstance(step, WaitAgentSilence):
            quiet_since = agent.last_end_s if agent.last_end_s is not None else 0.0
            silence_s = step.silence_ms / 1000
            if not agent.speaking and agent.heard_until_s - quiet_since >= silence_s - 1e-9:
                self._ref = max(self._begin, round((quiet_since + silence_s) * SAMPLE_RATE))
                return True
            return self._timed_out(step, s0, plan)
        if isinstance(step, Wait):
            if self._deadline >= s1:
                return False
            self._ref = self._deadline
            self._cursor = max(self._cursor, self._deadline)
            return True
        if isinstance(step, Say) or (isinstance(step, Dtmf) and self._pcm is not None):
            return self._send_audio(step, s0, s1, plan)
        if isinstance(step, Dtmf):
            due = [e for at, e in self._packets if at == slot]
            plan.dtmf.extend(due)
            if due:
                plan.audio[:] = 0  # no audio alongside the events (RFC 4733 §2.5.1.2)
            if any(at > slot for at, _ in self._packets):
                return False
            self._cursor = self._ref = s1
            plan.events.append(TimelineEvent(s1 / SAMPLE_RATE, DTMF_END, step.digits))
            return True
        return True  # Hangup

    def _send_audio(self, step: Say | Dtmf, s0: int, s1: int, plan: SlotPlan) -> bool:
        pcm = self._pcm
        assert pcm is not None
        start, end = self._start, self._start + len(pcm)
        lo, hi = max(start, self._cursor, s0), min(end, s1)
        if hi > lo:
            plan.audio[lo - s0 : hi - s0] = pcm[lo - start : hi - start]
        if end > s1:
            return False
        self._cursor = self._ref = max(self._cursor, end)
        self._pcm = None
        if isinstance(step, Say):
            plan.events.append(TimelineEvent(end / SAMPLE_RATE, SAY_END, step.label))
        else:
            plan.events.append(TimelineEvent(end / SAMPLE_RATE, DTMF_END, step.digits))
        return True

    def _timed_out(self, step: WaitAgentSpeech | WaitAgentSilence, s0: int, plan: SlotPlan) -> bool:
        if s0 < self._deadline:
            return False
        self._ref = self._deadline
        plan.events.append(TimelineEvent(self._deadline / SAMPLE_RATE, WAIT_TIMED_OUT, repr(step)))
        return True
