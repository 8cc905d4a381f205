"""The simulated caller's timeline: what happened when, in seconds since the answer.

Kinds (module constants, also the ``kind`` strings in reports):

- ``say_start`` / ``say_end``: a ``Say`` step's audio began / ended (detail: its label);
- ``caller_speech_start`` / ``caller_speech_end``: voice in what the caller sent (the
  speech detector run on the caller's own audio: a line with a pause in it is two);
- ``agent_speech_start`` / ``agent_speech_end``: voice in what the caller received, as
  the caller heard it (start: the onset; end: the end of the last voiced frame);
- ``dtmf_start`` / ``dtmf_end``: a ``Dtmf`` step's digits (detail: the digits);
- ``wait_timed_out``: a wait step gave up (detail: the step);
- ``sip``: a SIP message sent or received (detail: ``"> INVITE"``, ``"< 180"``, ...),
  negative before the answer;
- ``hangup``: the call ended (detail: ``caller`` or ``callee``).
"""

from __future__ import annotations

from dataclasses import dataclass

SAY_START = "say_start"
SAY_END = "say_end"
CALLER_SPEECH_START = "caller_speech_start"
CALLER_SPEECH_END = "caller_speech_end"
AGENT_SPEECH_START = "agent_speech_start"
AGENT_SPEECH_END = "agent_speech_end"
DTMF_START = "dtmf_start"
DTMF_END = "dtmf_end"
WAIT_TIMED_OUT = "wait_timed_out"
SIP = "sip"
HANGUP = "hangup"

KINDS = frozenset({
    SAY_START, SAY_END, CALLER_SPEECH_START, CALLER_SPEECH_END, AGENT_SPEECH_START,
    AGENT_SPEECH_END, DTMF_START, DTMF_END, WAIT_TIMED_OUT, SIP, HANGUP,
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    at_s: float  # seconds since the answer (caller's clock)
    kind: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown timeline event kind {self.kind!r}")

    def to_json(self) -> dict[str, object]:
        return {"at_s": round(self.at_s, 4), "kind": self.kind, "detail": self.detail}
