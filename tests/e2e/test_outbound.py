"""Outbound calls over the API: the node dials SIPp acting as carrier and callee."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from loadtest.concurrency import caller_audio
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, SippRunner, SippServer
from tests.e2e.api_client import ADMIN, api
from tests.e2e.conftest import SippServerFactory
from tests.e2e.polling import wait_for


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory) -> NodeProcess:
    trunks = tmp_path_factory.mktemp("trunks") / "trunks.json"
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUNKS_FILE": str(trunks),
           "VOXSWITCH_AGENT": "none"}  # fmt: skip
    return voxswitch_nodes.start("outbound", NodeOptions(media_timeout_s=0, env=env))


def put_trunk(node: NodeProcess, name: str, server: SippServer, **fields: Any) -> None:
    body = {"host": "127.0.0.1", "port": server.port, "options_interval_s": 0, **fields}
    status, answer = api(node, "PUT", f"/v1/trunks/{name}", body=body)
    assert status == 200, answer


def sent(result: SippResult, status: str) -> int:
    """How many ``status`` responses SIPp's scenario sent (its -trace_counts)."""
    return sum(int(v) for k, v in result.counts.items()
               if k.endswith(f"_{status}_Sent") and v.isdigit())  # fmt: skip


def call_state(node: NodeProcess, call_id: str) -> dict[str, Any]:
    status, body = api(node, "GET", f"/v1/calls/{call_id}")
    assert status == 200, body
    return dict(body)


def wait_state(
    node: NodeProcess, call_id: str, *states: str, timeout_s: float = 15
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        view = call_state(node, call_id)
        return view if view["state"] in states else None

    return wait_for(f"call {call_id} in {states}", reached, timeout_s)


def place(node: NodeProcess, **body: Any) -> str:
    status, answer = api(node, "POST", "/v1/calls", body={"from": "+15550001111", **body})
    assert status == 202, answer
    assert answer["status"] == "queued"
    return str(answer["call_id"])


def test_call_to_sipp_uas_connects_and_delete_sends_bye(
    node: NodeProcess, sipp_server: SippServerFactory
) -> None:
    server = sipp_server("uas", calls=1, timeout_s=30, trace_msg=True)
    put_trunk(node, "carrier-a", server, strip_plus=True, dial_prefix="99",
              caller_id="+15550009999", force_caller_id=True)  # fmt: skip
    call_id = place(node, to="+15557654321", trunk="carrier-a", agent="none",
                    metadata={"customer": "c-42"}, headers={"X-Campaign-Ref": "r1"})  # fmt: skip
    view = wait_state(node, call_id, "confirmed")
    assert view["direction"] == "outbound" and view["trunk"] == "carrier-a"
    assert view["sip_code"] == 200 and view["codec"] == "PCMU"
    assert view["metadata"] == {"customer": "c-42"}
    url = node.health_url.replace("/health", "/metrics")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    metrics = urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=5).read()
    placed = re.search(rb"^voxswitch_calls_placed_total (\S+)$", metrics, re.MULTILINE)
    assert placed is not None and float(placed.group(1)) >= 1
    status, listed = api(node, "GET", "/v1/calls?direction=outbound&state=confirmed")
    assert status == 200 and [c["call_id"] for c in listed["calls"]] == [call_id]
    assert api(node, "GET", "/v1/calls?trunk=carrier-a")[1]["count"] == 1
    assert api(node, "GET", "/v1/calls?trunk=other")[1]["count"] == 0
    assert api(node, "DELETE", f"/v1/calls/{call_id}")[0] == 202
    ended = wait_state(node, call_id, "ended")
    assert ended["disposition"] == "api_hangup" and ended["sip_code"] == 200
    result = server.wait(timeout_s=20)
    assert result.successful_calls == 1, result.describe()  # SIPp got our ACK and BYE
    # The trunk's number rules: its prefix, no '+', its caller ID forced.
    log = server.messages_log.read_text()
    assert f"INVITE sip:9915557654321@127.0.0.1:{server.port} SIP/2.0" in log
    assert "From: <sip:+15550009999@127.0.0.1>;tag=" in log
    record = wait_for("the call record", lambda: [r for r in node.records()
                                                  if r["call_id"] == call_id])  # fmt: skip
    assert record[0]["direction"] == "outbound"
    assert record[0]["sip_headers"] == {"X-Campaign-Ref": "r1"}
    assert record[0]["to_uri"] == "+15557654321" and record[0]["from_uri"] == "+15550009999"


def test_digest_challenge_answered_with_trunk_credentials(
    node: NodeProcess, sipp_server: SippServerFactory
) -> None:
    server = sipp_server("uas_auth.xml", calls=1, timeout_s=30)
    put_trunk(node, "carrier-auth", server, username="voxswitch", password="trunk-secret")
    status, shown = api(node, "GET", "/v1/trunks/carrier-auth")
    assert status == 200 and shown["password"] == "********"  # never shown
    call_id = place(node, to="+15557654322", trunk="carrier-auth", agent="none")
    wait_state(node, call_id, "confirmed")
    api(node, "DELETE", f"/v1/calls/{call_id}")
    assert wait_state(node, call_id, "ended")["disposition"] == "api_hangup"
    result = server.wait(timeout_s=20)
    assert result.successful_calls == 1, result.describe()
    assert sent(result, "403") == 0, result.describe()  # verifyauth passed


def test_wrong_credentials_fail_the_call(node: NodeProcess, sipp_server: SippServerFactory) -> None:
    server = sipp_server("uas_auth.xml", calls=1, timeout_s=20)
    put_trunk(node, "carrier-bad", server, username="voxswitch", password="wrong")
    call_id = place(node, to="+15557654323", trunk="carrier-bad", agent="none")
    ended = wait_state(node, call_id, "ended")
    assert ended["disposition"] == "failed" and ended["sip_code"] == 403
    result = server.wait(timeout_s=20)
    assert sent(result, "403") == 1 and sent(result, "200") == 0, result.describe()


def test_unanswered_call_ends_no_answer_after_ring_timeout(
    node: NodeProcess, sipp_server: SippServerFactory
) -> None:
    server = sipp_server("uas_ring.xml", calls=1, timeout_s=30)
    put_trunk(node, "carrier-ring", server)
    call_id = place(node, to="+15557654324", trunk="carrier-ring", ring_timeout_s=2)
    assert wait_state(node, call_id, "ringing")["state"] == "ringing"
    ended = wait_state(node, call_id, "ended", timeout_s=10)
    assert ended["disposition"] == "no_answer" and ended["sip_code"] == 487
    result = server.wait(timeout_s=20)
    assert result.successful_calls == 1, result.describe()  # CANCEL, 487, ACK


def test_delete_while_ringing_cancels(node: NodeProcess, sipp_server: SippServerFactory) -> None:
    server = sipp_server("uas_ring.xml", calls=1, timeout_s=30)
    put_trunk(node, "carrier-ring2", server)
    call_id = place(node, to="+15557654325", trunk="carrier-ring2")
    wait_state(node, call_id, "ringing")
    assert api(node, "DELETE", f"/v1/calls/{call_id}")[0] == 202
    ended = wait_state(node, call_id, "ended")
    assert ended["disposition"] == "canceled" and ended["sip_code"] == 487
    assert server.wait(timeout_s=20).successful_calls == 1


def test_busy_callee(node: NodeProcess, sipp_server: SippServerFactory) -> None:
    server = sipp_server(
        "uas_busy.xml", calls=1, timeout_s=20
    )
    put_trunk(node, "carrier-busy", server)
    call_id = place(node, to="+15557654326", trunk="carrier-busy")
    ended = wait_state(node, call_id, "ended")
    assert ended["disposition"] == "busy" and ended["sip_code"] == 486
    assert server.wait(timeout_s=20).successful_calls == 1  # our ACK for the 486


def test_routes_fail_over_on_503_but_not_on_486(
    node: NodeProcess, sipp_server: SippServerFactory, tmp_path: Path
) -> None:
    down = sipp_server(
        "uas_unavailable.xml", calls=1, timeout_s=20
    )
    good = sipp_server("uas", calls=1, timeout_s=30)
    put_trunk(node, "route-first", down)
    put_trunk(node, "route-second", good)
    status, _ = api(node, "PUT", "/v1/routes/outbound/us", body={
        "prefix": "+1555888", "trunks": ["route-first", "route-second"]})  # fmt: skip
    assert status == 200
    call_id = place(node, to="+15558880000", agent="none")
    view = wait_state(node, call_id, "confirmed")
    assert view["trunk"] == "route-second"
    api(node, "DELETE", f"/v1/calls/{call_id}")
    wait_state(node, call_id, "ended")
    assert down.wait(timeout_s=20).successful_calls == 1
    assert good.wait(timeout_s=20).successful_calls == 1
    status, _ = api(node, "DELETE", "/v1/routes/outbound/us")
    assert status == 204


def test_bad_call_requests_name_the_field(node: NodeProcess) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"to": "5551234"}, "to"),  # not E.164
        ({"to": "+15551234567", "from": "bob"}, "from"),
        ({"to": "+15551234567", "headers": {"Via": "x"}}, "headers"),
        ({"to": "+15551234567", "trunk": "no-such-trunk"}, "trunk"),
        ({"to": "+19990001111"}, "to"),  # no route matches
        ({"to": "sip:x@a..b"}, "to"),  # no such host name
        ({"to": "+15551234567", "ring_timeout_s": 0}, "ring_timeout_s"),
        ({"to": "+15551234567", "webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url"),
    ]
    for body, field in cases:
        status, answer = api(node, "POST", "/v1/calls", body=body)
        assert status == 422, (body, answer)
        assert any(e["loc"][-1] == field for e in answer["detail"]), (body, answer)
    status, answer = api(node, "PUT", "/v1/trunks/t1", body={"host": "a b"})
    assert status == 422 and answer["detail"][0]["loc"][-1] == "host"
    status, answer = api(node, "PUT", "/v1/routes/outbound/r1", body={"trunks": ["nope"]})
    assert status == 422 and answer["detail"][0]["loc"][-1] == "trunks"
    assert api(node, "GET", "/v1/calls/nope")[0] == 404


def test_full_trunk_429_and_full_node_503_with_retry_after(
    voxswitch_nodes: NodeFactory, sipp_server: SippServerFactory, tmp_path: Path
) -> None:
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUNKS_FILE": str(tmp_path / "t.json"),
           "VOXSWITCH_AGENT": "none"}  # fmt: skip
    small = voxswitch_nodes.start("small", NodeOptions(max_calls=1, media_timeout_s=0, env=env))
    callee = sipp_server("uas_ring.xml", calls=1, timeout_s=30)
    put_trunk(small, "one-call", callee, max_calls=1)
    put_trunk(small, "open", callee)
    call_id = place(small, to="+15557654330", trunk="one-call")
    wait_state(small, call_id, "ringing")
    headers: dict[str, str] = {}
    status, body = api(small, "POST", "/v1/calls", headers=headers,
                       body={"to": "+15557654331", "trunk": "one-call"})  # fmt: skip
    assert status == 429 and "one-call" in body["detail"] and headers["retry-after"] == "1"
    headers.clear()
    status, body = api(small, "POST", "/v1/calls", headers=headers,
                       body={"to": "+15557654332", "trunk": "open"})  # fmt: skip
    assert status == 503 and int(headers["retry-after"]) > 0
    api(small, "DELETE", f"/v1/calls/{call_id}")
    assert wait_state(small, call_id, "ended")["disposition"] == "canceled"
    callee.wait(timeout_s=20)


@pytest.mark.parametrize("workers", [0, 1])
def test_refused_refer_bridged_through_the_node(
    voxswitch_nodes: NodeFactory,
    sipp: SippRunner,
    sipp_server: SippServerFactory,
    tmp_path: Path,
    workers: int,
) -> None:
    """The caller answers our REFER 405: the node calls the target itself and relays
    the RTP both ways until the caller hangs up (in-loop media and a media worker)."""
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_AGENT": "none",
           "VOXSWITCH_TRUNKS_FILE": str(tmp_path / "t.json"),
           "VOXSWITCH_MEDIA_WORKERS": str(workers)}  # fmt: skip
    bridging = voxswitch_nodes.start(f"bridge{workers}", NodeOptions(media_timeout_s=0, env=env))
    target = sipp_server("uas", calls=1, timeout_s=40, extra_args=["-rtp_echo"])
    results: list[SippResult] = []

    def call() -> None:
        files = {"caller.ulaw": caller_audio(seconds=3)}
        results.append(sipp(bridging, "refer_refused_talk.xml", timeout_s=40, files=files))

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    first = wait_for("the caller's call", lambda: api(bridging, "GET", "/v1/calls")[1]["calls"])
    call_id = first[0]["call_id"]
    uri = f"sip:operator@127.0.0.1:{target.port}"
    status, _ = api(bridging, "POST", f"/v1/calls/{call_id}/transfer", body={"target": uri})
    assert status == 202
    caller.join(40)
    assert results and results[0].successful_calls == 1, results[0].describe()
    assert target.wait(timeout_s=20).successful_calls == 1  # it got our BYE
    records = wait_for("both legs' records", lambda: (
        rs if len(rs := bridging.records()) == 2 else None))  # fmt: skip
    a, b = sorted(records, key=lambda r: r["direction"])  # inbound, outbound
    assert a["call_id"] == call_id and a["disposition"] == "transferred", a
    assert a["transfer_status"] == 200 and "bridged" in a["reason"], a
    assert b["to_uri"] == uri and b["disposition"] == "bridge_ended", b
    # ~4 s of the caller's 20 ms packets went to the target, and its echo came back
    # to the caller through the first leg.
    assert b["packets_sent"] >= 120 and b["packets_received"] >= 120, b
    assert a["packets_sent"] >= b["packets_received"] - 10, (a, b)


def test_a_trunk_over_tcp(node: NodeProcess, sipp_server: SippServerFactory) -> None:
    server = sipp_server("uas", calls=1, timeout_s=30, transport="t1", trace_msg=True)
    # SIPp takes a moment to listen: a call placed before would find the port closed
    # (seen once in a full run: "cannot reach 127.0.0.1: Connection refused").
    wait_for("SIPp listening on TCP", lambda: _accepts_tcp(server.port))
    put_trunk(node, "carrier-tcp", server, transport="tcp")
    call_id = place(node, to="+15557654340", trunk="carrier-tcp", agent="none")
    assert wait_state(node, call_id, "confirmed")["trunk"] == "carrier-tcp"
    api(node, "DELETE", f"/v1/calls/{call_id}")
    assert wait_state(node, call_id, "ended")["disposition"] == "api_hangup"
    result = server.wait(timeout_s=20)
    assert result.successful_calls == 1, result.describe()
    log = server.messages_log.read_text()
    assert "TCP message received" in log and "UDP message received" not in log
    assert "Via: SIP/2.0/TCP" in log and ";transport=tcp>" in log


def _accepts_tcp(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


SALES_AGENT = """\
name: Sales line
greeting: Hello from the sales line.
fallback: Sorry, say that again?
goodbye: Bye!
knowledge:
  - id: price
    patterns: [how much is it]
    answer: Ten dollars.
"""


def test_named_agents_for_routes_and_calls(
    voxswitch_nodes: NodeFactory, sipp: SippRunner, sipp_server: SippServerFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "sales.yaml").write_text(SALES_AGENT)
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_AGENT": "none",
           "VOXSWITCH_AGENTS_DIR": str(agents),
           "VOXSWITCH_TRUNKS_FILE": str(tmp_path / "t.json")}  # fmt: skip
    named = voxswitch_nodes.start("agents", NodeOptions(media_timeout_s=0, env=env))
    route = {"pattern": "sales", "agent": "sales"}
    assert api(named, "PUT", "/v1/routes/inbound/sales", body=route)[0] == 200
    status, body = api(named, "PUT", "/v1/routes/inbound/x", body={"pattern": "x", "agent": "x"})
    assert status == 422 and body["detail"][0]["loc"][-1] == "agent"
    results: list[SippResult] = []

    def call() -> None:
        args = ["-s", "sales"]
        results.append(sipp(named, "wait_for_bye.xml", timeout_s=30, extra_args=args))

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    listed = wait_for("the sales call", lambda: api(named, "GET", "/v1/calls")[1]["calls"])
    detail = api(named, "GET", f"/v1/calls/{listed[0]['call_id']}")[1]
    assert detail["agent"] is True
    assert detail["transcript"][0]["content"] == "Hello from the sales line."
    api(named, "DELETE", f"/v1/calls/{listed[0]['call_id']}")
    caller.join(20)
    assert results and results[0].successful_calls == 1
    # Outbound: a call names its agent; an unknown one is a 422 naming the field.
    status, body = api(named, "POST", "/v1/calls", body={"to": "sip:x@127.0.0.1:9",
                                                         "agent": "support"})  # fmt: skip
    assert status == 422 and body["detail"][0]["loc"][-1] == "agent"
    callee = sipp_server("uas", calls=1, timeout_s=30)
    call_id = place(named, to=f"sip:+15551112222@127.0.0.1:{callee.port}", agent="sales")
    view = wait_state(named, call_id, "confirmed")
    assert view["agent"] is True and view["trunk"] is None  # dialed directly, no trunk
    api(named, "DELETE", f"/v1/calls/{call_id}")
    assert callee.wait(timeout_s=20).successful_calls == 1


def test_a_second_fork_is_acked_and_hung_up(
    node: NodeProcess, sipp_server: SippServerFactory
) -> None:
    server = sipp_server("uas_forked.xml", calls=1, timeout_s=30)
    put_trunk(node, "forking", server)
    call_id = place(node, to="+15557654350", trunk="forking", agent="none")
    wait_state(node, call_id, "confirmed")
    # The second 200 follows the first ACK at once; the scenario wants its BYE before
    # ours for the first fork: give it a second.
    time.sleep(1.0)
    assert call_state(node, call_id)["state"] == "confirmed"  # the first goes on
    api(node, "DELETE", f"/v1/calls/{call_id}")
    result = server.wait(timeout_s=20)
    assert result.successful_calls == 1, result.describe()  # ACK+BYE on B, then BYE on A
