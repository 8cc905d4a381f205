"""The control API on a running node: keys and scopes, live calls, call commands."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, SippRunner
from tests.e2e.api_client import ADMIN, api
from tests.e2e.polling import wait_for


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "api-keys.json"


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory, keys_file: Path) -> NodeProcess:
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_API_KEYS_FILE": str(keys_file)}
    return voxswitch_nodes.start("api", NodeOptions(media_timeout_s=0, env=env))


def create_key(keys_file: Path, *scopes: str) -> str:
    args = [sys.executable, "-m", "switch.cli", "apikey", "create", "--name", "test"]
    for scope in scopes:
        args += ["--scope", scope]
    done = subprocess.run(
        [*args, "--api-keys-file", str(keys_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_keys_and_scopes(node: NodeProcess, keys_file: Path) -> None:
    status, body = api(node, "GET", "/v1/calls", key=None)
    assert status == 401 and "API key" in body["detail"]
    assert api(node, "GET", "/v1/calls", key="vsk_nope_nope")[0] == 401
    assert api(node, "GET", "/v1/calls", key=ADMIN) == (200, {"calls": [], "count": 0})
    reader = create_key(keys_file, "calls:read")
    assert reader.startswith("vsk_")
    assert ADMIN not in keys_file.read_text() and reader not in keys_file.read_text()  # hashed
    assert api(node, "GET", "/v1/calls", key=reader)[0] == 200
    status, body = api(node, "DELETE", "/v1/calls/x", key=reader)
    assert status == 403 and "calls:write" in body["detail"]
    writer = create_key(keys_file, "calls:read", "calls:write")
    status, body = api(node, "DELETE", "/v1/calls/nope", key=writer)
    assert status == 404 and "nope" in body["detail"]
    bad = subprocess.run(
        [sys.executable, "-m", "switch.cli", "apikey", "create", "--name", "x",
         "--scope", "root", "--api-keys-file", str(keys_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "scopes must be" in bad.stderr
    # Probes stay open.
    assert api(node, "GET", "/health", key=None)[0] == 200


def test_bad_input_gets_json_naming_the_field(node: NodeProcess) -> None:
    status, body = api(node, "POST", "/v1/calls/c1/dtmf", body={"digits": "12x"})
    assert status == 422
    assert any(e["loc"][-1] == "digits" for e in body["detail"])
    status, body = api(node, "POST", "/v1/calls/c1/say", body={})
    assert status == 422 and any(e["loc"][-1] == "text" for e in body["detail"])
    status, body = api(node, "POST", "/v1/calls/c1/transfer", body={"target": "not a uri"})
    assert status == 422 and any(e["loc"][-1] == "target" for e in body["detail"])
    status, body = api(node, "GET", "/v1/calls?state=flying")
    assert status == 422 and any(e["loc"][-1] == "state" for e in body["detail"])
    status, body = api(node, "POST", "/v1/calls/c1/say", raw=b"x" * 70_000)
    assert status == 413 and "bytes" in body["detail"]
    status, body = api(node, "POST", "/v1/calls/c1/say", raw=b"{not json")
    assert status == 422


def wait_for_call(node: NodeProcess, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = api(node, "GET", "/v1/calls?state=confirmed")
        if status == 200 and body["calls"]:
            return dict(body["calls"][0])
        time.sleep(0.1)
    raise AssertionError("no confirmed call listed")


def test_live_call_listed_steered_and_hung_up(node: NodeProcess, sipp: SippRunner) -> None:
    results: list[SippResult] = []
    caller = threading.Thread(
        target=lambda: results.append(sipp(node, "wait_for_bye.xml", timeout_s=40)), daemon=True
    )
    caller.start()
    listed = wait_for_call(node)
    call_id = listed["call_id"]
    assert listed["direction"] == "inbound" and listed["agent"] is True
    assert api(node, "GET", "/v1/calls?direction=outbound")[1]["count"] == 0
    status, detail = api(node, "GET", f"/v1/calls/{call_id}")
    assert status == 200 and detail["state"] == "confirmed"
    assert detail["transcript"][0]["role"] == "assistant"  # the greeting
    assert detail["codec"] == "PCMU" and detail["answered_at"] >= detail["offered_at"]

    assert api(node, "POST", f"/v1/calls/{call_id}/say", body={"text": "One moment please."}) == (
        202, {"call_id": call_id, "status": "queued"},
    )  # fmt: skip
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        transcript = api(node, "GET", f"/v1/calls/{call_id}")[1]["transcript"]
        if transcript[-1]["content"] == "One moment please.":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the say never reached the conversation")
    assert api(node, "POST", f"/v1/calls/{call_id}/dtmf", body={"digits": "1#"})[0] == 202

    status, body = api(node, "DELETE", f"/v1/calls/{call_id}")
    assert status == 202 and body["status"] == "ending"
    caller.join(20)
    assert results and results[0].successful_calls == 1  # SIPp got its BYE
    (record,) = wait_for(
        "the call's record", lambda: [r for r in node.records() if r["call_id"] == call_id], 10
    )
    assert record["disposition"] == "api_hangup"
    status, ended = api(node, "GET", f"/v1/calls/{call_id}")  # ended: still shown a while
    assert status == 200 and ended["state"] == "ended" and ended["disposition"] == "api_hangup"
    assert api(node, "GET", "/v1/calls")[1]["count"] == 0  # the list is live calls only


def test_x_headers_reach_the_call_and_its_record(
    node: NodeProcess, sipp: SippRunner, tmp_path: Path
) -> None:
    base = Path(__file__).resolve().parents[2] / "loadtest" / "scenarios" / "wait_for_bye.xml"
    scenario = tmp_path / "x_headers.xml"
    scenario.write_text(
        base.read_text().replace(
            "Subject: voxswitch e2e wait for BYE",
            "Subject: voxswitch e2e wait for BYE\n      X-Campaign: spring-2026\n"
            "      X-Customer-Id: 42",
            1,
        )
    )
    results: list[SippResult] = []
    caller = threading.Thread(
        target=lambda: results.append(sipp(node, scenario, timeout_s=40)), daemon=True
    )
    caller.start()
    call_id = wait_for_call(node)["call_id"]
    status, detail = api(node, "GET", f"/v1/calls/{call_id}")
    assert status == 200
    assert detail["sip_headers"] == {"X-Campaign": "spring-2026", "X-Customer-Id": "42"}
    assert api(node, "DELETE", f"/v1/calls/{call_id}")[0] == 202
    caller.join(20)
    assert results and results[0].successful_calls == 1
    (record,) = wait_for(
        "the call's record", lambda: [r for r in node.records() if r["call_id"] == call_id], 10
    )
    assert record["sip_headers"] == {"X-Campaign": "spring-2026", "X-Customer-Id": "42"}


def test_inbound_route_picks_the_agent(node: NodeProcess, sipp: SippRunner) -> None:
    route = {"pattern": "chime-.*", "agent": "none"}
    assert api(node, "PUT", "/v1/routes/inbound/chime-only", body=route)[0] == 200
    for service, agent in (("chime-1", False), ("sales", True)):
        results: list[SippResult] = []

        def call(service: str = service, results: list[SippResult] = results) -> None:
            args = ["-s", service]
            results.append(sipp(node, "wait_for_bye.xml", timeout_s=40, extra_args=args))

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        listed = wait_for_call(node)
        assert listed["to"].startswith(f"sip:{service}@") and listed["agent"] is agent
        assert api(node, "DELETE", f"/v1/calls/{listed['call_id']}")[0] == 202
        caller.join(20)
        assert results and results[0].successful_calls == 1
        wait_for("the call to end", lambda: api(node, "GET", "/v1/calls")[1]["count"] == 0)
    assert api(node, "DELETE", "/v1/routes/inbound/chime-only")[0] == 204
