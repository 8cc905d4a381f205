"""MediaSession: RTP in, VAD/utterances/DTMF out, playout with hold and flush (fake clock)."""

from __future__ import annotations

import numpy as np

from media.dtmf import DtmfDigit, DtmfSender
from media.g711 import encode, ulaw_decode
from media.playout import UtteranceFinished, UtteranceInterrupted, UtteranceStarted
from media.session import MediaEvent, MediaSession, PlayoutHeld, UtteranceCaptured, VadConfig
from media.vad import SpeechEnded, SpeechStarted
from tests.unit.test_vad import silence, vowel

FRAME = 160
FRAME_S = 0.02
PT_PCMU, PT_EVENT = 0, 101


class Call:
    """Drives a session like the RTP leg does: a packet arrives, then the slot's tick."""

    def __init__(self, session: MediaSession) -> None:
        self.session = session
        self.now = 100.0
        self.seq = 1000
        self.ts = 50_000
        self.sent: list[bytes | None] = []
        self.events: list[tuple[float, MediaEvent]] = []

    def step(self, frame: np.ndarray | None) -> None:
        """One 20 ms slot: ``frame`` arrives (None: nothing arrives), then a tick."""
        if frame is not None:
            payload = encode("PCMU", frame)
            for event in self.session.receive(PT_PCMU, self.seq, self.ts, payload, self.now):
                self.events.append((self.now, event))
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts += FRAME
        out, events = self.session.tick(self.now)
        self.sent.append(out)
        self.events += [(self.now, e) for e in events]
        self.now += FRAME_S

    def play(self, signal: np.ndarray) -> None:
        for i in range(len(signal) // FRAME):
            self.step(signal[i * FRAME : (i + 1) * FRAME])

    def of(self, kind: type) -> list[tuple[float, MediaEvent]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


def session(**vad: int) -> MediaSession:
    return MediaSession(
        codec="PCMU",
        payload_type=PT_PCMU,
        telephone_event_pt=PT_EVENT,
        vad=VadConfig(**vad) if vad else None,
    )


def test_an_utterance_is_captured_with_its_preroll() -> None:
    call = Call(session())
    call.play(silence(1.0))
    call.play(vowel(1.0))
    call.play(silence(1.0))
    started = call.of(SpeechStarted)
    ended = call.of(SpeechEnded)
    captured = call.of(UtteranceCaptured)
    assert len(started) == len(ended) == len(captured) == 1
    utterance = captured[0][1]
    assert isinstance(utterance, UtteranceCaptured)
    assert abs(utterance.started_at - 101.0) < 0.06
    assert abs(utterance.ended_at - 102.0) < 0.1
    assert utterance.decided_at - utterance.ended_at >= 0.45  # the stop hangover
    # The whole vowel is in it: from before the onset (pre-roll) to past its end.
    assert utterance.pcm.size / 8000 >= 1.0
    frames = utterance.pcm[: utterance.pcm.size // FRAME * FRAME].reshape(-1, FRAME)
    loud = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > 1000
    assert 49 <= loud.sum() <= 51  # every frame of the 1 s vowel, and nothing else


def test_the_turn_ends_when_the_caller_stops_sending() -> None:
    call = Call(session())
    call.play(vowel(0.6))
    for _ in range(50):  # a second with no packets at all
        call.step(None)
    assert len(call.of(UtteranceCaptured)) == 1


def test_playout_is_sent_encoded_and_reports_its_utterances() -> None:
    s = session()
    call = Call(s)
    s.say(vowel(0.1), "reply-1")
    call.play(silence(0.2))
    sent = [p for p in call.sent if p is not None]
    assert len(sent) == 5
    assert np.abs(ulaw_decode(sent[0]).astype(np.int32)).max() > 1000
    kinds = [type(e) for _, e in call.events if not isinstance(e, SpeechEnded)]
    assert kinds == [UtteranceStarted, UtteranceFinished]


def test_voice_over_playout_holds_it_within_100_ms() -> None:
    s = session()
    call = Call(s)
    s.say(vowel(3.0, f0=220.0, amplitude=3000.0), "greeting")
    call.play(silence(0.5))
    onset = call.now
    call.play(vowel(0.4))
    held = call.of(PlayoutHeld)
    assert len(held) == 1
    _, event = held[0]
    assert isinstance(event, PlayoutHeld)
    assert abs(event.onset_at - onset) <= 0.021
    assert event.at - onset < 0.1
    # From the hold on, nothing of the greeting goes out.
    first_held = round((event.at - 100.0) / FRAME_S)
    assert all(p is None for p in call.sent[first_held:])
    assert s.paused


def test_resume_continues_where_playout_was_held() -> None:
    s = session()
    call = Call(s)
    s.say(vowel(1.0), "greeting")
    call.play(silence(0.2))
    call.play(vowel(0.1))
    assert s.paused
    before = s.playout.queued_frames
    call.play(silence(0.1))
    assert s.playout.queued_frames == before  # nothing dropped while held
    s.resume()
    call.play(silence(0.1))
    assert s.playout.queued_frames == before - 5


def test_flush_drops_the_reply_at_once() -> None:
    s = session()
    call = Call(s)
    s.say(vowel(2.0), "t1-0")
    s.say(vowel(1.0), "t1-1")
    call.play(silence(0.2))
    events = s.flush()
    assert [type(e) for e in events] == [UtteranceInterrupted, UtteranceInterrupted]
    assert not s.playout.playing
    call.play(silence(0.1))
    assert call.sent[-5:] == [None] * 5


def test_a_click_does_not_start_an_utterance() -> None:
    call = Call(session())
    call.play(silence(0.5))
    call.play(vowel(0.04))
    call.play(silence(1.0))
    assert call.of(SpeechStarted) == []
    assert call.of(UtteranceCaptured) == []


def test_rfc4733_digits_reach_the_session_once() -> None:
    s = session()
    sender = DtmfSender(PT_EVENT)
    digits: list[DtmfDigit] = []
    for packet in sender.events("05", start_timestamp=7000):
        events = s.receive(PT_EVENT, 1, packet.timestamp, packet.payload, 1.0)
        digits += [e for e in events if isinstance(e, DtmfDigit)]
    assert [d.digit for d in digits] == ["0", "5"]


def test_other_payload_types_are_ignored() -> None:
    s = session()
    assert s.receive(13, 1, 160, b"\x40", 1.0) == []  # comfort noise
    assert s.receive(8, 1, 160, b"\xd5" * 160, 1.0) == []  # a codec we did not agree
    assert s.jitter.stats.received == 0


def test_renegotiation_to_another_codec_resets_the_buffer() -> None:
    s = session()
    s.receive(PT_PCMU, 1, 160, b"\xff" * 160, 1.0)
    s.renegotiated("PCMA", 8, None)
    assert s.jitter.depth == 0
    s.receive(8, 2, 320, b"\xd5" * 160, 1.0)
    assert s.jitter.depth == 1
