"""A suite case as a caller's script, and its grading from a call record (pure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media.speech import SAMPLE_RATE, Pcm
from switch.eval.grade import grade_case
from switch.eval.plan import script_for, shaped, telephone_band, trim_silence, turn_audio
from switch.eval.script import Dtmf, Hangup, Say, Wait, WaitAgentSilence, WaitAgentSpeech
from switch.eval.suite import Case, parse_suite

SUITE = """
agent: default
cases:
  - id: hours
    say: when do you open
    expect: {entry: hours, max_latency_ms: 1500}
  - id: number
    say: ["my number is five five five", {pause_ms: 900}, "one two one two"]
    expect: {entry: account}
  - id: backchannel
    turns:
      - say: tell me about delivery
        expect: {entry: delivery}
      - say: uh-huh
        over_agent_ms: 1500
        expect: {agent_stops: false}
      - say: okay
        over_agent_ms: 3000
        expect: {agent_stops: false}
  - id: off-topic
    say: what's the weather like
    expect: {fallback: true}
  - id: bye
    turns:
      - say: thanks that's all
        dtmf: "9"
        expect: {action: hangup}
"""


def cases() -> dict[str, Case]:
    suite = parse_suite(SUITE, Path("/suites/test.yaml"))
    return {case.id: case for case in suite.cases}


def tone(seconds: float, level: int = 8000) -> Pcm:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def speak(text: str) -> Pcm:
    """A stand-in voice: 0.1 s of tone a word, with the silence real voices add."""
    quiet = np.zeros(800, dtype=np.int16)
    return np.concatenate([quiet, tone(0.1 * len(text.split())), quiet])


def test_a_line_with_a_pause_is_one_track_with_silence_inside() -> None:
    turn = cases()["number"].turns[0]
    pcm = turn_audio(turn, speak)
    # words trimmed of the voice's own silence; the 900 ms pause kept
    assert abs(len(pcm) - int((0.6 + 0.9 + 0.4) * SAMPLE_RATE)) < 10
    middle = pcm[int(0.61 * SAMPLE_RATE) : int(1.49 * SAMPLE_RATE)]
    assert not middle.any()


def test_trim_silence_and_the_telephone_band() -> None:
    pcm = np.concatenate([np.zeros(100, np.int16), tone(0.2), np.zeros(100, np.int16)])
    assert len(trim_silence(pcm)) <= len(tone(0.2))
    low = tone(1.0)  # 440 Hz: inside the band
    hum = (8000 * np.sin(2 * np.pi * 60 * np.arange(8000) / 8000)).astype(np.int16)
    assert np.abs(telephone_band(low)).max() > 6000
    assert np.abs(telephone_band(hum)).max() < 500  # 60 Hz mains hum: gone


def test_noise_is_relative_to_the_speech() -> None:
    case = cases()["hours"]
    noisy = shaped(
        Case(**{**case.__dict__, "noise_db": -20.0, "band": "full"}),
        tone(1.0),
        np.random.default_rng(1),
    )
    residual = noisy.astype(np.float64) - tone(1.0)
    ratio = np.sqrt(np.mean(residual**2)) / np.sqrt(np.mean(tone(1.0).astype(np.float64) ** 2))
    assert ratio == pytest.approx(0.1, rel=0.15)  # -20 dB


def test_a_question_waits_for_the_greeting_then_hangs_up_after_the_answer() -> None:
    case = cases()["hours"]
    steps = script_for(case, [tone(1.0)]).steps
    assert isinstance(steps[0], WaitAgentSpeech) and steps[0].ongoing
    assert isinstance(steps[1], WaitAgentSilence)
    assert isinstance(steps[2], Say)
    assert isinstance(steps[-1], Hangup)
    assert isinstance(steps[-3], WaitAgentSpeech) and isinstance(steps[-2], WaitAgentSilence)


def test_backchannels_over_one_answer_are_spaced_from_its_onset() -> None:
    case = cases()["backchannel"]
    steps = script_for(case, [tone(1.0), tone(0.5), tone(0.25)]).steps
    kinds = [type(s).__name__ for s in steps]
    assert kinds[:8] == ["WaitAgentSpeech", "WaitAgentSilence", "Say",
                         "WaitAgentSpeech", "Wait", "Say", "Wait", "Say"]  # fmt: skip
    first, second = steps[4], steps[6]
    assert isinstance(first, Wait) and first.ms == 1500
    assert isinstance(second, Wait) and second.ms == 3000 - 1500 - 500  # after uh-huh's audio


def test_dtmf_follows_the_words() -> None:
    steps = script_for(cases()["bye"], [tone(0.5)]).steps
    assert isinstance(steps[2], Say) and isinstance(steps[3], Dtmf) and steps[3].digits == "9"


def test_grading_right_wrong_and_wrong_actions() -> None:
    c = cases()
    right = grade_case(c["hours"], [{"agent": "We open at 11.", "knowledge": ["hours"]}], [0.7])
    assert right.passed and right.turns[0].latency_s == 0.7
    slow = grade_case(c["hours"], [{"agent": "x", "knowledge": ["hours"]}], [2.0])
    assert not slow.passed and "over 1500 ms" in slow.why[0]
    wrong = grade_case(c["hours"], [{"agent": "x", "knowledge": ["address"], "tools": ["hang_up"]}])
    assert not wrong.passed
    assert wrong.wrong_actions and "hangup" in wrong.wrong_actions[0]
    assert grade_case(c["off-topic"], [{"agent": "Sorry?", "knowledge": []}]).passed
    assert not grade_case(c["off-topic"], [{"agent": "x", "knowledge": ["hours"]}]).passed
    assert not grade_case(c["hours"], []).passed  # no answer recorded
    bye = grade_case(c["bye"], [{"agent": "Goodbye!", "tools": ["hang_up"]}])
    assert bye.passed and not bye.wrong_actions


def test_a_backchannel_that_got_an_answer_or_stopped_the_agent_fails() -> None:
    case = cases()["backchannel"]
    answer = {"agent": "We deliver.", "knowledge": ["delivery"]}
    assert grade_case(case, [answer], agent_stopped={1: False, 2: False}).passed
    assert not grade_case(case, [answer, {"agent": "Sorry?"}]).passed  # cut into a turn
    stopped = grade_case(case, [answer], agent_stopped={1: True})
    assert not stopped.passed and "stopped for a backchannel" in stopped.why[0]


def test_totals_and_the_report(tmp_path: Path) -> None:
    from switch.eval.runner import Outcome, totals, write_report

    suite = parse_suite(SUITE.replace("agent: default", "agent: default\npass_mark: 0.5"),
                        Path("/suites/test.yaml"))  # fmt: skip
    c = cases()
    right = grade_case(c["hours"], [{"agent": "11", "knowledge": ["hours"]}], [0.6])
    wrong = grade_case(c["off-topic"], [{"agent": "x", "tools": ["transfer"]}], [0.8])
    outcomes = [Outcome(c["hours"], right), Outcome(c["off-topic"], wrong)]
    summary = totals(suite, outcomes)
    assert summary["right"] == 1 and summary["cases"] == len(suite.cases)
    assert summary["wrong_actions"] == 1 and not summary["passed"]  # a wrong action fails it
    assert summary["turn_latency_p50_s"] == 0.7
    write_report(tmp_path, suite, outcomes)
    markdown = (tmp_path / "report.md").read_text()
    assert "| hours | right |" in markdown and "| off-topic | WRONG |" in markdown
    assert "wrong action: transfer" in (tmp_path / "report.json").read_text()
