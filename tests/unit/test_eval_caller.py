"""The eval caller's pure parts: the speech detector, the received track, the script
runner on fake audio, the media core end to end (RTP in, RTP out), the SIP dialog's
messages, the SDP offer/answer, and the result's measures."""

from __future__ import annotations

import asyncio
import itertools
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media import g711
from media.dtmf import DtmfReceiver, parse_telephone_event
from media.rtp import pack_rtp, parse_rtp
from sip.endpoint import SipEndpoint
from sip.message import Response
from sip.parser import parse_message
from sip.sdp import NoCommonCodec, SdpAnswerer, SessionDescription
from sip.uri import SipUri, parse_uri
from switch.eval.caller import CallerError, place_call
from switch.eval.caller_media import HEAR_LAG_FRAMES, CallerMedia, MediaFormat
from switch.eval.hearing import GrowingPcm, ReceivedTrack, SpeechDetector
from switch.eval.result import CallResult
from switch.eval.script import (
    CallScript,
    Dtmf,
    Hangup,
    Say,
    ScriptRunner,
    SlotPlan,
    Wait,
    WaitAgentSilence,
    WaitAgentSpeech,
)
from switch.eval.sip_dialog import CallerDialog
from switch.eval.timeline import (
    AGENT_SPEECH_END,
    AGENT_SPEECH_START,
    CALLER_SPEECH_END,
    CALLER_SPEECH_START,
    DTMF_END,
    DTMF_START,
    HANGUP,
    SAY_END,
    SAY_START,
    WAIT_TIMED_OUT,
    TimelineEvent,
)

RATE = 8000
FRAME = 160
Pcm = npt.NDArray[np.int16]
TOLERANCE_S = 0.06


def vowel(seconds: float, f0: float = 140.0, amplitude: float = 7000.0) -> Pcm:
    """A voiced, vowel-like sound: a harmonic series with energy around two formants."""
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    sig = np.zeros(n)
    for k in range(1, int(3800 / f0)):
        f = k * f0
        weight = 0.05 + np.exp(-(((f - 650) / 150) ** 2)) + np.exp(-(((f - 1150) / 200) ** 2))
        sig += weight * np.sin(2 * np.pi * f * t + 0.7 * k)
    out: Pcm = (sig * amplitude / np.abs(sig).max()).astype(np.int16)
    return out


def quiet(seconds: float) -> Pcm:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def frames(pcm: Pcm) -> list[Pcm]:
    return [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]


# ---- the speech detector -------------------------------------------------------------


def detect(detector: SpeechDetector, pcm: Pcm) -> list[tuple[str, float]]:
    out = []
    for i, frame in enumerate(frames(pcm)):
        for event in detector.feed(frame, i * 0.02):
            out.append((type(event).__name__, event.at))
    for event in detector.finish():
        out.append((type(event).__name__, event.at))
    return out


def test_detector_finds_onset_and_end_of_speech() -> None:
    detector = SpeechDetector()
    events = detect(detector, np.concatenate([quiet(0.5), vowel(1.0), quiet(1.0)]))
    assert [kind for kind, _ in events] == ["SpeechStarted", "SpeechEnded"]
    assert events[0][1] == pytest.approx(0.5, abs=TOLERANCE_S)
    assert events[1][1] == pytest.approx(1.5, abs=TOLERANCE_S)
    assert detector.starts == 1 and not detector.speaking
    assert detector.last_end_s == events[1][1]


def test_detector_keeps_short_pauses_inside_one_utterance() -> None:
    pcm = np.concatenate([quiet(0.3), vowel(0.6), quiet(0.2), vowel(0.6), quiet(0.8)])
    events = detect(SpeechDetector(gap_ms=300), pcm)
    assert [kind for kind, _ in events] == ["SpeechStarted", "SpeechEnded"]
    split = detect(SpeechDetector(gap_ms=100), pcm)
    assert [kind for kind, _ in split].count("SpeechStarted") == 2


def test_detector_ignores_sound_below_its_energy_floor() -> None:
    soft = (vowel(1.0).astype(np.float64) * 0.004).astype(np.int16)  # RMS ~ 10
    assert detect(SpeechDetector(floor_rms=50.0), soft) == []
    assert detect(SpeechDetector(floor_rms=0.0), vowel(1.0))  # the same shape, loud


def test_detector_finish_ends_speech_cut_by_the_hangup() -> None:
    detector = SpeechDetector()
    for i, frame in enumerate(frames(np.concatenate([quiet(0.2), vowel(0.8)]))):
        detector.feed(frame, i * 0.02)
    assert detector.speaking
    ended = detector.finish()
    assert len(ended) == 1 and ended[0].at == pytest.approx(1.0, abs=TOLERANCE_S)
    assert not detector.speaking


# ---- the received track --------------------------------------------------------------


def test_track_places_packets_by_timestamp_not_by_arrival() -> None:
    track = ReceivedTrack(RATE * 10)
    chunk = np.arange(1, 161, dtype=np.int16)
    assert track.put(7, 1000, chunk, arrival_s=0.1) == 800  # the anchor: first arrival
    # 20 ms later by timestamp, arrives 15 ms late: still right after the first.
    assert track.put(7, 1160, chunk, arrival_s=0.135) == 960
    # Reordered: an older packet arriving later goes back where it belongs.
    assert track.put(7, 1480, chunk, arrival_s=0.16) == 1280
    assert track.put(7, 1320, chunk, arrival_s=0.17) == 1120
    pcm = track.pcm.array()
    assert len(pcm) == 1440
    assert np.array_equal(pcm[800:960], chunk) and np.array_equal(pcm[1120:1280], chunk)
    assert track.stats.reanchored == 0


def test_track_reanchors_on_a_new_ssrc_or_a_timestamp_jump() -> None:
    track = ReceivedTrack(RATE * 10)
    chunk = np.ones(160, dtype=np.int16)
    track.put(1, 5000, chunk, arrival_s=0.0)
    assert track.put(2, 90_000, chunk, arrival_s=0.5) == 4000  # new SSRC: at its arrival
    # The sender's clock stood still over a 2 s pause: placed at arrival, not 2 s early.
    assert track.put(2, 90_160, chunk, arrival_s=2.5) == 20_000
    assert track.stats.reanchored == 2


def test_track_unwraps_the_32_bit_timestamp() -> None:
    track = ReceivedTrack(RATE * 10)
    chunk = np.ones(160, dtype=np.int16)
    track.put(1, 2**32 - 160, chunk, arrival_s=1.0)
    assert track.put(1, 0, chunk, arrival_s=1.02) == 8160
    assert track.put(1, 160, chunk, arrival_s=1.04) == 8320


def test_growing_pcm_is_capped_and_counts_what_it_drops() -> None:
    pcm = GrowingPcm(1000)
    pcm.write(900, np.ones(200, dtype=np.int16))
    pcm.write(-50, np.ones(100, dtype=np.int16))
    assert pcm.length == 1000 and pcm.dropped_samples == 150
    assert pcm.read(990, 20).tolist() == [1] * 10 + [0] * 10


# ---- the script runner, on a fake ear -------------------------------------------------


@dataclass
class FakeAgent:
    speaking: bool = False
    starts: int = 0
    onset_s: float | None = None
    last_end_s: float | None = None
    heard_until_s: float = 0.0

    def start(self, at_s: float) -> None:
        self.speaking, self.starts, self.onset_s = True, self.starts + 1, at_s

    def stop(self, at_s: float) -> None:
        self.speaking, self.last_end_s = False, at_s


def run_slots(runner: ScriptRunner, agent: FakeAgent, slots: range) -> list[SlotPlan]:
    plans = []
    for slot in slots:
        agent.heard_until_s = max(0.0, (slot - HEAR_LAG_FRAMES) * 0.02)
        plans.append(runner.tick(slot, agent))
    return plans


def events_of(plans: list[SlotPlan]) -> list[TimelineEvent]:
    return [e for p in plans for e in p.events]


def test_wait_then_say_starts_to_the_sample_mid_frame() -> None:
    line = np.arange(1, 401, dtype=np.int16)  # 50 ms
    runner = ScriptRunner(
        CallScript([Wait(105), Say(line, "q"), Hangup()]), telephone_event_pt=None
    )
    plans = run_slots(runner, FakeAgent(), range(10))
    audio = np.concatenate([p.audio for p in plans])
    start = 105 * 8
    assert not audio[:start].any()
    assert np.array_equal(audio[start : start + 400], line)
    assert not audio[start + 400 :].any()
    kinds = [(e.kind, e.at_s, e.detail) for e in events_of(plans)]
    assert kinds == [(SAY_START, 0.105, "q"), (SAY_END, 0.155, "q"), (HANGUP, 0.155, "caller")]
    hung = [i for i, p in enumerate(plans) if p.hangup]
    assert hung[0] == 7  # the slot holding the Say's last sample


def test_barge_in_counts_from_the_agents_onset_not_its_detection() -> None:
    agent = FakeAgent()
    line = np.ones(800, dtype=np.int16)
    script = CallScript([WaitAgentSpeech(5), Wait(400), Say(line, "over"), Hangup()])
    runner = ScriptRunner(script, telephone_event_pt=None)
    plans = run_slots(runner, agent, range(50))
    agent.start(1.013)  # detected at slot 60 (1.2 s), onset heard at 1.013 s
    plans += run_slots(runner, agent, range(50, 120))
    says = [e for e in events_of(plans) if e.kind == SAY_START]
    assert says == [TimelineEvent(1.413, SAY_START, "over")]
    audio = np.concatenate([p.audio for p in plans])
    assert audio[round(1.413 * RATE) - 1] == 0 and audio[round(1.413 * RATE)] == 1


def test_a_late_barge_in_starts_at_once() -> None:
    agent = FakeAgent()
    runner = ScriptRunner(
        CallScript([WaitAgentSpeech(5), Wait(50), Say(np.ones(160, np.int16))]),
        telephone_event_pt=None,
    )
    run_slots(runner, agent, range(30))
    agent.start(0.4)  # confirmed at 0.6 s: 0.45 s is gone
    plans = run_slots(runner, agent, range(30, 40))
    says = [e for e in events_of(plans) if e.kind == SAY_START]
    assert says[0].at_s == pytest.approx(0.6)


def test_wait_agent_speech_wants_a_new_start_unless_ongoing() -> None:
    agent = FakeAgent()
    agent.start(0.0)
    strict = ScriptRunner(CallScript([WaitAgentSpeech(1), Hangup()]), telephone_event_pt=None)
    plans = run_slots(strict, agent, range(60))
    timed_out = [e for e in events_of(plans) if e.kind == WAIT_TIMED_OUT]
    assert len(timed_out) == 1 and timed_out[0].at_s == pytest.approx(1.0)
    assert plans[50].hangup  # the script went on after the timeout
    ongoing = ScriptRunner(
        CallScript([WaitAgentSpeech(1, ongoing=True), Hangup()]), telephone_event_pt=None
    )
    assert run_slots(ongoing, agent, range(1))[0].hangup


def test_wait_agent_silence_waits_for_the_answer_to_end() -> None:
    agent = FakeAgent()
    script = CallScript([WaitAgentSpeech(5), WaitAgentSilence(500, 5), Wait(100), Hangup()])
    runner = ScriptRunner(script, telephone_event_pt=None)
    run_slots(runner, agent, range(10))
    agent.start(0.1)
    plans = run_slots(runner, agent, range(10, 100))
    assert not any(p.hangup for p in plans)  # still talking
    agent.stop(1.9)
    plans = run_slots(runner, agent, range(100, 200))
    hangups = [e for e in events_of(plans) if e.kind == HANGUP]
    # Quiet from 1.9 s: 500 ms of it at 2.4 s (known 60 ms later), then Wait(100) from 2.4.
    assert hangups[0].at_s == pytest.approx(2.5)
    first = next(i for i, p in enumerate(plans) if p.hangup) + 100
    assert first * 0.02 == pytest.approx(2.5)


def test_dtmf_as_rfc4733_events_replaces_the_audio() -> None:
    runner = ScriptRunner(CallScript([Wait(30), Dtmf("1#", 100, 60)]), telephone_event_pt=101)
    plans = run_slots(runner, FakeAgent(), range(40))
    sent = [(i, e) for i, p in enumerate(plans) for e in p.dtmf]
    assert sent[0][0] == 2  # the next slot boundary after 30 ms
    receiver = DtmfReceiver()
    digits = []
    for slot, event in sent:
        assert not plans[slot].audio.any()
        assert parse_telephone_event(event.payload) is not None
        digits += receiver.feed(event.timestamp, event.payload, slot * 0.02)
    assert [d.digit for d in digits] == ["1", "#"]
    assert [d.duration_ms for d in digits] == [100, 100]
    assert sent[0][1].marker and sent[0][1].timestamp == 320
    kinds = [(e.kind, e.detail) for e in events_of(plans)]
    assert kinds[:2] == [(DTMF_START, "1#"), (DTMF_END, "1#")]


def test_dtmf_without_telephone_events_is_sent_as_tones() -> None:
    runner = ScriptRunner(CallScript([Dtmf("5", 100, 0)]), telephone_event_pt=None)
    plans = run_slots(runner, FakeAgent(), range(8))
    audio = np.concatenate([p.audio for p in plans])
    assert not any(p.dtmf for p in plans)
    spectrum = np.abs(np.fft.rfft(audio[:800]))
    freqs = np.fft.rfftfreq(800, 1 / RATE)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert peaks == pytest.approx([770, 1336], abs=10)  # "5": 770 Hz + 1336 Hz


def test_script_steps_are_validated() -> None:
    with pytest.raises(ValueError):
        Say(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError):
        Dtmf("12x")
    with pytest.raises(ValueError):
        WaitAgentSpeech(0)
    with pytest.raises(TypeError):
        CallScript(["hello"])  # type: ignore[list-item]
    script = CallScript([WaitAgentSpeech(3), Wait(500), Say(quiet(2.0)), Hangup()])
    assert script.longest_s() == pytest.approx(5.52)


# ---- the media core: RTP in, RTP out -------------------------------------------------


def agent_packets(pcm: Pcm, start_slot: int, ssrc: int = 99) -> list[tuple[float, bytes]]:
    out = []
    for i, frame in enumerate(frames(pcm)):
        data = pack_rtp(0, i, 4242 + i * FRAME, ssrc, g711.ulaw_encode(frame))
        out.append(((start_slot + i) * 0.02 + 0.003, data))
    return out


def test_media_core_hears_the_agent_answers_and_keeps_both_tracks_aligned() -> None:
    greeting = np.concatenate([quiet(0.2), vowel(1.0), quiet(3.0)])  # voice 0.2-1.2 s
    question = np.concatenate([vowel(0.6), quiet(0.2)])
    script = CallScript(
        [WaitAgentSpeech(5), WaitAgentSilence(600, 5), Say(question, "q"), Wait(500), Hangup()]
    )
    media = CallerMedia(script, MediaFormat("PCMU", 0, 101), max_s=10, ssrc=1234)
    incoming = agent_packets(greeting, start_slot=0)
    sent: list[bytes] = []
    slot = 0
    while True:
        while incoming and incoming[0][0] <= slot * 0.02:
            arrival, data = incoming.pop(0)
            media.receive(data, arrival)
        packets, over = media.tick(slot)
        sent += packets
        slot += 1
        if over:
            break
        assert slot < 500
    sent_pcm, received, timeline = media.finish()
    assert len(sent_pcm) == len(received) == slot * FRAME
    # Our packets: one per slot, consecutive sequence numbers and timestamps.
    parsed = [parse_rtp(p) for p in sent]
    assert all(p is not None and p.ssrc == 1234 and p.payload_type == 0 for p in parsed)
    seqs = [p.sequence for p in parsed if p is not None]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
    assert parsed[0] is not None and parsed[0].marker
    # What we sent is what the sent track holds (through G.711).
    decoded = np.concatenate([g711.ulaw_decode(p.payload) for p in parsed if p is not None])
    assert np.array_equal(decoded, g711.ulaw_decode(g711.ulaw_encode(sent_pcm)))
    # The received track holds the greeting where it arrived (3 ms = 24 samples late).
    n = min(len(received) - 24, len(greeting))
    assert np.abs(received[24 : 24 + n].astype(int) - greeting[:n]).max() < 1200  # G.711
    got = {e.kind: e.at_s for e in timeline if e.kind != HANGUP}
    assert got[AGENT_SPEECH_START] == pytest.approx(0.2, abs=TOLERANCE_S)
    assert got[AGENT_SPEECH_END] == pytest.approx(1.2, abs=TOLERANCE_S)
    # The question starts once 600 ms of silence are known (plus the hearing lag).
    assert got[SAY_START] == pytest.approx(1.2 + 0.6 + 0.06, abs=0.05)
    assert got[SAY_END] == pytest.approx(got[SAY_START] + 0.8)
    assert got[CALLER_SPEECH_START] == pytest.approx(got[SAY_START], abs=TOLERANCE_S)
    assert got[CALLER_SPEECH_END] == pytest.approx(got[SAY_START] + 0.6, abs=TOLERANCE_S)
    assert media.counts.received == len(frames(greeting)) - len(incoming)  # the rest: too late


def test_media_core_sends_rfc4733_on_the_stream_clock() -> None:
    media = CallerMedia(CallScript([Wait(40), Dtmf("7")]), MediaFormat("PCMA", 8, 96), max_s=5)
    packets = []
    slot = 0
    while True:
        out, over = media.tick(slot)
        packets += [p for p in (parse_rtp(d) for d in out) if p is not None]
        slot += 1
        if over:
            break
    events = [p for p in packets if p.payload_type == 96]
    assert events and all(p.timestamp == events[0].timestamp for p in events)
    audio_ts = [p.timestamp for p in packets if p.payload_type == 8]
    assert audio_ts[:2] == [audio_ts[0], (audio_ts[0] + 160) % 2**32]
    assert events[0].timestamp == (audio_ts[0] + 320) % 2**32  # slot 2, on the same clock
    assert media.counts.dtmf_sent == len(events)


def test_media_core_counts_what_it_cannot_use() -> None:
    media = CallerMedia(CallScript([]), MediaFormat("PCMU", 0, None), max_s=5)
    media.receive(b"junk", 0.1)
    media.receive(pack_rtp(18, 1, 0, 5, b"\x00" * 20), 0.1)  # G.729: not offered
    media.receive(pack_rtp(0, 1, 0, 5, b"\xff" * 160), -0.1)  # before the answer
    assert (media.counts.invalid, media.counts.before_answer, media.counts.received) == (2, 1, 0)


# ---- SDP: our offer, their answers ---------------------------------------------------


def node_like_answer(port: int = 40000, te: bool = True) -> bytes:
    lines = ["v=0", "o=node 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    fmts = "0 101" if te else "0"
    lines += [f"m=audio {port} RTP/AVP {fmts}", "a=rtpmap:0 PCMU/8000"]
    if te:
        lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    return ("\r\n".join([*lines, "a=sendrecv"]) + "\r\n").encode()


def test_offer_is_pcmu_with_telephone_events() -> None:
    answerer = SdpAnswerer(local_ip="127.0.0.1", local_port=31000)
    offer = SessionDescription.parse(bytes(answerer.offer(("PCMU",), telephone_event_pt=101)))
    (audio,) = offer.media
    assert (audio.port, audio.proto, audio.formats) == (31000, "RTP/AVP", ["0", "101"])
    assert audio.rtpmap() == {0: ("PCMU", 8000), 101: ("TELEPHONE-EVENT", 8000)}
    assert audio.direction("sendrecv") == "sendrecv"


def test_answers_from_a_node_and_from_sipp_are_understood() -> None:
    answerer = SdpAnswerer(local_ip="127.0.0.1", local_port=31000)
    answerer.offer(("PCMU",), telephone_event_pt=101)
    got = answerer.accept_answer(SessionDescription.parse(node_like_answer(40000)))
    assert (got.codec.name, got.remote_rtp, got.telephone_event_pt) == (
        "PCMU", ("127.0.0.1", 40000), 101,
    )  # fmt: skip
    sipp = b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
    sipp += b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    got = answerer.accept_answer(SessionDescription.parse(sipp))
    assert (got.remote_rtp, got.telephone_event_pt) == (("127.0.0.1", 6000), None)
    refused = node_like_answer(0)
    with pytest.raises(NoCommonCodec):
        answerer.accept_answer(SessionDescription.parse(refused))


# ---- the SIP dialog ------------------------------------------------------------------


def target() -> SipUri:
    uri = parse_uri("sip:agent@127.0.0.1:5070")
    assert isinstance(uri, SipUri)
    return uri


def answer_to(invite_bytes: bytes, contact: bool = True) -> Response:
    invite = parse_message(invite_bytes)
    assert invite is not None
    head = invite_bytes.decode().split("\r\n")
    copied = [line for line in head if line.split(":")[0] in ("Via", "From", "Call-ID", "CSeq")]
    to = next(line for line in head if line.startswith("To:"))
    lines = ["SIP/2.0 200 OK", *copied, f"{to};tag=node1"]
    if contact:
        lines.append("Contact: <sip:agent@127.0.0.1:5070>")
    body = node_like_answer()
    lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}", "", ""]
    response = parse_message("\r\n".join(lines).encode() + body)
    assert isinstance(response, Response)
    return response


def test_dialog_invite_ack_and_bye() -> None:
    dialog = CallerDialog.start(call_id="c1@x", uri=target(), caller="eval", local="127.0.0.1:5555")
    invite = dialog.invite(b"v=0\r\n", (("X-Eval-Case", "hours"),))
    raw = bytes(invite)
    assert raw.startswith(b"INVITE sip:agent@127.0.0.1:5070 SIP/2.0\r\n")
    assert b"X-Eval-Case: hours\r\n" in raw and b"Content-Type: application/sdp" in raw
    assert b"Contact: <sip:eval@127.0.0.1:5555>" in raw
    dialog.confirm(answer_to(raw))
    ack = parse_message(dialog.ack_bytes())
    assert ack is not None and ack.cseq.number == invite.cseq.number
    assert ack.cseq.method == "ACK" and ack.to.tag == "node1"
    assert ack.top_via.branch != invite.top_via.branch  # a 2xx's ACK is its own transaction
    bye = dialog.bye()
    assert bye.uri == "sip:agent@127.0.0.1:5070"
    assert bye.cseq.number == invite.cseq.number + 1 and bye.to.tag == "node1"
    assert bye.from_.tag == dialog.local_tag


def test_dialog_matches_only_its_own_requests() -> None:
    dialog = CallerDialog.start(call_id="c2@x", uri=target(), caller="eval", local="127.0.0.1:5555")
    dialog.confirm(answer_to(bytes(dialog.invite(b""))))

    def bye(call_id: str, from_tag: str, to_tag: str) -> bytes:
        return (
            "BYE sip:eval@127.0.0.1:5555 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n"
            f"From: <sip:agent@127.0.0.1>;tag={from_tag}\r\n"
            f"To: <sip:eval@127.0.0.1>;tag={to_tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    ours = parse_message(bye("c2@x", "node1", dialog.local_tag))
    assert ours is not None and dialog.matches(ours)  # type: ignore[arg-type]
    for other in (bye("c3@x", "node1", dialog.local_tag), bye("c2@x", "node2", dialog.local_tag)):
        request = parse_message(other)
        assert request is not None and not dialog.matches(request)  # type: ignore[arg-type]


def test_a_2xx_without_contact_still_gets_its_ack() -> None:
    dialog = CallerDialog.start(call_id="c4@x", uri=target(), caller="eval", local="127.0.0.1:5555")
    raw = bytes(dialog.invite(b""))
    dialog.confirm(answer_to(raw, contact=False))
    assert dialog.ack_bytes().startswith(b"ACK sip:agent@127.0.0.1:5070 SIP/2.0")


# ---- the result ----------------------------------------------------------------------


def result_with(events: list[tuple[float, str, str]]) -> CallResult:
    result = CallResult(call_id="c", target="sip:a@b", answered=True)
    result.timeline = [TimelineEvent(at, kind, detail) for at, kind, detail in events]
    return result


def test_reply_latency_runs_from_the_end_of_the_callers_voice() -> None:
    result = result_with([
        (0.2, AGENT_SPEECH_START, ""), (3.0, AGENT_SPEECH_END, ""),
        (4.0, SAY_START, "hours"), (4.1, CALLER_SPEECH_START, ""),
        (5.5, CALLER_SPEECH_END, ""), (5.8, SAY_END, "hours"),
        (6.4, AGENT_SPEECH_START, ""), (9.0, AGENT_SPEECH_END, ""),
        (10.0, SAY_START, "bye"), (10.5, SAY_END, "bye"),
    ])  # fmt: skip
    first, second = result.reply_latencies()
    assert (first.label, first.said_until_s, first.reply_at_s) == ("hours", 5.5, 6.4)
    assert first.latency_s == pytest.approx(0.9)
    assert (second.label, second.said_until_s, second.latency_s) == ("bye", 10.5, None)
    assert result.summary()["reply_latencies_s"] == [0.9, None]


def test_talk_over_says_how_soon_the_agent_stopped() -> None:
    result = result_with([
        (0.2, AGENT_SPEECH_START, ""), (1.0, SAY_START, ""), (1.02, CALLER_SPEECH_START, ""),
        (1.09, AGENT_SPEECH_END, ""), (2.0, CALLER_SPEECH_END, ""), (2.0, SAY_END, ""),
        (2.9, AGENT_SPEECH_START, ""),
    ])  # fmt: skip
    (over,) = result.talk_overs()
    assert over.caller_onset_s == 1.02 and over.agent_onset_s == 0.2
    assert over.stopped_after_s == pytest.approx(0.07)
    assert result.speech("agent") == [(0.2, 1.09), (2.9, None)]


def test_wav_has_the_caller_left_and_what_it_heard_right(tmp_path: Path) -> None:
    result = CallResult(call_id="c", target="t")
    result.sent = np.array([1, 2, 3], dtype=np.int16)
    result.received = np.array([-1, -2, -3, -4], dtype=np.int16)
    path = result.write_wav(tmp_path / "call.wav")
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getnframes()) == (2, 8000, 4)
        data = np.frombuffer(wav.readframes(4), dtype="<i2").reshape(-1, 2)
    assert data[:, 0].tolist() == [1, 2, 3, 0] and data[:, 1].tolist() == [-1, -2, -3, -4]


# ---- place_call's arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["agent@127.0.0.1", "sips:agent@127.0.0.1", "sip:a@127.0.0.1;transport=tcp", "tel:+1"]
)
async def test_place_call_refuses_targets_it_cannot_dial(bad: str) -> None:
    with pytest.raises(CallerError):
        await place_call(bad, CallScript([Hangup()]))


async def test_place_call_refuses_an_unroutable_local_host() -> None:
    with pytest.raises(CallerError, match="local_host"):
        await place_call("sip:a@127.0.0.1:5060", CallScript([Hangup()]), local_host="0.0.0.0")


class _Flow:
    transport = "UDP"
    remote = ("127.0.0.1", 5060)
    reliable = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


async def test_a_closed_endpoint_leaves_no_timer_behind() -> None:
    endpoint = SipEndpoint(object(), loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    dialog = CallerDialog.start(call_id="c5@x", uri=target(), caller="eval", local="127.0.0.1:5555")
    flow = _Flow()
    endpoint.send_request(dialog.invite(b""), flow, lambda _event: None)

    def armed() -> bool:
        return endpoint._timer is not None

    assert endpoint.transaction_count == 1 and armed()
    endpoint.close()
    assert endpoint.transaction_count == 0 and not armed()
    await asyncio.sleep(0.6)  # Timer A would have fired by now
    assert len(flow.sent) == 1
