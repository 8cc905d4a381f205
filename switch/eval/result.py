"""What one simulated call gave: SIP outcome, both directions of audio, the timeline,
and the measures a grader reads off them.

``sent`` and ``received`` are sample-aligned int16 arrays at 8 kHz; sample 0 is the
answer. ``sent`` is exactly what the caller put in its RTP packets, slot by slot;
``received`` is what came back, placed by RTP timestamp on the caller's clock (see
``switch.eval.hearing``).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from media.speech import SAMPLE_RATE, Pcm
from switch.eval.timeline import (
    AGENT_SPEECH_END,
    AGENT_SPEECH_START,
    CALLER_SPEECH_END,
    CALLER_SPEECH_START,
    SAY_END,
    SAY_START,
    TimelineEvent,
)

HangupBy = Literal["caller", "callee"]


@dataclass(frozen=True)
class ReplyLatency:
    """One ``Say`` and the agent's reply as the caller heard it."""

    label: str
    said_until_s: float  # end of the caller's last voice in the Say (else the Say's end)
    reply_at_s: float | None  # the first agent onset after that, before the next Say
    latency_s: float | None  # reply_at_s - said_until_s: the caller-ear turn latency


@dataclass(frozen=True)
class TalkOver:
    """The caller started talking while the agent was talking."""

    caller_onset_s: float
    agent_onset_s: float  # of the utterance the caller spoke over
    agent_end_s: float | None  # when the agent's voice stopped (None: never, in the call)
    stopped_after_s: float | None  # agent_end_s - caller_onset_s


@dataclass
class RtpCounts:
    sent: int = 0
    received: int = 0
    invalid: int = 0  # not RTP, or a payload type we did not negotiate
    before_answer: int = 0  # early media: not recorded
    dtmf_sent: int = 0
    reanchored: int = 0


@dataclass
class CallResult:
    call_id: str
    target: str
    answered: bool = False
    sip_codes: list[int] = field(default_factory=list)  # INVITE responses, in order
    hangup_by: HangupBy | None = None  # None: never answered
    end_reason: str = ""  # "script", "remote_bye", "max_duration", "rejected 486 Busy", ...
    error: str | None = None  # set when the call failed (not answered, broken answer ...)
    invited_at: float = 0.0  # wall clock (epoch seconds)
    answered_at: float | None = None
    ended_at: float = 0.0
    codec: str | None = None
    sent: Pcm = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    received: Pcm = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    timeline: list[TimelineEvent] = field(default_factory=list)
    rtp: RtpCounts = field(default_factory=RtpCounts)
    steps_run: int = 0  # script steps finished (all of them unless the callee hung up)

    @property
    def duration_s(self) -> float:
        """Answer to hang-up, on the audio's clock."""
        return len(self.sent) / SAMPLE_RATE

    def events(self, *kinds: str) -> list[TimelineEvent]:
        return [e for e in self.timeline if e.kind in kinds]

    def speech(self, who: Literal["agent", "caller"]) -> list[tuple[float, float | None]]:
        """(onset, end) of each utterance of ``who`` (an utterance still going on at the
        hang-up ends where the audio stopped; None only if no end was recorded)."""
        start_kind, end_kind = (
            (AGENT_SPEECH_START, AGENT_SPEECH_END)
            if who == "agent"
            else (CALLER_SPEECH_START, CALLER_SPEECH_END)
        )
        out: list[tuple[float, float | None]] = []
        for event in self.events(start_kind, end_kind):
            if event.kind == start_kind:
                out.append((event.at_s, None))
            elif out and out[-1][1] is None:
                out[-1] = (out[-1][0], event.at_s)
        return out

    def reply_latencies(self) -> list[ReplyLatency]:
        """Per ``Say``: from the end of the caller's voice in it to the agent's first
        onset after that (and before the next ``Say``), as the caller heard it."""
        says = self.events(SAY_START, SAY_END)
        spans: list[tuple[str, float, float]] = []
        for event in says:
            if event.kind == SAY_START:
                spans.append((event.detail, event.at_s, event.at_s))
            elif spans:
                spans[-1] = (spans[-1][0], spans[-1][1], event.at_s)
        caller = self.speech("caller")
        agent_onsets = [start for start, _ in self.speech("agent")]
        out = []
        for i, (label, start, end) in enumerate(spans):
            ends = [e for s, e in caller if e is not None and start <= s < end]
            said_until = max(ends) if ends else end
            limit = spans[i + 1][1] if i + 1 < len(spans) else float("inf")
            after = [a for a in agent_onsets if said_until <= a < limit]
            reply = after[0] if after else None
            latency = reply - said_until if reply is not None else None
            out.append(ReplyLatency(label, said_until, reply, latency))
        return out

    def talk_overs(self) -> list[TalkOver]:
        """Each caller onset while the agent was talking, and how soon the agent's voice
        stopped after it (did the agent yield to a barge-in?)."""
        agent = self.speech("agent")
        out = []
        for onset, _ in self.speech("caller"):
            for a_start, a_end in agent:
                if a_start <= onset and (a_end is None or onset < a_end):
                    stopped = a_end - onset if a_end is not None else None
                    out.append(TalkOver(onset, a_start, a_end, stopped))
                    break
        return out

    def stereo(self) -> Pcm:
        """(n, 2) int16: the caller left, what it heard right (as the node's recordings)."""
        n = max(len(self.sent), len(self.received))
        out = np.zeros((n, 2), dtype=np.int16)
        out[: len(self.sent), 0] = self.sent
        out[: len(self.received), 1] = self.received
        return out

    def write_wav(self, path: str | Path) -> Path:
        """A stereo 16-bit 8 kHz WAV of the call (caller left, received right)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(self.stereo().astype("<i2").tobytes())
        return path

    def summary(self) -> dict[str, object]:
        """JSON-ready: everything but the audio."""
        return {
            "call_id": self.call_id,
            "target": self.target,
            "answered": self.answered,
            "sip_codes": list(self.sip_codes),
            "hangup_by": self.hangup_by,
            "end_reason": self.end_reason,
            "error": self.error,
            "invited_at": self.invited_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "codec": self.codec,
            "duration_s": round(self.duration_s, 3),
            "steps_run": self.steps_run,
            "rtp": vars(self.rtp).copy(),
            "timeline": [e.to_json() for e in self.timeline],
            "reply_latencies_s": [
                None if r.latency_s is None else round(r.latency_s, 3)
                for r in self.reply_latencies()
            ],
        }
