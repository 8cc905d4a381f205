"""The report's figures (cut-offs, false barge-ins, recognition time), its charts and
audio, and grading a foreign target from what the caller heard (switch.eval.heard)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from media.speech import SAMPLE_RATE, Pcm
from switch.eval.grade import grade_case
from switch.eval.heard import HeardReply, closest_entry, heard_replies, record_turns, reply_spans
from switch.eval.result import CallResult
from switch.eval.runner import Outcome, totals, write_report
from switch.eval.suite import Case, Suite, parse_suite
from switch.eval.timeline import TimelineEvent

SUITE = """
agent: default
pass_mark: 0.5
cases:
  - id: hours
    say: when do you open
    expect: {entry: hours}
  - id: chat
    turns:
      - say: tell me about delivery
        expect: {entry: delivery}
      - say: uh-huh
        over_agent_ms: 500
        expect: {agent_stops: false}
      - say: thanks bye
        expect: {action: hangup}
  - id: off-topic
    say: what's the weather like
    expect: {fallback: true}
"""
ENTRIES = [
    ("hours", "We are open from eleven in the morning until ten at night, every day."),
    ("delivery", "We deliver within three miles; delivery is free over twenty dollars."),
]


def suite() -> Suite:
    return parse_suite(SUITE, Path("/suites/t.yaml"))


def case(case_id: str) -> Case:
    return next(c for c in suite().cases if c.id == case_id)


def call(events: list[tuple[float, str, str]], seconds: float, **kw: object) -> CallResult:
    result = CallResult(call_id="c", target="sip:a@b", answered=True, **kw)  # type: ignore[arg-type]
    result.timeline = [TimelineEvent(at, kind, detail) for at, kind, detail in events]
    result.sent = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)
    # Each received sample is the number of its 10 ms slot: where a cut began shows.
    result.received = (np.arange(int(seconds * SAMPLE_RATE)) // 80).astype(np.int16)
    return result


CHAT = [
    (0.0, "agent_speech_start", ""), (1.5, "agent_speech_end", ""),
    (2.0, "say_start", "tell me about delivery"), (2.0, "caller_speech_start", ""),
    (3.0, "caller_speech_end", ""), (3.0, "say_end", "tell me about delivery"),
    (3.6, "agent_speech_start", ""),
    (4.1, "say_start", "uh-huh"), (4.1, "caller_speech_start", ""),
    (4.4, "caller_speech_end", ""), (4.4, "say_end", "uh-huh"),
    (7.0, "agent_speech_end", ""),
    (7.6, "say_start", "thanks bye"), (7.6, "caller_speech_start", ""),
    (8.2, "caller_speech_end", ""), (8.2, "say_end", "thanks bye"),
    (8.7, "agent_speech_start", ""), (9.5, "agent_speech_end", ""),
]  # fmt: skip


def test_the_entry_a_heard_answer_repeats_is_found_or_none() -> None:
    heard = "we're open from eleven in the morning until ten at night"
    assert closest_entry(heard, ENTRIES) == "hours"
    assert closest_entry("We deliver within three miles.", ENTRIES) == "delivery"
    assert closest_entry("Sorry, I can only help with pizza.", ENTRIES) is None
    assert closest_entry("open", ENTRIES) is None  # one shared word is not the entry


def test_each_reply_is_cut_from_its_onset_to_the_next_line() -> None:
    result = call(CHAT, 10.0)
    spans = reply_spans(case("chat"), result)
    assert spans == [(3.6, 4.1), (None, None), (8.7, 10.0)]


async def test_replies_are_transcribed_from_the_received_audio() -> None:
    result = call(CHAT, 10.0)
    heard: list[Pcm] = []

    class Ear:
        async def transcribe(self, pcm: Pcm) -> str:
            heard.append(pcm)
            return f"reply {len(heard)}"

    replies = await heard_replies(case("chat"), result, Ear())
    assert [r.text for r in replies] == ["reply 1", "", "reply 2"]
    assert len(heard) == 2 and len(heard[0]) == round(0.5 * SAMPLE_RATE)
    assert heard[0][0] == round(3.6 * SAMPLE_RATE) // 80  # cut where the reply began


def test_the_far_end_hanging_up_is_an_action_of_the_turn_it_came_in() -> None:
    chat = case("chat")
    replies = [HeardReply(ENTRIES[1][1], 3.6, 4.1), HeardReply("", None, None),
               HeardReply("Goodbye!", 8.7, 10.0)]  # fmt: skip
    by_callee = call(CHAT, 10.0, hangup_by="callee")
    turns = record_turns(chat, by_callee, replies, ENTRIES)
    assert [t["knowledge"] for t in turns] == [["delivery"], []]  # the backchannel: no turn
    assert [t["tools"] for t in turns] == [[], ["hang_up"]]
    assert grade_case(chat, turns).passed
    by_caller = record_turns(chat, call(CHAT, 10.0, hangup_by="caller"), replies, ENTRIES)
    verdict = grade_case(chat, by_caller)
    assert not verdict.passed and "expected hangup, none happened" in verdict.why[0]
    # Hung up on during the first answer: that turn's wrong action, the rest unsaid.
    early = call(CHAT[:8], 4.0, hangup_by="callee")
    turns = record_turns(chat, early, replies[:1], ENTRIES)
    assert [t["tools"] for t in turns] == [["hang_up"]]
    assert grade_case(chat, turns).wrong_actions


def test_cut_offs_false_barge_ins_and_recognition_time_reach_the_totals(tmp_path: Path) -> None:
    hours, chat = case("hours"), case("chat")
    answer = {"agent": "We open at 11.", "knowledge": ["hours"], "asr_s": 0.4}
    cut = grade_case(hours, [{"agent": "Sorry?", "asr_s": 0.2}, answer], [1.0, 0.8])
    assert not cut.passed and cut.cut_offs == 1
    delivery = {"agent": "We deliver.", "knowledge": ["delivery"], "asr_s": 0.3}
    bye = {"agent": "Bye!", "tools": ["hang_up"], "asr_s": 0.3}
    stopped = grade_case(chat, [delivery, bye], [0.6, 0.7], agent_stopped={1: True})
    assert not stopped.passed and stopped.false_barge_ins == 1
    outcomes = [Outcome(hours, cut), Outcome(chat, stopped, result=call(CHAT, 10.0))]
    summary = totals(suite(), outcomes)
    assert summary["false_cut_offs"] == 1 and summary["false_barge_ins"] == 1
    assert summary["recognition_p50_s"] == 0.3  # the turns kept: 0.2, 0.3, 0.3
    assert summary["off_topic_right"] == "0/0"
    write_report(tmp_path, suite(), outcomes)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["charts"] == ["latency.png", "timeline.png"]
    for chart in report["charts"]:
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![timeline.png](timeline.png)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "calls" / "chat.wav").stat().st_size == 44 + 10 * SAMPLE_RATE * 4
    assert not (tmp_path / "calls" / "hours.wav").exists()  # no audio: no file


def test_a_run_of_only_some_cases_by_id_or_tag() -> None:
    import pytest

    from switch.eval.command import only_cases
    from switch.eval.errors import EvalError

    tagged = parse_suite(SUITE.replace("    say: what's the weather like",
                                       "    tags: [offtopic]\n    say: what's the weather like"),
                         Path("/suites/t.yaml"))  # fmt: skip
    assert [c.id for c in only_cases(tagged, ["hours", "offtopic"]).cases] == ["hours", "off-topic"]
    assert only_cases(tagged, []) is tagged
    with pytest.raises(EvalError, match="no case"):
        only_cases(tagged, ["nope"])
