"""Campaigns against SIPp callees: pace, concurrency cap, retry policy, control."""

from __future__ import annotations

import time
from typing import Any

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippServer, received_times
from tests.e2e.api_client import ADMIN, api
from tests.e2e.conftest import SippServerFactory
from tests.e2e.polling import wait_for


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory) -> NodeProcess:
    trunks = tmp_path_factory.mktemp("trunks") / "trunks.json"
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUNKS_FILE": str(trunks),
           "VOXSWITCH_AGENT": "none"}  # fmt: skip
    options = NodeOptions(media_timeout_s=0, rtp_port_count=400, env=env)
    return voxswitch_nodes.start("campaigns", options)


def route(node: NodeProcess, name: str, prefix: str, server: SippServer) -> None:
    body = {"host": "127.0.0.1", "port": server.port, "options_interval_s": 0}
    assert api(node, "PUT", f"/v1/trunks/{name}", body=body)[0] == 200
    body = {"prefix": prefix, "trunks": [name]}
    assert api(node, "PUT", f"/v1/routes/outbound/{name}", body=body)[0] == 200


def start(node: NodeProcess, numbers: list[str], **body: Any) -> str:
    payload = {"numbers": [{"to": n, "variables": {"i": i}} for i, n in enumerate(numbers)],
               "from": "+15550001111", "agent": "none", **body}  # fmt: skip
    status, answer = api(node, "POST", "/v1/campaigns", body=payload)
    assert status == 201, answer
    return str(answer["campaign_id"])


def finished(node: NodeProcess, campaign_id: str, timeout_s: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, view = api(node, "GET", f"/v1/campaigns/{campaign_id}?results=true")
        assert status == 200, view
        return view if view["state"] in ("completed", "canceled") else None

    return wait_for(f"campaign {campaign_id} to finish", done, timeout_s)


def test_paced_within_ten_percent_and_busy_never_retried(
    node: NodeProcess, sipp_server: SippServerFactory
) -> None:
    answering = sipp_server("uas_answer_hangup.xml", calls=80, timeout_s=60, trace_msg=True)
    busy = sipp_server("uas_busy.xml", calls=20, timeout_s=60, trace_msg=True)
    route(node, "answers", "+1555100", answering)
    route(node, "busy", "+1555200", busy)
    numbers = [f"+1555100{i:04d}" for i in range(80)] + [f"+1555200{i:04d}" for i in range(20)]
    numbers = numbers[::2] + numbers[1::2]  # busy ones spread over the run
    campaign_id = start(node, numbers, cps=20, max_concurrent=60,
                        retry={"max_attempts": 3, "backoff_s": 0.5})  # fmt: skip
    view = finished(node, campaign_id, 60)
    assert view["state"] == "completed"
    assert view["dispositions"] == {"completed": 80, "busy": 20}, view["dispositions"]
    for result in view["results"]:
        if result["to"].startswith("+1555200"):
            assert result["attempts"] == 1 and result["sip_code"] == 486, result
        else:
            assert result["attempts"] == 1 and result["sip_code"] == 200, result
    assert answering.wait(timeout_s=30).successful_calls == 80
    assert busy.wait(timeout_s=30).successful_calls == 20
    invites = sorted(received_times(answering.messages_log, "INVITE")
                     + received_times(busy.messages_log, "INVITE"))  # fmt: skip
    assert len(invites) == 100  # every number once: no retry of a 486
    rate = (len(invites) - 1) / (invites[-1] - invites[0])
    print(f"campaign paced at {rate:.3f} calls/s (asked 20)")
    assert 18.0 <= rate <= 22.0, f"paced at {rate:.2f} calls/s, asked for 20"


def test_concurrency_cap_holds(node: NodeProcess, sipp_server: SippServerFactory) -> None:
    answering = sipp_server("uas_answer_hangup.xml", calls=9, timeout_s=60)
    route(node, "capped", "+1555300", answering)
    numbers = [f"+1555300{i:04d}" for i in range(9)]
    campaign_id = start(node, numbers, cps=50, max_concurrent=3)
    view = finished(node, campaign_id, 40)
    assert view["state"] == "completed" and view["done"] == 9
    assert view["max_concurrent_seen"] == 3
    call_ids = {c for r in view["results"] for c in r["call_ids"]}
    records = wait_for("the campaign's records", lambda: (
        rs if len(rs := [r for r in node.records() if r["call_id"] in call_ids]) == 9 else None
    ))  # fmt: skip
    assert all(r["campaign_id"] == campaign_id for r in records)
    assert max_overlap(records) <= 3  # from the records' own times
    assert answering.wait(timeout_s=30).successful_calls == 9


def max_overlap(records: list[dict[str, Any]]) -> int:
    edges = sorted([(float(r["offered_at"]), 1) for r in records]  # type: ignore[arg-type]
                   + [(float(r["ended_at"]), -1) for r in records])  # type: ignore[arg-type]  # fmt: skip
    best = live = 0
    for _, step in edges:
        live += step
        best = max(best, live)
    return best


def test_no_answer_retried_with_backoff(node: NodeProcess, sipp_server: SippServerFactory) -> None:
    ringing = sipp_server("uas_ring.xml", calls=4, timeout_s=60, trace_msg=True)
    route(node, "noanswer", "+1555400", ringing)
    campaign_id = start(node, ["+15554000001", "+15554000002"], cps=5, max_concurrent=5,
                        ring_timeout_s=1, retry={"max_attempts": 2, "backoff_s": 1})  # fmt: skip
    view = finished(node, campaign_id, 40)
    for result in view["results"]:
        assert result["attempts"] == 2 and result["disposition"] == "no_answer", result
        assert len(result["call_ids"]) == 2
    assert ringing.wait(timeout_s=30).successful_calls == 4
    invites = received_times(ringing.messages_log, "INVITE")
    assert len(invites) == 4
    # The retry waits out its backoff after the first attempt's ring timeout.
    assert invites[2] - invites[0] >= 1.0 + 1.0 - 0.1


def test_pause_resume_cancel(node: NodeProcess, sipp_server: SippServerFactory) -> None:
    answering = sipp_server("uas_answer_hangup.xml", calls=20, timeout_s=60)
    route(node, "steered", "+1555500", answering)
    numbers = [f"+1555500{i:04d}" for i in range(20)]
    campaign_id = start(node, numbers, cps=4, max_concurrent=20)
    wait_for("two calls started", lambda: api(
        node, "GET", f"/v1/campaigns/{campaign_id}")[1]["calls_started"] >= 2)  # fmt: skip
    status, view = api(node, "POST", f"/v1/campaigns/{campaign_id}/pause")
    assert status == 200 and view["state"] == "paused"
    started = view["calls_started"]
    time.sleep(1.5)
    assert api(node, "GET", f"/v1/campaigns/{campaign_id}")[1]["calls_started"] == started
    assert api(node, "POST", f"/v1/campaigns/{campaign_id}/resume")[1]["state"] == "running"
    wait_for("more calls", lambda: api(
        node, "GET", f"/v1/campaigns/{campaign_id}")[1]["calls_started"] > started)  # fmt: skip
    status, view = api(node, "POST", f"/v1/campaigns/{campaign_id}/cancel")
    assert status == 200 and view["state"] == "canceled"
    assert api(node, "POST", f"/v1/campaigns/{campaign_id}/resume")[0] == 409
    view = api(node, "GET", f"/v1/campaigns/{campaign_id}?results=true")[1]
    not_dialed = [r for r in view["results"] if r["disposition"] == "not_dialed"]
    assert not_dialed and all(r["attempts"] == 0 for r in not_dialed)
    assert view["calls_started"] + len(not_dialed) == 20
    answering.stop()


def test_bad_campaigns_name_the_field(node: NodeProcess) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"numbers": []}, "numbers"),
        ({"numbers": [{"to": "12"}]}, "to"),
        ({"numbers": [{"to": "+15551234567"}], "cps": 0}, "cps"),
        ({"numbers": [{"to": "+15551234567"}], "retry": {"retry_on": [486]}}, "retry_on"),
        ({"numbers": [{"to": "+15551234567"}], "window": {"start": "25:00", "end": "10:00"}},
         "start"),
        ({"numbers": [{"to": "+15551234567"}], "trunk": "nope"}, "trunk"),
    ]  # fmt: skip
    for body, field in cases:
        status, answer = api(node, "POST", "/v1/campaigns", body=body)
        assert status == 422, (body, answer)
        assert any(field in e["loc"] for e in answer["detail"]), (body, answer)
    assert api(node, "GET", "/v1/campaigns/nope")[0] == 404


def test_a_campaign_goes_on_after_the_node_is_killed(
    voxswitch_nodes: NodeFactory, sipp_server: SippServerFactory, tmp_path: Any
) -> None:
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_AGENT": "none",
           "VOXSWITCH_TRUNKS_FILE": str(tmp_path / "trunks.json"),
           "VOXSWITCH_CAMPAIGNS_FILE": str(tmp_path / "campaigns.jsonl")}  # fmt: skip
    options = NodeOptions(media_timeout_s=0, env=env)
    first = voxswitch_nodes.start("journal-1", options)
    callees = sipp_server("uas_answer_hangup.xml", calls=1000, timeout_s=90)
    route(first, "kept", "+1555600", callees)
    numbers = [f"+1555600{i:04d}" for i in range(8)]
    campaign_id = start(first, numbers, cps=2, max_concurrent=8,
                        retry={"max_attempts": 2, "backoff_s": 0.5})  # fmt: skip
    wait_for("three calls started", lambda: api(
        first, "GET", f"/v1/campaigns/{campaign_id}")[1]["calls_started"] >= 3)  # fmt: skip
    assert first.process is not None
    first.process.kill()  # no drain, no goodbye: the journal is all there is
    first.process.wait(10)
    second = voxswitch_nodes.start("journal-2", options)
    view = finished(second, campaign_id, 60)
    assert view["state"] == "completed" and view["done"] == 8, view
    results = view["results"]
    assert all(r["disposition"] == "completed" for r in results), results
    cut = [r for r in results if len(r["call_ids"]) == 2]
    assert cut and all(r["attempts"] == 2 for r in cut)  # the call the kill cut, again
    assert sum(r["attempts"] for r in results) == 8 + len(cut)
    callees.stop()
