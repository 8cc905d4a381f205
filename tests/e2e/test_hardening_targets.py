"""Issue 23, findings 5 and 6 against a live node: no SSRF through webhooks, trunks or
dialed SIP URIs, and no inbound route pattern that stalls the event loop.

The nodes here run with ``allowed_private_targets`` empty (test nodes otherwise allow
loopback for their receivers), so loopback is refused like any private address."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippRunner
from tests.e2e.api_client import ADMIN, api
from tests.e2e.polling import wait_for
from tests.e2e.test_webhooks import SECRET, Receiver, webhook_status

STRICT = {
    "VOXSWITCH_API_KEY": ADMIN,
    "VOXSWITCH_WEBHOOK_SECRET": SECRET,
    "VOXSWITCH_ALLOWED_PRIVATE_TARGETS": "",
}

# The spellings the security review got through, and their neighbours.
WEBHOOK_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:7f00:1]:6379/",
    "http://0x7f000001:6379/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://127.1:6379/",
    "http://localhost:6379/",
    "http://127.0.0.1:16379/",
    "http://[fd00:ec2::254]/",
    "http://[::1]:8080/",
    "http://0.0.0.0:8080/",
    "http://10.0.0.1/",
    "http://100.64.0.1/",
    "https://user@192.168.1.1/",
]
TRUNK_HOSTS = ["169.254.169.254", "0x7f000001", "2130706433", "127.1", "localhost",
               "::ffff:127.0.0.1", "[::1]", "10.1.1.1", "fd00:ec2::254"]  # fmt: skip


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start("strict", NodeOptions(media_timeout_s=0, env=STRICT))


def refused_field(status: int, answer: Any) -> str:
    assert status == 422, answer
    (problem,) = answer["detail"]
    return str(problem["loc"][-1])


@pytest.mark.parametrize("url", WEBHOOK_URLS)
def test_each_ssrf_spelling_of_a_webhook_url_is_refused(node: NodeProcess, url: str) -> None:
    body = {"to": "+15551234567", "webhook_url": url}
    assert refused_field(*api(node, "POST", "/v1/calls", body=body)) == "webhook_url"
    campaign = {"numbers": [{"to": "+15551234567"}], "webhook_url": url}
    assert refused_field(*api(node, "POST", "/v1/campaigns", body=campaign)) == "webhook_url"


def test_trunks_and_dialed_uris_may_not_point_inside(node: NodeProcess) -> None:
    for host in TRUNK_HOSTS:
        status, answer = api(node, "PUT", "/v1/trunks/inside", body={"host": host})
        assert refused_field(status, answer) == "host", host
        assert "inside" not in json.dumps(api(node, "GET", "/v1/trunks")[1])
    for uri in ("sip:x@169.254.169.254", "sip:x@127.0.0.1:6379;transport=tcp",
                "sip:x@0x7f000001", "sip:x@[::ffff:10.0.0.1]"):  # fmt: skip
        assert refused_field(*api(node, "POST", "/v1/calls", body={"to": uri})) == "to", uri


def test_an_allow_list_for_everyone_must_be_forced(node: NodeProcess) -> None:
    carrier = {"host": "192.0.2.10", "options_interval_s": 0}
    for everyone in (["0.0.0.0/0"], ["::/0"], ["192.0.2.0/24", "0.0.0.0/1"]):
        body = {**carrier, "inbound_ips": everyone}
        status, answer = api(node, "PUT", "/v1/trunks/open", body=body)
        assert refused_field(status, answer) == "inbound_ips", everyone
    forced = {**carrier, "inbound_ips": ["0.0.0.0/0"], "allow_any_source": True}
    status, answer = api(node, "PUT", "/v1/trunks/open", body=forced)
    assert status == 200 and answer["allow_any_source"] is True
    assert api(node, "DELETE", "/v1/trunks/open")[0] == 204


def test_a_route_pattern_cannot_stall_the_loop(node: NodeProcess, sipp: SippRunner) -> None:
    """``(\\d+)+#`` took 0.6 s at 24 digits, doubling per digit: at 40 the node would
    never answer again. Now it is matched in linear time."""
    route = {"pattern": r"(\d+)+#", "agent": "none"}
    assert api(node, "PUT", "/v1/routes/inbound/slow", body=route)[0] == 200
    try:
        began = time.monotonic()
        result = sipp(node, "uac", pause_ms=100, timeout_s=15, extra_args=["-s", "1" * 40])
        assert result.successful_calls == 1
        assert time.monotonic() - began < 10
        began = time.monotonic()
        assert node.health(timeout_s=2.0)["status"]
        assert time.monotonic() - began < 1.0
    finally:
        api(node, "DELETE", "/v1/routes/inbound/slow")


def test_a_webhook_name_resolving_to_loopback_is_refused_at_send_time(
    voxswitch_nodes: NodeFactory, sipp: SippRunner, tmp_path: Path
) -> None:
    """``localhost`` passes the start-up check (a name: no lookup then) and resolves to
    127.0.0.1 when each event is posted: nothing reaches the receiver there, each
    event is dead-lettered and counted, and the node carries on."""
    receiver = Receiver().up()
    spool = tmp_path / "spool"
    try:
        env = {**STRICT, "VOXSWITCH_WEBHOOK_URL": f"http://localhost:{receiver.port}/hooks",
               "VOXSWITCH_SPOOL_DIR": str(spool)}  # fmt: skip
        hooked = voxswitch_nodes.start("rebound", NodeOptions(media_timeout_s=0, env=env))
        assert sipp(hooked, "uac", pause_ms=100).successful_calls == 1
        status = wait_for(
            "3 events refused",
            lambda: (s := webhook_status(hooked))["refused"] >= 3 and s["depth"] == 0 and s,
        )
        assert status["up"] and status["rejected"] == status["refused"] == 3
        assert receiver.got == [] and receiver.bad_signatures == 0
        dead = [json.loads(x) for x in (spool / "webhook-dead-letters.jsonl").read_text()
                .splitlines()]  # fmt: skip
        assert [d["event"]["type"] for d in dead] == ["call.offered", "call.answered",
                                                      "call.ended"]  # fmt: skip
        assert all("127.0.0.1 is loopback" in d["refused"] for d in dead)
        assert hooked.health()["status"]
    finally:
        receiver.down()
