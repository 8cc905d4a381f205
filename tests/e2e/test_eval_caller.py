"""The eval caller end to end: real SIP calls from ``switch.eval.caller``.

- against a ``voxswitch serve`` node running the demo agent: the caller hears the
  greeting, asks a question (espeak-ng, the project's TTS), hears the answer; the
  node's call record (``/v1/calls/{call_id}``) shows the turn, and the latency the
  caller measured by ear agrees with the node's own;
- a barge-in: the caller talks over the greeting, hears it stop;
- against SIPp as the callee (``-sn uas -rtp_echo``): three calls at once are
  answered and hung up cleanly, and the echo comes back sample-aligned.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from media.speech import Pcm
from media.tts import EspeakSynthesizer
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent
from switch.eval.caller import place_call
from switch.eval.result import CallResult
from switch.eval.script import (
    CallScript,
    Hangup,
    Say,
    Wait,
    WaitAgentSilence,
    WaitAgentSpeech,
)
from switch.eval.timeline import SIP
from tests.e2e.api_client import ADMIN, api
from tests.e2e.conftest import SippServerFactory

pytestmark = pytest.mark.e2e

AGENT = ScriptedAgent.from_file(DEMO_AGENT_PATH)
CALLER_WPM = 150


def answer(entry_id: str) -> str:
    for entry in AGENT.entries:
        if entry.id == entry_id:
            return " ".join(entry.say.split())
    raise KeyError(entry_id)


async def speak(text: str) -> Pcm:
    return await EspeakSynthesizer(rate_wpm=CALLER_WPM).synthesize(text)


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    options = NodeOptions(
        max_call_duration_s=60, media_timeout_s=0, env={"VOXSWITCH_API_KEY": ADMIN}
    )
    return voxswitch_nodes.start("eval-caller", options)


def target(node: NodeProcess) -> str:
    return f"sip:agent@{node.host}:{node.sip_port}"


async def ended_call(node: NodeProcess, call_id: str, timeout_s: float = 8.0) -> dict[str, Any]:
    """The node's view of the call once it has ended (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = api(node, "GET", f"/v1/calls/{call_id}")
        if status == 200 and body.get("state") == "ended":
            return dict(body)
        assert time.monotonic() < deadline, f"call {call_id} not ended: {status} {body}"
        await asyncio.sleep(0.2)


async def written_record(node: NodeProcess, call_id: str, timeout_s: float = 8.0) -> dict[str, Any]:
    """The call's record as the node wrote it (its records file), bounded wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        for record in node.records():
            if record.get("call_id") == call_id:
                return dict(record)
        assert time.monotonic() < deadline, f"no record for {call_id}\n{node.log_tail()}"
        await asyncio.sleep(0.2)


def describe(result: CallResult) -> str:
    lines = [f"{k}: {v}" for k, v in result.summary().items() if k != "timeline"]
    lines += [f"  {e.at_s:7.3f} {e.kind} {e.detail}" for e in result.timeline]
    return "\n".join(lines)


async def test_caller_hears_the_greeting_asks_and_hears_the_answer(node: NodeProcess) -> None:
    question = await speak("what are your opening hours")
    script = CallScript([
        WaitAgentSpeech(timeout_s=5),  # the greeting
        WaitAgentSilence(silence_ms=700, timeout_s=15),
        Say(question, "hours"),
        WaitAgentSpeech(timeout_s=6),  # the answer
        WaitAgentSilence(silence_ms=700, timeout_s=15),
        Hangup(),
    ])  # fmt: skip
    result = await place_call(target(node), script, max_call_s=40)
    context = describe(result)
    record = await ended_call(node, result.call_id)
    context = f"{context}\nnode: {record}\n{node.log_tail()}"

    assert result.answered and result.error is None, context
    assert result.sip_codes[-1] == 200 and result.hangup_by == "caller", context
    assert result.end_reason == "script" and result.steps_run == 6, context
    assert not result.events("wait_timed_out"), context
    assert "< 200 (BYE)" in [e.detail for e in result.events(SIP)], context
    # Both directions, aligned, as long as the call.
    assert len(result.sent) == len(result.received) == round(result.duration_s * 8000)
    agent = result.speech("agent")
    assert len(agent) >= 2 and agent[0][0] < 1.0, context  # the greeting came at once
    (reply,) = result.reply_latencies()
    assert reply.latency_s is not None and 0.0 < reply.latency_s < 2.5, context

    assert record["disposition"] == "completed", context
    turns = [t for t in record["turns"] if t["source"] == "speech"]
    assert len(turns) == 1 and turns[0]["agent"] == answer("hours"), context
    assert turns[0]["interrupted"] is False, context
    # The caller's ear and the node agree on the turn's latency (the node counts from
    # its VAD's end of speech to its first frame out; the caller from the end of its
    # voice to the first voice it heard back).
    assert abs(reply.latency_s - turns[0]["latency_s"]) < 0.2, context


async def test_caller_barges_in_and_hears_the_greeting_stop(node: NodeProcess) -> None:
    question = await speak("where are you located")
    script = CallScript([
        WaitAgentSpeech(timeout_s=5),
        Wait(1500),  # 1.5 s into the greeting (counted from its onset)
        Say(question, "address"),
        WaitAgentSpeech(timeout_s=6),
        Wait(1000),
        Hangup(),
    ])  # fmt: skip
    result = await place_call(target(node), script, max_call_s=30)
    context = describe(result)
    record = await ended_call(node, result.call_id)
    context = f"{context}\nnode: {record}\n{node.log_tail()}"

    assert result.answered and result.end_reason == "script", context
    greeting_onset = result.speech("agent")[0][0]
    (say_start,) = [e.at_s for e in result.events("say_start")]
    assert say_start == pytest.approx(greeting_onset + 1.5, abs=0.001), context
    (over,) = result.talk_overs()
    assert over.stopped_after_s is not None and over.stopped_after_s < 0.4, context
    (reply,) = result.reply_latencies()
    assert reply.latency_s is not None and reply.latency_s < 2.5, context
    written = await written_record(node, result.call_id)
    assert len(written["barge_ins"]) == 1, f"{written}\n{context}"
    turns = [t for t in record["turns"] if t["source"] == "speech"]
    assert len(turns) == 1 and turns[0]["agent"] == answer("address"), context


async def test_calls_at_once_to_a_sipp_uas_with_rtp_echo(sipp_server: SippServerFactory) -> None:
    calls = 3
    server = sipp_server("uas", calls=calls, timeout_s=20, extra_args=["-rtp_echo"])
    await asyncio.sleep(0.3)  # SIPp binds its port
    # Noise has one correlation peak: where the echo lies is unambiguous.
    sound = np.random.default_rng(7).normal(0, 3000, 8000).astype(np.int16)
    script = CallScript([Wait(200), Say(sound, "noise"), Wait(400), Hangup()])
    results = await asyncio.gather(
        *(place_call(f"sip:service@{server.address}", script, max_call_s=10) for _ in range(calls))
    )
    sipp = await asyncio.to_thread(server.wait, 15)
    context = "\n\n".join(describe(r) for r in results) + f"\n{sipp.describe()}"

    assert len({r.call_id for r in results}) == calls, context
    for result in results:
        assert result.answered and result.error is None, context
        assert result.sip_codes[-1] == 200 and result.hangup_by == "caller", context
        assert "< 200 (BYE)" in [e.detail for e in result.events(SIP)], context
        assert result.codec == "PCMU" and result.rtp.sent == round(result.duration_s * 50)
        # The echo comes back where it was sent, give or take the loopback's delay.
        sent = result.sent[1600:9600].astype(np.float64)  # the noise, 0.2-1.2 s
        heard = result.received.astype(np.float64)
        match = [np.dot(heard[1600 + lag : 9600 + lag], sent) for lag in range(-400, 400)]
        lag_samples = int(np.argmax(match)) - 400
        # Within one packet time (20 ms): a loaded CI machine measured exactly 10 ms once.
        assert 0 <= lag_samples < 160, f"echo lag {lag_samples} samples\n{context}"
    assert sipp.returncode == 0 and sipp.successful_calls == calls, context
