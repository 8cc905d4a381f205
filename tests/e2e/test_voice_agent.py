"""The voice agent end to end: a real phone talks to the demo agent on a real node.

baresip (headless, as in test_baresip.py) calls a ``voxswitch serve`` node running the
default demo agent (Voxswitch Pizza: pocketsphinx with an in-domain LM, espeak-ng).
The phone's microphone is a WAV we build from espeak-ng speech and silence, at known
times; ``dump-*-dec.wav`` is what the phone heard. Each test checks the node's call
record (turns, latencies, barge-ins, DTMF, disposition) and, where it matters, the
audio the phone heard: the answer is transcribed back, the greeting's cut (or not)
is found by level.

- a question after the greeting gets the knowledge-base answer, quickly;
- talking over the greeting stops it within 100 ms, and the question is answered;
- a short noise over the greeting holds it briefly, then the greeting goes on;
- "goodbye" makes the agent say goodbye and hang up;
- DTMF (SIPp): RFC 2833 telephone-events and SIP INFO digits reach the agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from loadtest.baresip import RATE, Baresip, FloatArray
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippRunner
from media.asr import PocketSphinxRecognizer, phrase_words
from media.tts import EspeakSynthesizer
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
from tests.e2e.phone_call import (
    TERMINATED,
    PhoneCall,
    Record,
    describe_audio,
    loud_regions,
)

pytestmark = pytest.mark.e2e

Pcm = npt.NDArray[np.int16]

NODE_WPM = 170  # the node's EspeakSynthesizer default
CALLER_WPM = 150
MIC_S = 40.0  # the mic file outlasts every call (baresip ends the call at its end)
GREETING_GAP_S = 0.6  # gaps inside one spoken text (espeak's pauses: up to ~0.35 s)


AGENT = ScriptedAgent.from_file(DEMO_AGENT_PATH)


def answer(entry_id: str) -> str:
    """The text a knowledge entry or intent says, as the node records it."""
    for entry in AGENT.entries:
        if entry.id == entry_id:
            return " ".join(entry.say.split())
    raise KeyError(entry_id)


# ---- audio -----------------------------------------------------------------------


def synthesize(text: str, wpm: int) -> Pcm:
    return asyncio.run(EspeakSynthesizer(rate_wpm=wpm).synthesize(text))


def silence(seconds: float) -> Pcm:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def microphone(*parts: Pcm) -> Pcm:
    """The parts one after the other, padded with silence to MIC_S."""
    pcm = np.concatenate(parts)
    return np.concatenate([pcm, silence(max(0.0, MIC_S - pcm.size / RATE))])


def transcribe(pcm: FloatArray, extra_phrases: list[str]) -> str:
    """What pocketsphinx hears in `pcm`, with the demo agent's LM plus `extra_phrases`."""

    async def run() -> str:
        recognizer = PocketSphinxRecognizer([*AGENT.phrases(), *extra_phrases], pool_size=1)
        try:
            samples = np.clip(np.rint(pcm), -32768, 32767).astype(np.int16)
            return (await recognizer.transcribe(samples)).text
        finally:
            await recognizer.aclose()

    return asyncio.run(run())


@dataclass(frozen=True)
class Speech:
    pcm: Pcm
    onset_s: float  # first loud frame
    end_s: float  # end of the last loud frame

    @classmethod
    def of(cls, text: str, wpm: int) -> Speech:
        return cls.from_pcm(synthesize(text, wpm))

    @classmethod
    def from_pcm(cls, pcm: Pcm) -> Speech:
        found = loud_regions(pcm, merge_gap_s=1.0)
        assert found, "espeak said nothing"
        return cls(pcm, found[0][0], found[-1][1])

    @property
    def seconds(self) -> float:
        return self.end_s - self.onset_s


@pytest.fixture(scope="module")
def greeting() -> Speech:
    """The greeting as the node says it (same engine, same rate)."""
    return Speech.of(AGENT.greeting(), NODE_WPM)


# ---- baresip ---------------------------------------------------------------------


# ---- the node --------------------------------------------------------------------


@pytest.fixture(scope="module", params=[0, 1], ids=["in-loop", "media-worker"])
def node(voxswitch_nodes: NodeFactory, request: pytest.FixtureRequest) -> NodeProcess:
    """Every voice test runs against a node whose calls' media runs on its own loop,
    and against one whose media runs in a worker process (``media_workers``)."""
    workers = request.param
    options = NodeOptions(
        max_call_duration_s=60,
        media_timeout_s=0,
        env={"VOXSWITCH_MEDIA_WORKERS": str(workers)},
    )
    return voxswitch_nodes.start(f"voice-w{workers}", options)


def speech_turns(record: Record) -> list[dict[str, Any]]:
    return [t for t in record["turns"] if t["source"] == "speech"]


# ---- tests -----------------------------------------------------------------------


def test_caller_question_gets_the_knowledge_base_answer(
    node: NodeProcess, phones: Callable[..., Baresip], greeting: Speech
) -> None:
    question = Speech.of("what are your opening hours", CALLER_WPM)
    expected = answer("hours")
    reply = Speech.of(expected, NODE_WPM)
    lead = greeting.end_s + 1.0
    phone = phones(microphone=microphone(silence(lead), question.pcm))
    call = PhoneCall(node, phone)
    call.dial()
    said = call.wait_log(r"turn 1: agent: ", timeout_s=lead + question.seconds + 8)
    assert said is not None, f"no turn within the wait\n{call.context()}"
    time.sleep(reply.seconds + 1.0)  # the phone hears the whole answer
    call.hang_up()
    heard = call.heard()
    context = f"{describe_audio(heard)}\n{call.context()}"
    record = call.record()
    context = f"record: {record}\n{context}"

    assert record["disposition"] == "completed", context
    turns = speech_turns(record)
    assert len(turns) == 1, context
    turn = turns[0]
    assert turn["agent"] == expected, context
    assert turn["interrupted"] is False, context
    assert turn["tools"] == [], context
    assert 0.0 < turn["latency_s"] <= 2.0, context
    assert 0.0 < turn["processing_s"] < 1.0, context
    assert record["barge_ins"] == [], context

    # What the phone heard after the question: the answer, recognisable.
    question_end = lead + question.end_s
    after = heard[round(question_end * RATE) :]
    spoken = loud_regions(after, merge_gap_s=GREETING_GAP_S)
    assert spoken, f"the phone heard nothing after the question\n{context}"
    # About the answer's length (the phone hung up after it).
    assert spoken[0][1] - spoken[0][0] >= 0.8 * reply.seconds, context
    text = transcribe(after, [expected])
    words = {"open", "every", "day", "midnight", "fridays", "saturdays"}
    got = words & set(phrase_words(text))
    assert len(got) >= 2, f"the answer as recognised: {text!r}\n{context}"


def test_talking_over_the_greeting_stops_it_within_100_ms(
    node: NodeProcess, phones: Callable[..., Baresip], greeting: Speech
) -> None:
    question = Speech.of("where are you located", CALLER_WPM)
    expected = answer("address")
    reply = Speech.of(expected, NODE_WPM)
    lead = 1.5
    phone = phones(microphone=microphone(silence(lead), question.pcm))
    call = PhoneCall(node, phone)
    call.dial()
    said = call.wait_log(r"turn 1: agent: ", timeout_s=lead + question.seconds + 8)
    assert said is not None, f"no turn within the wait\n{call.context()}"
    time.sleep(reply.seconds + 1.0)
    call.hang_up()
    heard = call.heard()
    context = f"{describe_audio(heard)}\n{call.context()}"
    record = call.record()
    context = f"record: {record}\n{context}"

    barge_ins = record["barge_ins"]
    assert len(barge_ins) == 1, context
    assert 0 <= barge_ins[0]["held_ms"] < 100, context
    turns = speech_turns(record)
    assert len(turns) == 1, context
    assert turns[0]["agent"] == expected, context
    assert turns[0]["interrupted"] is False, context

    # The greeting from the start, cut right after the caller's onset; then the answer.
    onset = lead + question.onset_s
    spoken = loud_regions(heard, merge_gap_s=GREETING_GAP_S)
    assert len(spoken) >= 2, context
    first, second = spoken[0], spoken[1]
    assert first[0] <= 0.3, f"greeting starts at {first[0]:.2f} s\n{context}"
    assert first[1] <= onset + 0.3, (
        f"greeting heard until {first[1]:.2f} s; the caller spoke at {onset:.2f} s\n{context}"
    )
    assert first[1] < greeting.end_s - 5.0, context
    # The answer comes after the caller's question, not the greeting's rest resumed.
    assert second[0] >= lead + question.end_s, context
    assert second[1] - second[0] >= 0.8 * reply.seconds, context


def test_short_noise_over_the_greeting_does_not_interrupt(
    node: NodeProcess, phones: Callable[..., Baresip], greeting: Speech
) -> None:
    uh = Speech.of("uh", CALLER_WPM)
    start = round(uh.onset_s * RATE)
    noise = uh.pcm[start : start + round(0.15 * RATE)]
    lead = 1.5
    phone = phones(microphone=microphone(silence(lead), noise))
    call = PhoneCall(node, phone)
    call.dial()
    time.sleep(greeting.end_s + 2.0)  # the whole greeting, and a moment after it
    call.hang_up()
    heard = call.heard()
    context = f"{describe_audio(heard)}\n{call.context()}"
    record = call.record()
    context = f"record: {record}\n{context}"

    # The noise was no turn: nothing recognised, nothing answered, nothing interrupted.
    assert record["turns"] == [], context
    assert record["disposition"] == "completed", context
    # The node heard it: playout held at once (it cannot tell a noise from a barge-in
    # yet), then resumed, since the sound was shorter than barge_in_min_ms.
    assert len(record["barge_ins"]) == 1, context
    assert 0 <= record["barge_ins"][0]["held_ms"] < 100, context
    # The whole greeting in one stretch, the short hold the only extra gap.
    spoken = loud_regions(heard, merge_gap_s=GREETING_GAP_S)
    assert spoken, context
    first = spoken[0]
    assert first[0] <= 0.3, f"greeting starts at {first[0]:.2f} s\n{context}"
    assert first[1] - first[0] >= 0.8 * greeting.seconds, context
    # Nothing of it dropped: it ends when it would have, plus the hold (< 0.6 s).
    assert greeting.end_s - 0.2 <= first[1] <= greeting.end_s + GREETING_GAP_S, context
    # Nothing after the greeting: no fallback, no answer.
    assert len(spoken) == 1, context


def test_goodbye_ends_the_call_from_the_agent(
    node: NodeProcess, phones: Callable[..., Baresip], greeting: Speech
) -> None:
    bye = Speech.of("goodbye", CALLER_WPM)
    farewell = Speech.of(AGENT.goodbye, NODE_WPM)
    lead = greeting.end_s + 1.0
    phone = phones(microphone=microphone(silence(lead), bye.pcm))
    call = PhoneCall(node, phone)
    established = call.dial()
    # The node says goodbye, then sends BYE: baresip reports the call closed.
    wait = lead + bye.seconds + farewell.seconds + 8
    ended = phone.wait_for(TERMINATED, timeout_s=wait)
    assert ended is not None, f"the node did not hang up\n{call.context()}"
    hung_up_after = ended - established
    heard = call.heard()
    context = f"{describe_audio(heard)}\n{call.context()}"
    record = call.record()
    context = f"record: {record}\n{context}"

    assert record["disposition"] == "agent_hangup", context
    turns = speech_turns(record)
    assert len(turns) == 1, context
    assert turns[0]["tools"] == ["hang_up"], context
    assert turns[0]["agent"] == " ".join(AGENT.goodbye.split()), context
    assert turns[0]["interrupted"] is False, context
    # The BYE came from the node, after the goodbye was said in full.
    from_node = [m.method for m in phone.sip_trace() if m.source == node.sip_address]
    assert "BYE" in from_node, f"{from_node}\n{context}"
    assert hung_up_after >= lead + bye.end_s + farewell.seconds, context
    spoken = loud_regions(heard[round((lead + bye.end_s) * RATE) :], GREETING_GAP_S)
    assert spoken and spoken[0][1] - spoken[0][0] >= 0.8 * farewell.seconds, context


def test_dtmf_rfc2833_and_sip_info_reach_the_agent(node: NodeProcess, sipp: SippRunner) -> None:
    hours = Speech.of(answer("hours"), NODE_WPM)
    before = len(node.records())
    # dtmf_rfc2833.xml: "1" as telephone-events (pcap), pause -d, "2" as SIP INFO.
    pause_ms = round(1000 * (hours.seconds + 1.5))
    result = sipp(node, "dtmf_rfc2833.xml", calls=1, pause_ms=pause_ms, timeout_s=40)
    assert result.returncode == 0, result.describe()
    assert result.successful_calls == 1, result.describe()
    deadline = time.monotonic() + 10
    while len(node.records()) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    new = node.records()[before:]
    assert len(new) == 1, f"records: {new}\n{node.log_tail()}"
    record: Record = new[0]
    context = f"record: {record}\n{result.describe()}\n{node.log_tail()}"

    assert record["disposition"] == "completed", context
    assert record["dtmf"] == "12", context
    turns = record["turns"]
    assert [t["source"] for t in turns] == ["dtmf", "dtmf"], context
    assert [t["caller"] for t in turns] == ["DTMF: 1", "DTMF: 2"], context
    # pcap: event 1 over RTP -> the "hours" entry; INFO Signal=2 -> "address".
    assert turns[0]["agent"] == answer("hours"), context
    assert turns[1]["agent"] == answer("address"), context
    assert turns[0]["interrupted"] is False and turns[1]["interrupted"] is False, context
    for turn in turns:
        assert 0.0 <= turn["latency_s"] < 1.0, context
