"""VoiceActivityDetector: webrtcvad plus hysteresis, on synthetic 8 kHz audio."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import webrtcvad

from media.vad import SpeechEnded, SpeechStarted, VadEvent, VadState, VoiceActivityDetector

RATE = 8000
FRAME = 160  # 20 ms
FRAME_S = 0.02
TOLERANCE_S = 0.06

Pcm = npt.NDArray[np.int16]

# Rough formants of /a/ (Hz, bandwidth Hz): the harmonics near them get the energy.
_FORMANTS = ((700.0, 130.0), (1220.0, 170.0), (2600.0, 250.0))


def vowel(seconds: float, f0: float = 150.0, amplitude: float = 8000.0) -> Pcm:
    """A harmonic-rich vowel-like tone: f0 and its harmonics, shaped by formants."""
    n = round(seconds * RATE)
    t = np.arange(n, dtype=np.float64) / RATE
    sig = np.zeros(n, dtype=np.float64)
    k = 1
    while k * f0 < RATE / 2 - 200:
        f = k * f0
        weight = 0.05 + sum(np.exp(-(((f - fc) / bw) ** 2)) for fc, bw in _FORMANTS)
        sig += weight * np.sin(2 * np.pi * f * t + k)
        k += 1
    sig *= amplitude / np.abs(sig).max()
    return sig.astype(np.int16)


def silence(seconds: float) -> Pcm:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def noise(seconds: float, std: float = 30.0, seed: int = 1) -> Pcm:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, std, round(seconds * RATE)).astype(np.int16)


def run(vad: VoiceActivityDetector, signal: Pcm, t0: float = 0.0) -> list[VadEvent]:
    events: list[VadEvent] = []
    for i in range(len(signal) // FRAME):
        events += vad.process(signal[i * FRAME : (i + 1) * FRAME], t0 + i * FRAME_S)
    return events


def test_webrtcvad_calls_the_synthetic_vowel_voiced() -> None:
    vad = webrtcvad.Vad(2)
    sig = vowel(1.0)
    voiced = [vad.is_speech(sig[i : i + FRAME].tobytes(), RATE) for i in range(0, RATE, FRAME)]
    assert sum(voiced) >= 0.95 * len(voiced)


@pytest.mark.parametrize("signal", [silence(3.0), noise(3.0, std=10.0), noise(3.0, std=30.0)])
def test_silence_and_low_noise_give_no_events(signal: Pcm) -> None:
    vad = VoiceActivityDetector()
    assert run(vad, signal) == []
    assert vad.state is VadState.QUIET


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_one_utterance_onset_and_end(aggressiveness: int) -> None:
    vad = VoiceActivityDetector(aggressiveness=aggressiveness)
    events = run(vad, np.concatenate([silence(1.0), vowel(1.0), silence(1.0)]))
    assert len(events) == 2
    started, ended = events
    assert isinstance(started, SpeechStarted)
    assert isinstance(ended, SpeechEnded)
    assert started.at == pytest.approx(1.0, abs=TOLERANCE_S)
    assert ended.at == pytest.approx(2.0, abs=TOLERANCE_S)
    assert ended.speech_s == pytest.approx(ended.at - started.at)
    assert ended.speech_s == pytest.approx(1.0, abs=TOLERANCE_S)
    assert vad.state is VadState.QUIET


def test_utterance_over_background_noise() -> None:
    sig = noise(3.0, std=30.0)
    sig[RATE : 2 * RATE] += vowel(1.0)
    events = run(VoiceActivityDetector(), sig)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at == pytest.approx(1.0, abs=TOLERANCE_S)
    assert events[1].at == pytest.approx(2.0, abs=TOLERANCE_S)


def test_events_come_when_confirmed_not_earlier() -> None:
    vad = VoiceActivityDetector(start_ms=100, stop_ms=500)
    sig = np.concatenate([silence(1.0), vowel(1.0), silence(1.0)])
    emitted: list[tuple[float, VadEvent]] = []
    for i in range(len(sig) // FRAME):
        now = i * FRAME_S
        for event in vad.process(sig[i * FRAME : (i + 1) * FRAME], now):
            emitted.append((now + FRAME_S, event))  # when the frame was complete
    (t_start, _), (t_end, _) = emitted
    assert 1.1 - 1e-9 <= t_start <= 1.1 + 0.1  # start_ms of voice (+ webrtcvad's hangover)
    assert t_end == pytest.approx(2.5, abs=TOLERANCE_S)  # stop_ms after the voice ended


def test_states_walk_through_the_cycle() -> None:
    vad = VoiceActivityDetector()
    seen = [vad.state]
    sig = np.concatenate([silence(0.5), vowel(0.5), silence(1.0)])
    for i in range(len(sig) // FRAME):
        vad.process(sig[i * FRAME : (i + 1) * FRAME], i * FRAME_S)
        if vad.state is not seen[-1]:
            seen.append(vad.state)
    assert seen == [
        VadState.QUIET,
        VadState.STARTING,
        VadState.SPEAKING,
        VadState.STOPPING,
        VadState.QUIET,
    ]


def test_click_shorter_than_start_ms_is_ignored() -> None:
    vad = VoiceActivityDetector()
    assert run(vad, np.concatenate([silence(1.0), vowel(0.04), silence(1.0)])) == []
    assert vad.state is VadState.QUIET


def test_short_gap_keeps_one_utterance() -> None:
    vad = VoiceActivityDetector(stop_ms=500)
    sig = np.concatenate([silence(1.0), vowel(0.6), silence(0.2), vowel(0.6), silence(1.0)])
    events = run(vad, sig)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at == pytest.approx(1.0, abs=TOLERANCE_S)
    assert events[1].at == pytest.approx(2.4, abs=TOLERANCE_S)


def test_gap_longer_than_stop_ms_splits_utterances() -> None:
    vad = VoiceActivityDetector(stop_ms=150)
    sig = np.concatenate([silence(1.0), vowel(0.6), silence(0.3), vowel(0.6), silence(1.0)])
    events = run(vad, sig)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 2
    assert [round(e.at, 2) for e in events] == pytest.approx([1.0, 1.6, 1.9, 2.5], abs=0.06)


@pytest.mark.parametrize(("start_ms", "burst_s", "expected"), [(300, 0.2, 0), (300, 0.4, 2)])
def test_start_ms_is_respected(start_ms: int, burst_s: float, expected: int) -> None:
    vad = VoiceActivityDetector(start_ms=start_ms)
    events = run(vad, np.concatenate([silence(1.0), vowel(burst_s), silence(1.0)]))
    assert len(events) == expected


class ScriptedVad:
    """Stands in for webrtcvad.Vad: answers from a script of '1' (voiced) / '.' frames."""

    script = ""

    def __init__(self, mode: int) -> None:
        self.mode = mode
        self.calls = 0

    def is_speech(self, buf: bytes, sample_rate: int) -> bool:
        assert len(buf) == 2 * FRAME and sample_rate == RATE
        self.calls += 1
        return ScriptedVad.script[self.calls - 1] == "1"


def scripted(monkeypatch: pytest.MonkeyPatch, script: str, **kwargs: int) -> list[VadEvent]:
    monkeypatch.setattr(webrtcvad, "Vad", ScriptedVad)
    ScriptedVad.script = script.replace(" ", "")
    vad = VoiceActivityDetector(**kwargs)
    events: list[VadEvent] = []
    for i in range(len(ScriptedVad.script)):
        events += vad.process(silence(FRAME_S), i * FRAME_S)
    return events


# With aggressiveness 2 webrtcvad pads a run with 3 frames (5 after > 6 voiced frames):
# start_ms=100 needs 5 + 3 voiced frames as reported.
@pytest.mark.parametrize(
    ("script", "started"),
    [
        ("..... 1111111 ....", False),  # 7 reported: 80 ms of voice at most
        ("..... 11111111 ....", True),
        ("..... 1111.1111 ....", True),  # one unvoiced frame forgiven
        ("..... 1.1111111 ....", True),
        ("..... 1111..1111 ....", False),  # two are not
        ("..... 1.1.111111 ....", False),
    ],
)
def test_start_window_forgives_one_unvoiced_frame(
    monkeypatch: pytest.MonkeyPatch, script: str, started: bool
) -> None:
    events = scripted(monkeypatch, script)
    assert bool(events) is started
    if started:
        assert isinstance(events[0], SpeechStarted)
        assert events[0].at == pytest.approx(5 * FRAME_S)


def described(events: list[VadEvent]) -> tuple[list[str], list[float]]:
    """(kinds, numbers): the events' types and their times, for approximate comparison."""
    kinds: list[str] = []
    numbers: list[float] = []
    for e in events:
        if isinstance(e, SpeechStarted):
            kinds.append("started")
            numbers.append(e.at)
        else:
            kinds.append("ended")
            numbers += [e.at, e.speech_s]
    return kinds, numbers


def test_end_time_takes_back_webrtcvads_hangover(monkeypatch: pytest.MonkeyPatch) -> None:
    # 20 voiced frames from t=0.1 (15 real + 5 hangover): voice ended at 0.1 + 15 * 0.02.
    events = scripted(monkeypatch, "....." + "1" * 20 + "." * 30, stop_ms=200)
    kinds, numbers = described(events)
    assert kinds == ["started", "ended"]
    assert numbers == pytest.approx([0.1, 0.4, 0.3])
    # A short run (<= 6 real frames) earns the short hangover (3).
    events = scripted(monkeypatch, "....." + "1" * 9 + "." * 30, stop_ms=200)
    kinds, numbers = described(events)
    assert kinds == ["started", "ended"]
    assert numbers == pytest.approx([0.1, 0.22, 0.12])


def test_stop_ms_counts_from_the_voice_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webrtcvad, "Vad", ScriptedVad)
    ScriptedVad.script = "....." + "1" * 20 + "." * 30
    vad = VoiceActivityDetector(stop_ms=200)
    ended_after: list[float] = []
    for i in range(len(ScriptedVad.script)):
        events = vad.process(silence(FRAME_S), i * FRAME_S)
        if any(isinstance(e, SpeechEnded) for e in events):
            ended_after.append(i * FRAME_S + FRAME_S)
    # Voice ended at 0.4 s; the frame completing 200 ms of quiet ends at 0.6 s.
    assert ended_after == [pytest.approx(0.6)]


def test_stop_ms_is_respected() -> None:
    sig = np.concatenate([silence(1.0), vowel(0.5), silence(0.4), vowel(0.5), silence(1.5)])
    assert len(run(VoiceActivityDetector(stop_ms=300), sig)) == 4
    assert len(run(VoiceActivityDetector(stop_ms=600), sig)) == 2
    long_stop = run(VoiceActivityDetector(stop_ms=1200), sig)
    assert len(long_stop) == 2
    assert long_stop[1].at == pytest.approx(1.0 + 0.5 + 0.4 + 0.5, abs=TOLERANCE_S)


def test_utterance_still_open_at_the_end_emits_no_end() -> None:
    vad = VoiceActivityDetector()
    events = run(vad, np.concatenate([silence(0.5), vowel(1.0)]))
    assert [type(e) for e in events] == [SpeechStarted]
    assert vad.state is VadState.SPEAKING


def test_reset_forgets_the_utterance() -> None:
    vad = VoiceActivityDetector()
    run(vad, np.concatenate([silence(0.5), vowel(0.5)]))
    states = [vad.state]
    vad.reset()
    states.append(vad.state)
    assert states == [VadState.SPEAKING, VadState.QUIET]
    assert run(vad, silence(2.0), t0=1.0) == []


def test_time_stamps_follow_the_callers_clock() -> None:
    vad = VoiceActivityDetector()
    events = run(vad, np.concatenate([silence(1.0), vowel(1.0), silence(1.0)]), t0=1000.0)
    assert events[0].at == pytest.approx(1001.0, abs=TOLERANCE_S)
    assert events[1].at == pytest.approx(1002.0, abs=TOLERANCE_S)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        VoiceActivityDetector(aggressiveness=4)
    with pytest.raises(ValueError):
        VoiceActivityDetector(frame_ms=25)
    with pytest.raises(ValueError):
        VoiceActivityDetector(start_ms=-1)
    with pytest.raises(ValueError, match="160 samples"):
        VoiceActivityDetector().process(np.zeros(80, dtype=np.int16), 0.0)


@pytest.mark.parametrize("frame_ms", [10, 30])
def test_other_frame_lengths(frame_ms: int) -> None:
    vad = VoiceActivityDetector(frame_ms=frame_ms)
    n = RATE * frame_ms // 1000
    sig = np.concatenate([silence(1.0), vowel(1.0), silence(1.0)])
    events: list[VadEvent] = []
    for i in range(len(sig) // n):
        events += vad.process(sig[i * n : (i + 1) * n], i * frame_ms / 1000)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at == pytest.approx(1.0, abs=TOLERANCE_S)
    assert events[1].at == pytest.approx(2.0, abs=TOLERANCE_S)
