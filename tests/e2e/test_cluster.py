"""Kamailio (deploy/kamailio/kamailio.cfg) in front of two real nodes, driven by SIPp
and a real phone (baresip).

- calls spread over both nodes, each in-dialog request (ACK, BYE) routed back
  through Kamailio by its Record-Route;
- a node SIGKILLed: within the probe interval every new call goes to the survivor,
  and none fails;
- a node draining (SIGTERM with calls up: OPTIONS 503) gets no new calls, while its
  own calls end normally through Kamailio;
- live-call takeover: with Redis, PostgreSQL and Kafka behind them, a node SIGKILLed
  mid-call has its live calls adopted by the survivor within 3 s (a re-INVITE through
  Kamailio moves the caller's media): the phone hears "sorry, one moment" and its next
  question answered, SIPp's BYEs get their 200 from the adopter, and each call has
  one complete record (both nodes named) and one event stream.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import numpy as np
import pytest

from loadtest.baresip import RATE, Baresip, FloatArray, read_wav
from loadtest.kamailio import Kamailio
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, run_sipp
from media.asr import phrase_words
from media.whisper import WhisperModel
from tests.e2e.event_stream import SCHEMA, kafka_events
from tests.e2e.phone_call import ESTABLISHED, TERMINATED, describe_audio, loud_regions
from tests.e2e.test_voice_agent import (
    AGENT,
    CALLER_WPM,
    NODE_WPM,
    Speech,
    answer,
    microphone,
    silence,
)

pytestmark = pytest.mark.e2e

PROBE_S = 1
SCENARIO = "proxied_call.xml"


@pytest.fixture
def cluster(
    voxswitch_nodes: NodeFactory, tmp_path: Path
) -> Iterator[tuple[Kamailio, list[NodeProcess]]]:
    # A drain long enough for the draining test's calls to end by their own BYE.
    env = {"VOXSWITCH_AGENT": "none", "VOXSWITCH_DRAIN_GRACE_S": "30"}
    options = NodeOptions(media_timeout_s=0, env=env)
    nodes = [voxswitch_nodes.start(name, options) for name in ("node-a", "node-b")]
    balancer = Kamailio(
        tmp_path / "kamailio",
        [(node.host, node.sip_port, node.name) for node in nodes],
        probe_s=PROBE_S,
    )
    balancer.check()
    balancer.start()
    try:
        yield balancer, nodes
    finally:
        balancer.stop()


def calls_through(
    balancer: Kamailio, workdir: Path, *, calls: int, rate: float, pause_ms: int
) -> SippResult:
    return run_sipp(
        balancer.sip_address, SCENARIO, workdir=workdir, calls=calls, rate=rate,
        pause_ms=pause_ms, timeout_s=60,
    )  # fmt: skip


def in_background(run: Callable[[], SippResult]) -> tuple[threading.Thread, list[SippResult]]:
    results: list[SippResult] = []
    thread = threading.Thread(target=lambda: results.append(run()), daemon=True)
    thread.start()
    return thread, results


def served(node: NodeProcess) -> list[str]:
    return [str(r["call_id"]) for r in node.records()]


def active_calls(node: NodeProcess) -> int:
    with urllib.request.urlopen(node.health_url, timeout=5) as response:
        return int(json.loads(response.read())["active_calls"])


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_calls_spread_over_both_nodes_and_dialogs_route_back_through_kamailio(
    cluster: tuple[Kamailio, list[NodeProcess]], tmp_path: Path
) -> None:
    balancer, (a, b) = cluster
    result = calls_through(balancer, tmp_path / "sipp", calls=20, rate=10, pause_ms=1500)
    assert result.successful_calls == 20 and result.failed_calls == 0, balancer.log()
    wait_until("20 records", lambda: len(served(a)) + len(served(b)) == 20)
    # Fewest calls in progress first: at 10 calls/s of 1.5 s each, both take half.
    assert 7 <= len(served(a)) <= 13 and 7 <= len(served(b)) <= 13, balancer.routed()
    for record in a.records() + b.records():
        assert record["disposition"] == "completed", record  # the BYE reached the node


def test_a_killed_node_loses_no_call_and_is_out_of_rotation_within_the_probe_interval(
    cluster: tuple[Kamailio, list[NodeProcess]], tmp_path: Path
) -> None:
    balancer, (a, b) = cluster
    warm = calls_through(balancer, tmp_path / "sipp-1", calls=4, rate=20, pause_ms=200)
    assert warm.successful_calls == 4, balancer.log()
    assert b.process is not None
    b.process.kill()  # SIGKILL: no drain, no goodbye
    b.process.wait(5)
    # At once: the calls Kamailio still sends to b time out there (1 s) and go to a.
    during = calls_through(balancer, tmp_path / "sipp-2", calls=10, rate=20, pause_ms=200)
    assert during.successful_calls == 10 and during.failed_calls == 0, balancer.log()
    time.sleep(2 * PROBE_S + 1.5)  # two probes missed (the second's 1 s timeout), a margin
    log_from = len(balancer.log_path.read_text(errors="replace"))
    before = set(served(a))
    result = calls_through(balancer, tmp_path / "sipp-3", calls=20, rate=20, pause_ms=200)
    assert result.successful_calls == 20 and result.failed_calls == 0, balancer.log()
    wait_until("the survivor's records", lambda: len(set(served(a)) - before) == 20)
    after = balancer.log_path.read_text(errors="replace")[log_from:]
    assert after.count(f"new call to sip:{a.host}:{a.sip_port}") == 20, after
    assert "failed" not in after, after  # not one INVITE tried the dead node


def test_a_draining_node_gets_no_new_calls_and_its_own_end_normally(
    cluster: tuple[Kamailio, list[NodeProcess]], tmp_path: Path
) -> None:
    balancer, (a, b) = cluster
    # Four long calls: two land on each node (the least-loaded node first).
    thread, long_calls = in_background(
        lambda: calls_through(balancer, tmp_path / "sipp-long", calls=4, rate=20, pause_ms=8000)
    )
    # All four up before b drains: one still on its way to b would be refused (503)
    # and fail over to a, leaving b one call, not two.
    wait_until("two calls on each node", lambda: active_calls(a) >= 2 and active_calls(b) >= 2)
    assert b.process is not None
    b.process.terminate()  # SIGTERM: b drains, answering OPTIONS with 503
    time.sleep(2 * PROBE_S + 1.0)  # two probes answered 503
    before_a = set(served(a))
    result = calls_through(balancer, tmp_path / "sipp-new", calls=10, rate=20, pause_ms=200)
    assert result.successful_calls == 10 and result.failed_calls == 0, (result, balancer.log())
    wait_until("the new calls' records", lambda: len(set(served(a)) - before_a) >= 10)
    thread.join(60)
    (long_result,) = long_calls
    assert long_result.successful_calls == 4, balancer.log()  # b's calls ended by BYE
    b.process.wait(30)
    b_records = b.records()
    assert len(b_records) == 2 and all(r["disposition"] == "completed" for r in b_records)


# ---- live-call takeover -------------------------------------------------------------

TAKEOVER_SCENARIO = "takeover_call.xml"
RESUME_LINE = "Sorry, one moment."


@pytest.fixture
def backed_cluster(
    voxswitch_nodes: NodeFactory, services: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Kamailio, list[NodeProcess], dict[str, str]]]:
    """Two nodes with the demo agent, sharing Redis, PostgreSQL and Kafka, in a
    cluster of their own (no other test's node may adopt their calls)."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **services,
        "VOXSWITCH_CLUSTER": f"takeover-{tag}",
        "VOXSWITCH_KAFKA_TOPIC": f"voxswitch.takeover.{tag}",
        "VOXSWITCH_TAKEOVER_LINE": RESUME_LINE,
    }
    nodes = []
    for name in ("node-a", "node-b"):
        node_env = {**env, "VOXSWITCH_NODE_ID": f"{name}-{tag}"}
        options = NodeOptions(media_timeout_s=0, max_call_duration_s=120, env=node_env)
        nodes.append(voxswitch_nodes.start(name, options))
    balancer = Kamailio(
        tmp_path / "kamailio",
        [(node.host, node.sip_port, node.name) for node in nodes],
        probe_s=PROBE_S,
    )
    balancer.start()
    try:
        yield balancer, nodes, env
    finally:
        balancer.stop()


def whisper_hears(heard: FloatArray) -> str:
    """What Whisper (no prompt: no hint of the words) hears in the phone's audio."""

    async def run() -> str:
        recognizer = WhisperModel(pool_size=1).recognizer()
        try:
            pcm = np.clip(np.rint(heard), -32768, 32767).astype(np.int16)
            return (await recognizer.transcribe(pcm)).text
        finally:
            await recognizer.aclose()

    return asyncio.run(run())


def node_id(node: NodeProcess) -> str:
    return str(node.health()["node_id"])


def pg_calls(dsn: str, call_ids: list[str]) -> dict[str, dict[str, Any]]:
    async def fetch() -> dict[str, dict[str, Any]]:
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch(
                "SELECT * FROM calls WHERE call_id = ANY($1::text[])", call_ids
            )
            return {r["call_id"]: dict(r) for r in rows}
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_a_killed_nodes_live_calls_are_adopted_and_go_on(
    backed_cluster: tuple[Kamailio, list[NodeProcess], dict[str, str]],
    phones: Callable[..., Baresip],
    tmp_path: Path,
) -> None:
    balancer, nodes, env = backed_cluster
    greeting = Speech.of(AGENT.greeting(), NODE_WPM)
    first_q, second_q = (Speech.of(q, CALLER_WPM) for q in
                         ("what are your opening hours", "do you deliver"))  # fmt: skip
    first_a, second_a = answer("hours"), answer("delivery")
    first_reply = Speech.of(first_a, NODE_WPM)
    # The phone's timeline (seconds after the call is up): the first question after
    # the greeting, its answer; the kill; "sorry, one moment"; the second question.
    ask_1 = greeting.end_s + 1.0
    kill_at = ask_1 + first_q.end_s + 1.2 + first_reply.seconds + 1.0
    ask_2 = kill_at + 6.0
    mic = microphone(silence(ask_1), first_q.pcm,
                     silence(ask_2 - ask_1 - first_q.pcm.size / RATE), second_q.pcm)  # fmt: skip
    phone = phones(microphone=mic)
    phone.dial(f"sip:agent@{balancer.sip_address}")
    up_at = phone.wait_for(ESTABLISHED, timeout_s=5)
    assert up_at is not None, phone.describe()
    began = time.monotonic()
    wait_until("the phone's call on a node", lambda: sum(active_calls(n) for n in nodes) == 1)
    doomed, survivor = nodes if active_calls(nodes[0]) == 1 else nodes[::-1]
    doomed_id, survivor_id = node_id(doomed), node_id(survivor)
    log_from = len(survivor.stderr_text())

    # Calls from SIPp too, on both nodes, up when the kill comes.
    wait_until("the first answer", lambda: "turn 1: agent:" in doomed.stderr_text(),
               timeout_s=kill_at)  # fmt: skip
    thread, sipp_runs = in_background(lambda: run_sipp(
        balancer.sip_address, TAKEOVER_SCENARIO, workdir=tmp_path / "sipp", calls=10,
        rate=20, pause_ms=6000, timeout_s=60,
    ))  # fmt: skip
    wait_until("SIPp's calls on both nodes",
               lambda: active_calls(doomed) >= 4 and active_calls(survivor) >= 4)  # fmt: skip
    time.sleep(max(0.0, kill_at - (time.monotonic() - began)))
    assert doomed.process is not None
    doomed.process.kill()  # SIGKILL mid-call: no drain, no BYE, no record
    killed_at = time.monotonic()
    doomed.process.wait(5)

    adopted = re.compile(r"call (\S+): adopted from " + re.escape(doomed_id))
    wait_until("the adoptions", lambda: "took over" in survivor.stderr_text()[log_from:],
               timeout_s=5)  # fmt: skip
    took_s = time.monotonic() - killed_at
    moved = adopted.findall(survivor.stderr_text()[log_from:])
    assert len(moved) >= 5 and took_s < 3.0, (took_s, moved)  # the phone's + SIPp's

    # The phone: the line, then its second question answered by the survivor.
    wait_until("the second answer", lambda: "turn 2: agent:" in survivor.stderr_text()[log_from:],
               timeout_s=ask_2 + second_q.seconds + 10 - (time.monotonic() - began))  # fmt: skip
    time.sleep(Speech.of(second_a, NODE_WPM).seconds + 1.0)
    phone.command("/hangup")
    assert phone.wait_for(TERMINATED, timeout_s=5) is not None, phone.describe()
    phone.quit()
    heard = read_wav(phone.recording("dec"))
    context = f"{describe_audio(heard)}\n{phone.describe()}\n{survivor.log_tail(60)}"
    # The phone's recording holds what it decoded: the outage (no RTP) is not in it, so
    # what came after the kill sits earlier than its wall time. The first answer had
    # ended a second before the kill; what follows is the line, then the second answer.
    after = [r for r in loud_regions(heard, merge_gap_s=0.6) if r[0] > kill_at - 0.5]
    assert len(after) >= 2, context
    line = heard[round((after[0][0] - 0.2) * RATE) : round((after[0][1] + 0.2) * RATE)]
    said = set(phrase_words(whisper_hears(line)))
    assert {"sorry", "moment"} <= said, (said, context)
    assert after[0][1] - after[0][0] < 2.5, context  # the short line, not a repeated answer

    # Every SIPp call got its BYE's 200: from the adopter for the moved ones.
    thread.join(60)
    (sipp_result,) = sipp_runs
    assert sipp_result.successful_calls == 10 and sipp_result.failed_calls == 0, (
        sipp_result.describe(), balancer.log())

    # One record per call, written by the node that had it at the end.
    records: dict[str, dict[str, Any]] = {str(r["call_id"]): r for r in survivor.records()}
    assert set(moved) <= set(records)
    assert not any(r["call_id"] in moved for r in doomed.records())
    phone_call = next(r for r in records.values() if r["from_uri"].startswith("sip:baresip@"))
    assert phone_call["call_id"] in moved, context
    assert phone_call["nodes"] == [doomed_id, survivor_id] and phone_call["node_id"] == survivor_id
    assert phone_call["disposition"] == "completed", phone_call
    turns = [(t["index"], t["caller"], t["agent"]) for t in phone_call["turns"]]
    assert turns == [(1, "what are your opening hours", first_a),
                     (2, "do you deliver", second_a)], (turns, context)  # fmt: skip
    for call_id in moved:
        assert records[call_id]["nodes"] == [doomed_id, survivor_id]
        assert records[call_id]["disposition"] == "completed", records[call_id]

    # PostgreSQL and Kafka: the same story, once per call.
    call_ids = sorted(records)
    dsn = env["VOXSWITCH_POSTGRES_DSN"]

    def ended_rows() -> dict[str, dict[str, Any]]:
        rows = pg_calls(dsn, call_ids)
        return rows if all(r["ended_at"] for r in rows.values()) else {}

    wait_until("the rows", lambda: len(ended_rows()) == len(call_ids), timeout_s=15)
    for call_id, row in ended_rows().items():
        assert row["disposition"] == "completed", row
        want = [doomed_id, survivor_id] if call_id in moved else [survivor_id]
        assert json.loads(row["nodes"]) == want and row["node_id"] == survivor_id, row
    events = kafka_events(env["VOXSWITCH_KAFKA_BOOTSTRAP"], env["VOXSWITCH_KAFKA_TOPIC"],
                          expect=4 * len(call_ids))  # fmt: skip
    unique = {e["event_id"]: e for _, e in events}.values()
    for event in unique:
        jsonschema.validate(event, SCHEMA)
    for call_id in call_ids:
        kinds = [e["type"] for e in unique if e["call_id"] == call_id]
        assert kinds.count("call.ended") == 1 and kinds.count("call.offered") == 1, kinds
        assert kinds.count("call.adopted") == (call_id in moved), kinds
    adoption = next(e for e in unique if e["type"] == "call.adopted"
                    and e["call_id"] == phone_call["call_id"])  # fmt: skip
    assert adoption["from_node"] == doomed_id and adoption["node_id"] == survivor_id
    assert 0 <= adoption["rebind_s"] < 1.0  # uvloop's clock counts whole milliseconds


def test_a_draining_node_hands_its_calls_over_when_its_grace_runs_out(
    backed_cluster: tuple[Kamailio, list[NodeProcess], dict[str, str]], tmp_path: Path
) -> None:
    balancer, (a, b), _ = backed_cluster
    thread, runs = in_background(lambda: run_sipp(
        balancer.sip_address, TAKEOVER_SCENARIO, workdir=tmp_path / "sipp", calls=8, rate=20,
        pause_ms=6000, timeout_s=60,
    ))  # fmt: skip
    wait_until("calls on both nodes", lambda: active_calls(a) >= 3 and active_calls(b) >= 3)
    had = active_calls(b)
    assert b.process is not None
    b.process.terminate()  # SIGTERM: drain; the test nodes' grace is 2 s, the calls last longer
    assert b.process.wait(30) == 0
    assert f"handed {had} calls over to {node_id(a)}" in b.stderr_text(), b.log_tail()
    thread.join(60)
    (result,) = runs
    assert result.successful_calls == 8 and result.failed_calls == 0, result.describe()
    b_id = f"node-b-{node_id(a).removeprefix('node-a-')}"
    moved = [r for r in a.records() if r["nodes"] == [b_id, node_id(a)]]
    assert len(moved) == had and all(r["disposition"] == "completed" for r in moved), moved
    assert b.records() == []  # not one record (nor a BYE) from the node that left
