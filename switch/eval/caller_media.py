"""The simulated caller's media, sans-I/O: RTP in, RTP out, both tracks, the timeline.

The asyncio layer calls ``receive`` for every datagram from the RTP socket (with its
arrival time on the caller's clock) and ``tick(slot)`` once per 20 ms slot, on an
absolute schedule; ``tick`` returns the datagrams to send for that slot. Per tick:

1. the received track is judged up to ``HEAR_LAG_FRAMES`` slots back (slack for
   packets still on their way) by the agent's speech detector;
2. the script runner plans the slot (audio, or RFC 4733 events) from what was heard;
3. the caller's own frame goes to its track and its speech detector, then out as RTP.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from media import g711
from media.dtmf import DtmfSender
from media.rtp import pack_rtp, parse_rtp
from media.speech import SAMPLE_RATE, Pcm
from media.vad import SpeechStarted, VadEvent
from switch.eval.hearing import FRAME_S, FRAME_SAMPLES, GrowingPcm, ReceivedTrack, SpeechDetector
from switch.eval.result import RtpCounts
from switch.eval.script import CallScript, ScriptRunner
from switch.eval.timeline import (
    AGENT_SPEECH_END,
    AGENT_SPEECH_START,
    CALLER_SPEECH_END,
    CALLER_SPEECH_START,
    TimelineEvent,
)

HEAR_LAG_FRAMES = 3  # judge received audio 60 ms late: 40 ms of slack for jitter
_TS_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class MediaFormat:
    """What the offer/answer settled for the caller's stream."""

    codec: str  # "PCMU" or "PCMA"
    payload_type: int
    telephone_event_pt: int | None


@dataclass(frozen=True)
class DetectorSettings:
    aggressiveness: int = 2
    start_ms: int = 60
    gap_ms: int = 300  # pauses shorter than this stay inside one utterance
    floor_rms: float = 50.0

    def detector(self) -> SpeechDetector:
        return SpeechDetector(
            aggressiveness=self.aggressiveness,
            start_ms=self.start_ms,
            gap_ms=self.gap_ms,
            floor_rms=self.floor_rms,
        )


class CallerMedia:
    def __init__(
        self,
        script: CallScript,
        media: MediaFormat,
        *,
        max_s: float,
        detection: DetectorSettings | None = None,
        ssrc: int | None = None,
    ) -> None:
        self.media = media
        max_samples = round(max_s * SAMPLE_RATE) + SAMPLE_RATE
        self.runner = ScriptRunner(script, telephone_event_pt=media.telephone_event_pt)
        detection = detection or DetectorSettings()
        self.agent = detection.detector()
        self.caller = detection.detector()
        self.received = ReceivedTrack(max_samples)
        self.sent = GrowingPcm(max_samples)
        self.timeline: list[TimelineEvent] = []
        self.counts = RtpCounts()
        self._dtmf = (
            DtmfSender(media.telephone_event_pt) if media.telephone_event_pt is not None else None
        )
        self._ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self._seq = secrets.randbits(16)
        self._ts0 = secrets.randbits(32)
        self._heard_frames = 0  # received frames judged so far
        self._slots = 0  # slots sent so far

    # ---- in --------------------------------------------------------------------------

    def receive(self, data: bytes, arrival_s: float) -> None:
        """One datagram from the RTP socket; ``arrival_s`` since the answer (negative
        before it: early media, counted and dropped)."""
        packet = parse_rtp(data)
        if packet is None:
            self.counts.invalid += 1
            return
        if arrival_s < 0:
            self.counts.before_answer += 1
            return
        if packet.payload_type == self.media.telephone_event_pt:
            self.counts.received += 1  # the agent's digits: not needed by any grader yet
            return
        if packet.payload_type != self.media.payload_type:
            self.counts.invalid += 1
            return
        self.counts.received += 1
        samples = g711.decode(self.media.codec, packet.payload)
        self.received.put(packet.ssrc, packet.timestamp, samples, arrival_s)

    # ---- out -------------------------------------------------------------------------

    def tick(self, slot: int) -> tuple[list[bytes], bool]:
        """The datagrams for slot ``slot``, and whether the script is over (hang up)."""
        self._hear(slot - HEAR_LAG_FRAMES)
        plan = self.runner.tick(slot, self.agent)
        self.timeline.extend(plan.events)
        at_s = slot * FRAME_S
        self._note(self.caller.feed(plan.audio, at_s), CALLER_SPEECH_START, CALLER_SPEECH_END)
        self.sent.write(slot * FRAME_SAMPLES, plan.audio)
        self._slots = slot + 1
        out: list[bytes] = []
        if plan.dtmf:
            assert self._dtmf is not None
            for event in plan.dtmf:
                timestamp = (self._ts0 + event.timestamp) & _TS_MASK
                rtp = self._dtmf.to_rtp(event, self._next_seq(), self._ssrc)
                packet = pack_rtp(
                    rtp.payload_type, rtp.sequence, timestamp, rtp.ssrc, rtp.payload,
                    marker=rtp.marker,
                )  # fmt: skip
                out.append(packet)
                self.counts.dtmf_sent += 1
        else:
            payload = g711.encode(self.media.codec, plan.audio)
            timestamp = (self._ts0 + slot * FRAME_SAMPLES) & _TS_MASK
            packet = pack_rtp(
                self.media.payload_type, self._next_seq(), timestamp, self._ssrc, payload,
                marker=slot == 0,
            )  # fmt: skip
            out.append(packet)
        self.counts.sent += len(out)
        return out, plan.hangup

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        return seq

    def _hear(self, until_frame: int) -> None:
        """Judge received frames up to and including ``until_frame``."""
        while self._heard_frames <= until_frame:
            j = self._heard_frames
            frame = self.received.pcm.read(j * FRAME_SAMPLES, FRAME_SAMPLES)
            self._note(self.agent.feed(frame, j * FRAME_S), AGENT_SPEECH_START, AGENT_SPEECH_END)
            self._heard_frames += 1

    def _note(self, events: list[VadEvent], start: str, end: str) -> None:
        for event in events:
            kind = start if isinstance(event, SpeechStarted) else end
            self.timeline.append(TimelineEvent(event.at, kind))

    # ---- end -------------------------------------------------------------------------

    def finish(self) -> tuple[Pcm, Pcm, list[TimelineEvent]]:
        """The call is over: judge what is left, end open utterances; both tracks
        (cut to the slots sent) and the timeline in time order."""
        self._hear(self._slots - 1)
        self._note(self.agent.finish(), AGENT_SPEECH_START, AGENT_SPEECH_END)
        self._note(self.caller.finish(), CALLER_SPEECH_START, CALLER_SPEECH_END)
        self.counts.reanchored = self.received.stats.reanchored
        n = self._slots * FRAME_SAMPLES
        timeline = sorted(self.timeline, key=lambda e: e.at_s)
        return self.sent.array(n), self.received.pcm.array(n), timeline
