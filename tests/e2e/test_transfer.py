"""Blind transfer end to end: the demo agent hands the caller to its operator by REFER.

SIPp calls a ``voxswitch serve`` node running the default demo agent (Voxswitch
Pizza) and presses "0" as RFC 4733 telephone-events (SIPp's own capture
dtmf_2833_0.pcap). The agent's ``operator`` intent says its transfer line, then calls
the transfer tool: the node sends an in-dialog REFER (RFC 3515) with ``Refer-To:
<sip:operator@127.0.0.1>`` and ``Referred-By``. The scenarios check those headers
(a mismatch fails the SIPp call) and then:

- transfer_refer.xml: sends a NOTIFY for the implicit subscription (it must get a
  200), accepts with 202, then NOTIFYs the outcome (sipfrag 200); the node ends its
  leg with BYE -> disposition ``transferred``, transfer status 200;
- transfer_target_busy.xml: the same, but the outcome is 486: the node keeps the
  caller (the agent says so) until the caller hangs up -> ``completed``, 486;
- transfer_refused.xml: declines with 603; the node hangs up with BYE ->
  disposition ``transfer_failed``.

Each test also checks the node's call record for the SIPp Call-ID (one DTMF turn,
the transfer line, tool ``transfer``) and that the REFER waited for the transfer line
to be said, then came at once.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, SippRunner
from media.tts import EspeakSynthesizer
from switch.agents import DEMO_AGENT_PATH, ScriptedAgent

pytestmark = pytest.mark.e2e

Record = dict[str, Any]

AGENT = ScriptedAgent.from_file(DEMO_AGENT_PATH)
# The target the scenarios' Refer-To check expects.
OPERATOR_URI = "sip:operator@127.0.0.1"
NODE_WPM = 170  # the node's EspeakSynthesizer default
RATE = 8000
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")  # how the node splits a reply for TTS


def operator_say() -> str:
    """The demo's transfer line, as the node records it; checks the intent first."""
    entry = next((e for e in AGENT.entries if e.id == "operator"), None)
    assert entry is not None, f"no 'operator' intent in {DEMO_AGENT_PATH}"
    assert entry.action == "transfer", entry
    assert dict(entry.arguments).get("target") == OPERATOR_URI, entry
    assert "DTMF: 0" in entry.patterns, entry
    return " ".join(entry.say.split())


def spoken_seconds(text: str) -> float:
    """How long the node plays `text` for: each sentence synthesised on its own."""

    async def run() -> float:
        tts = EspeakSynthesizer(rate_wpm=NODE_WPM)
        total = 0
        for sentence in SENTENCE_END.split(text):
            if sentence.strip():
                total += (await tts.synthesize(sentence.strip())).size
        return total / RATE

    return asyncio.run(run())


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    # A refused REFER ends the call here (the bridge fallback has its own test).
    env = {"VOXSWITCH_TRANSFER_FALLBACK": "hangup"}
    options = NodeOptions(max_call_duration_s=60, media_timeout_s=0, env=env)
    return voxswitch_nodes.start("transfer", options)


@pytest.fixture(scope="module")
def transfer_line() -> tuple[str, float]:
    """The operator intent's line and how long the node takes to say it."""
    say = operator_say()
    return say, spoken_seconds(say)


def call_record(node: NodeProcess, call_id: str, timeout_s: float = 10.0) -> Record | None:
    """The node's record of `call_id` (written when the call has ended), or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r for r in node.records() if r.get("call_id") == call_id]
        if found or time.monotonic() >= deadline:
            return found[-1] if found else None
        time.sleep(0.1)


def press_0(node: NodeProcess, sipp: SippRunner, scenario: str) -> tuple[SippResult, Record, str]:
    """One SIPp call running `scenario`; its result, the node's record, and context."""
    call_id = f"transfer-{uuid.uuid4().hex[:12]}"
    result = sipp(
        node,
        scenario,
        calls=1,
        timeout_s=25,
        trace_msg=True,
        extra_args=["-cid_str", f"{call_id}-%u@%s"],
    )
    call_id = f"{call_id}-1@{node.host}"
    record = call_record(node, call_id)
    context = f"record: {record}\n{result.describe()}\n{node.log_tail()}"
    assert record is not None, f"no record for Call-ID {call_id}\n{context}"
    return result, record, context


def check_transfer_turn(record: Record, say: str, context: str) -> None:
    """One turn: DTMF 0 -> the transfer line, said in full, then the transfer tool."""
    assert record["dtmf"] == "0", context
    turns = record["turns"]
    assert len(turns) == 1, context
    turn = turns[0]
    assert turn["source"] == "dtmf", context
    assert turn["caller"] == "DTMF: 0", context
    assert turn["agent"] == say, context
    assert turn["tools"] == ["transfer"], context
    assert turn["interrupted"] is False, context


def check_refer_timing(result: SippResult, line_s: float, context: str) -> None:
    """The REFER waited for the line to be played out, then went at once.

    SIPp's response time 1 runs from the digit (the pcap's first packet) to the REFER.
    """
    refer_s = result.response_time_ms / 1000
    context = f"REFER {refer_s:.3f} s after the digit; the line lasts {line_s:.3f} s\n{context}"
    assert line_s - 0.1 <= refer_s <= line_s + 2.0, context


def test_dtmf_0_transfers_the_caller_with_refer(
    node: NodeProcess, sipp: SippRunner, transfer_line: tuple[str, float]
) -> None:
    say, line_s = transfer_line
    result, record, context = press_0(node, sipp, "transfer_refer.xml")

    # The scenario got a REFER to the operator with Referred-By, a 200 for its
    # NOTIFY, and a BYE after its 202.
    assert result.returncode == 0, context
    assert result.successful_calls == 1 and result.failed_calls == 0, context
    assert record["disposition"] == "transferred", context
    assert record["reason"] == f"transfer to {OPERATOR_URI}", context
    assert record["sip_code"] == 200 and record["transfer_status"] == 200, context
    check_transfer_turn(record, say, context)
    check_refer_timing(result, line_s, context)


def test_a_busy_transfer_target_leaves_the_caller_with_the_agent(
    node: NodeProcess, sipp: SippRunner, transfer_line: tuple[str, float]
) -> None:
    say, _ = transfer_line
    result, record, context = press_0(node, sipp, "transfer_target_busy.xml")
    # The NOTIFY said 486: no BYE from the node; the caller hung up after 2 s.
    assert result.successful_calls == 1 and result.failed_calls == 0, context
    assert record["disposition"] == "completed", context
    assert record["transfer_status"] == 486, context
    assert record["reason"] == "caller hung up", context
    check_transfer_turn(record, say, context)


def test_refused_refer_ends_the_call_as_transfer_failed(
    node: NodeProcess, sipp: SippRunner, transfer_line: tuple[str, float]
) -> None:
    say, line_s = transfer_line
    result, record, context = press_0(node, sipp, "transfer_refused.xml")

    # The scenario got the REFER, declined it with 603, and then a BYE from the node.
    assert result.returncode == 0, context
    assert result.successful_calls == 1 and result.failed_calls == 0, context
    assert record["disposition"] == "transfer_failed", context
    assert record["reason"] == "REFER answered 603", context
    check_transfer_turn(record, say, context)
    check_refer_timing(result, line_s, context)
