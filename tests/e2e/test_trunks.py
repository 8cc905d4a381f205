"""Trunks against SIPp carriers: registration, keepalives, inbound admission."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, SippRunner, received_times
from tests.e2e.api_client import ADMIN, api
from tests.e2e.conftest import SippServerFactory
from tests.e2e.polling import wait_for


def start_node(
    voxswitch_nodes: NodeFactory, tmp_path: Any, name: str, **extra: str
) -> NodeProcess:
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUNKS_FILE": str(tmp_path / "trunks.json"),
           "VOXSWITCH_AGENT": "none", **extra}  # fmt: skip
    return voxswitch_nodes.start(name, NodeOptions(media_timeout_s=0, env=env))


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory) -> NodeProcess:
    return start_node(voxswitch_nodes, tmp_path_factory.mktemp("trunks"), "trunks")


def trunk_status(node: NodeProcess, name: str) -> dict[str, Any]:
    status, body = api(node, "GET", f"/v1/trunks/{name}")
    assert status == 200, body
    return dict(body["status"])


def test_registration_answers_the_challenge_and_refreshes_before_expiry(
    node: NodeProcess, sipp_server: SippServerFactory
) -> None:
    registrar = sipp_server("registrar.xml", calls=1, timeout_s=30, trace_msg=True)
    body = {"host": "127.0.0.1", "port": registrar.port, "options_interval_s": 0,
            "registration": True, "username": "voxswitch", "password": "trunk-secret"}  # fmt: skip
    assert api(node, "PUT", "/v1/trunks/registered", body=body)[0] == 200
    first = wait_for("registered", lambda: (
        s if (s := trunk_status(node, "registered")["registration"] or {}).get("state")
        == "registered" else None))  # fmt: skip
    assert first["expires_s"] == 4  # what the registrar granted, not the 3600 asked
    refreshed = wait_for("a refresh", lambda: (
        s if (s := trunk_status(node, "registered")["registration"])["refreshes"] >= 1
        else None), timeout_s=10)  # fmt: skip
    assert refreshed["state"] == "registered"
    _, metrics = api_text(node, "/metrics")
    assert 'voxswitch_trunk_registered{trunk="registered"} 1.0' in metrics
    # Deleting the trunk unregisters (Expires: 0: the registrar's third round checks it).
    assert api(node, "DELETE", "/v1/trunks/registered")[0] == 204
    result = registrar.wait(timeout_s=20)
    assert result.successful_calls == 1, result.describe()  # every round's credentials good
    registers = received_times(registrar.messages_log, "REGISTER")
    assert len(registers) == 6
    # The refresh (third REGISTER) came before the 4 s granted by the second's 200 ran out.
    assert 2.5 <= registers[2] - registers[1] < 4.0, registers


def api_text(node: NodeProcess, path: str) -> tuple[int, str]:
    url = node.health_url.replace("/health", path)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.status, r.read().decode()


def test_keepalive_marks_a_silent_trunk_down_and_routes_around_it(
    node: NodeProcess, sipp_server: SippServerFactory
) -> None:
    carrier = sipp_server("uas_options.xml", calls=2, timeout_s=30)
    backup = sipp_server("uas", calls=1, timeout_s=30)
    body = {"host": "127.0.0.1", "port": carrier.port, "options_interval_s": 1}
    assert api(node, "PUT", "/v1/trunks/flaky", body=body)[0] == 200
    body = {"host": "127.0.0.1", "port": backup.port, "options_interval_s": 0}
    assert api(node, "PUT", "/v1/trunks/backup", body=body)[0] == 200
    answered = lambda: (trunk_status(node, "flaky")["keepalive"] or {}).get("up") is True  # noqa: E731
    wait_for("flaky answers", answered)
    # The carrier answered its two OPTIONS and went quiet: two unanswered -> down.
    wait_for("flaky down", lambda: trunk_status(node, "flaky")["up"] is False, timeout_s=15)
    status, body = api(node, "POST", "/v1/calls",
                       body={"to": "+15556660000", "trunk": "flaky", "agent": "none"})  # fmt: skip
    assert status == 503 and "down" in body["detail"]
    route = {"prefix": "+1555666", "trunks": ["flaky", "backup"]}
    assert api(node, "PUT", "/v1/routes/outbound/flaky-first", body=route)[0] == 200
    status, body = api(node, "POST", "/v1/calls", body={"to": "+15556660001", "agent": "none"})
    assert status == 202
    call_id = body["call_id"]
    view = wait_for("answered via backup", lambda: (
        v if (v := api(node, "GET", f"/v1/calls/{call_id}")[1])["state"] == "confirmed"
        else None))  # fmt: skip
    assert view["trunk"] == "backup"
    api(node, "DELETE", f"/v1/calls/{call_id}")
    assert backup.wait(timeout_s=20).successful_calls == 1
    # The carrier comes back on the same address: up again after one answer.
    assert carrier.wait(timeout_s=20).successful_calls == 2
    again = sipp_server("uas_options.xml", calls=1, timeout_s=30, port=carrier.port)
    wait_for("flaky up again", lambda: trunk_status(node, "flaky")["up"] is True, timeout_s=10)
    again.wait(timeout_s=10)
    _, metrics = api_text(node, "/metrics")
    assert 'voxswitch_trunk_up{trunk="backup"} 1.0' in metrics
    for path in ("/v1/routes/outbound/flaky-first", "/v1/trunks/flaky", "/v1/trunks/backup"):
        assert api(node, "DELETE", path)[0] == 204


def test_invite_from_no_trunk_gets_403_and_is_counted(
    voxswitch_nodes: NodeFactory, sipp: SippRunner, tmp_path: Any
) -> None:
    # (SIPp answers MD5 challenges only, and takes the first offered.)
    guarded = start_node(voxswitch_nodes, tmp_path, "guarded", VOXSWITCH_SIP_AUTH_ALGORITHMS="MD5")
    body = {"host": "192.0.2.10", "inbound_ips": ["192.0.2.0/24"], "options_interval_s": 0}
    assert api(guarded, "PUT", "/v1/trunks/carrier", body=body)[0] == 200
    result = sipp(guarded, "reject_403.xml", calls=2, rate=10, timeout_s=20)
    assert result.successful_calls == 2, result.describe()
    _, metrics = api_text(guarded, "/metrics")
    assert "voxswitch_sip_forbidden_total 2.0" in metrics
    # The carrier's own digest user gets in from anywhere (challenged, then taken as
    # that trunk's call); a wrong password does not.
    body["inbound_username"], body["inbound_password"] = "carrier-in", "s3cret"
    assert api(guarded, "PUT", "/v1/trunks/carrier", body=body)[0] == 200
    assert api(guarded, "GET", "/v1/trunks/carrier")[1]["inbound_password"] == "********"
    result = sipp(guarded, "auth_call.xml", calls=1, timeout_s=20,
                  extra_args=["-au", "carrier-in", "-ap", "s3cret"])  # fmt: skip
    assert result.successful_calls == 1, result.describe()
    assert wait_for("the record", guarded.records)[-1]["trunk"] == "carrier"
    result = sipp(guarded, "auth_call.xml", calls=1, timeout_s=20,
                  extra_args=["-au", "carrier-in", "-ap", "wrong"])  # fmt: skip
    assert result.successful_calls == 0
    body["inbound_password"] = "********"  # sent back as shown: kept
    # Our address joins the allowlist: the call is taken and carries the trunk's name.
    body["inbound_ips"] = ["192.0.2.0/24", "127.0.0.1/32"]
    assert api(guarded, "PUT", "/v1/trunks/carrier", body=body)[0] == 200
    result = sipp(guarded, "uac", calls=1, timeout_s=20)
    assert result.successful_calls == 1, result.describe()
    records = wait_for("the call's record", guarded.records)
    assert records[-1]["trunk"] == "carrier"
    # The trunk's call limit holds for its inbound calls too: 503 with Retry-After.
    body["max_calls"] = 1
    assert api(guarded, "PUT", "/v1/trunks/carrier", body=body)[0] == 200
    holding: list[SippResult] = []
    caller = threading.Thread(target=lambda: holding.append(
        sipp(guarded, "uac", calls=1, pause_ms=3000, timeout_s=20)), daemon=True)  # fmt: skip
    caller.start()
    wait_for("the first call up", lambda: api(guarded, "GET", "/v1/calls")[1]["count"] == 1)
    refused = sipp(guarded, "reject_503.xml", calls=1, timeout_s=20)
    assert refused.successful_calls == 1, refused.describe()
    caller.join(20)
    assert holding and holding[0].successful_calls == 1
