"""Overload control on a live node: INVITEs past the admission rate get a stateless
503 with Retry-After, its retransmissions the same bytes, its ACK nothing; the calls
admitted complete; /metrics and /health say what was refused and why.

The adaptive limit (by measured load) is benchmarked past capacity in
loadtest/overload.py; here ``max_cps`` makes the refusals deterministic."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippRunner
from tests.e2e.api_client import ADMIN
from tests.e2e.raw_sip import SDP, RawUdp
from tests.e2e.test_metrics import scrape

MAX_CPS = 2


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    options = NodeOptions(
        media_timeout_s=0, max_call_duration_s=5,
        extra_args=["--agent", "none", "--max-cps", str(MAX_CPS), "--overload-busy", "0"],
        env={"VOXSWITCH_API_KEY": ADMIN},  # for /metrics
    )  # fmt: skip
    return voxswitch_nodes.start("overload", options)


@pytest.fixture
def raw(node: NodeProcess) -> Iterator[RawUdp]:
    sock = RawUdp(node)
    yield sock
    sock.close()


def test_past_max_cps_invites_get_503_and_the_admitted_calls_complete(
    node: NodeProcess, sipp: SippRunner
) -> None:
    time.sleep(3)  # a full bucket
    before = node.health()["refused"].get("max_cps", 0)
    result = sipp(node, "overload_uac.xml", calls=60, rate=30, timeout_s=40)
    assert result.failed_calls == 0 and result.successful_calls == 60
    refused = result.count("4_503_Recv")
    completed = result.count("8_200_Recv")
    assert refused + completed == 60
    # 2 s of offering at 2/s, plus the bucket's first clump of 5: about 9 calls.
    assert 5 <= completed <= 14, (completed, refused)
    assert result.count("1_INVITE_Retrans") == 0
    health = node.health()
    assert health["refused"]["max_cps"] - before == refused
    assert health["admission"]["limit_cps"] == MAX_CPS


def test_a_refused_invites_retransmission_gets_the_same_bytes_and_its_ack_nothing(
    node: NodeProcess, raw: RawUdp
) -> None:
    calls = [(f"z9hG4bK-burst-{i}-{time.monotonic_ns()}", f"burst-{i}-{time.monotonic_ns()}")
             for i in range(12)]  # fmt: skip
    for branch, call_id in calls:
        raw.send(raw.request("INVITE", branch=branch, call_id=call_id, body=SDP))
    refusals = {
        r.call_id: r for r in raw.responses(1.5, until_final=False) if r.status == 503
    }
    assert len(refusals) >= 5  # past the bucket's first clump, at 2/s
    assert all(r.headers.get("retry-after") == "5" for r in refusals.values())
    branch, call_id = next(c for c in reversed(calls) if c[1] in refusals)
    first = refusals[call_id]
    repeats_before = node.health()["sip"]["refusals_repeated"]
    # The caller did not hear the 503: it retransmits, and hears the same answer.
    raw.send(raw.request("INVITE", branch=branch, call_id=call_id, body=SDP))
    [again] = [r for r in raw.responses(1.0) if r.call_id == call_id]
    assert bytes(again) == bytes(first)
    # The ACK of the 503 (same branch, the 503's To tag) is absorbed: no answer.
    tag = first.to.tag
    assert tag
    raw.send(raw.request("ACK", branch=branch, call_id=call_id, to_tag=tag))
    assert raw.responses(1.0, until_final=False) == []
    health = node.health()
    assert health["sip"]["refusals_repeated"] == repeats_before + 1


def test_metrics_show_the_refusals_and_the_limit(node: NodeProcess) -> None:
    m = scrape(node)
    assert m[("voxswitch_calls_refused_total", (("reason", "max_cps"),))] > 0
    assert m[("voxswitch_admission_limit_cps", ())] == MAX_CPS
    assert ("voxswitch_event_loop_busy_ratio", ()) in m
    assert m[("voxswitch_sip_refusals_repeated_total", ())] >= 1
