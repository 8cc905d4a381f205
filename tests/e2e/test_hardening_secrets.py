"""Secrets at rest and the doctor, against live nodes (issue 23, finding 8).

One trunk's life: a trunks.json of the old kind (password in the clear) loads with a
warning and ``voxswitch doctor`` calls it critical; changed over the API, the file is
sealed (no password in it; the inbound one named by its environment variable); a
new node on the same file still answers the carrier's challenge with the right
password and still lets the carrier's digest user in.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from loadtest.node import NodeFactory, NodeOptions, voxswitch_command
from loadtest.sipp import SippResult, SippRunner
from tests.e2e.api_client import ADMIN, api
from tests.e2e.conftest import SippServerFactory
from tests.e2e.polling import wait_for

OUT_PASSWORD = "trunk-secret"  # what loadtest/scenarios/uas_auth.xml verifies
IN_PASSWORD = "s3cret-in-0123456789"


def doctor(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOXSWITCH_")}
    done = subprocess.run(
        [*voxswitch_command(), "doctor", *args], capture_output=True, text=True, timeout=20,
        cwd=tmp_path, env={**clean, **(env or {})},
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def sent(result: SippResult, status: str) -> int:
    return sum(int(v) for k, v in result.counts.items()
               if k.endswith(f"_{status}_Sent") and v.isdigit())  # fmt: skip


def test_a_clear_trunks_file_is_sealed_on_save_and_a_new_node_still_authenticates(
    voxswitch_nodes: NodeFactory, sipp: SippRunner, sipp_server: SippServerFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    carrier = sipp_server("uas_auth.xml", calls=1, timeout_s=40)
    trunks = tmp_path / "trunks.json"
    trunk: dict[str, Any] = {"name": "carrier", "host": "127.0.0.1", "port": carrier.port,
                             "options_interval_s": 0, "inbound_ips": ["192.0.2.0/24"],
                             "username": "voxswitch", "password": OUT_PASSWORD}  # fmt: skip
    trunks.write_text(json.dumps({"trunks": [trunk]}))  # as nodes before sealing wrote it
    safe = ["--sip-host", "127.0.0.1", "--api-host", "127.0.0.1", "--trunks-file", str(trunks)]
    code, out = doctor(tmp_path, *safe)
    assert code == 1 and "CRITICAL trunk-password-clear" in out and OUT_PASSWORD not in out

    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_TRUNKS_FILE": str(trunks),
           "VOXSWITCH_AGENT": "none", "VOXSWITCH_SIP_AUTH_ALGORITHMS": "MD5",
           "CARRIER_IN_PASSWORD": IN_PASSWORD}  # fmt: skip
    options = NodeOptions(media_timeout_s=0, env=env)
    first = voxswitch_nodes.start("sealing", options)
    assert "1 trunk password(s) in the clear" in first.stderr_text()
    status, shown = api(first, "GET", "/v1/trunks/carrier")
    assert status == 200 and shown["password"] == "********"
    assert OUT_PASSWORD not in json.dumps(api(first, "GET", "/v1/trunks")[1])
    # The carrier's inbound user, its password named (not given); the outbound one kept.
    body = {**trunk, "password": "********", "inbound_username": "carrier-in",
            "inbound_password_env": "CARRIER_IN_PASSWORD"}  # fmt: skip
    status, shown = api(first, "PUT", "/v1/trunks/carrier", body=body)
    assert status == 200, shown
    assert shown["inbound_password"] == "********" and IN_PASSWORD not in json.dumps(shown)
    status, refused = api(first, "PUT", "/v1/trunks/other",
                          body={**body, "inbound_password_env": "VOXSWITCH_API_KEY"})  # fmt: skip
    assert status == 422 and "node's own settings" in json.dumps(refused)
    text = trunks.read_text()
    assert OUT_PASSWORD not in text and IN_PASSWORD not in text
    stored = json.loads(text)["trunks"][0]
    assert stored["password_sealed"].startswith("v1:") and "password" not in stored
    assert stored["inbound_password_env"] == "CARRIER_IN_PASSWORD"
    assert ((tmp_path / "trunks.key").stat().st_mode & 0o777) == 0o600
    first.stop()

    second = voxswitch_nodes.start("sealed", options)  # the same file, a new process
    assert "in the clear" not in second.stderr_text()
    # Outbound: the carrier challenges; the node answers with the opened password.
    call = {"to": "+15557654322", "trunk": "carrier", "agent": "none"}
    status, placed = api(second, "POST", "/v1/calls", body=call)
    assert status == 202, placed
    call_id = placed["call_id"]
    wait_for("the call up", lambda: api(second, "GET", f"/v1/calls/{call_id}")[1]["state"]
             == "confirmed", 15)  # fmt: skip
    api(second, "DELETE", f"/v1/calls/{call_id}")
    result = carrier.wait(timeout_s=20)
    assert result.successful_calls == 1 and sent(result, "403") == 0, result.describe()
    # Inbound: the carrier's digest user, its password from the node's environment.
    result = sipp(second, "auth_call.xml", calls=1, timeout_s=20,
                  extra_args=["-au", "carrier-in", "-ap", IN_PASSWORD])  # fmt: skip
    assert result.successful_calls == 1, result.describe()
    records = wait_for("the inbound record", lambda: [
        r for r in second.records() if r["direction"] == "inbound"])  # fmt: skip
    assert records[-1]["trunk"] == "carrier"
    assert IN_PASSWORD not in second.stderr_text() and OUT_PASSWORD not in second.stderr_text()
    code, out = doctor(tmp_path, *safe)
    assert (code, out.strip()) == (0, "no risky settings found"), out


def test_doctor_names_each_risk_of_an_open_node_and_exits_1(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("x" * 40 + "\n")
    code, out = doctor(tmp_path, "--sip-host", "0.0.0.0", "--trusted-sources", "0.0.0.0/0",
                       "--llm-api-key", "sk-on-the-command-line", "--trunks-file", "",
                       env={"VOXSWITCH_API_KEY_FILE": str(key_file)})  # fmt: skip
    lines = out.splitlines()
    assert code == 1, out
    for expected in (
        "CRITICAL sip-open: SIP on 0.0.0.0:5060",
        "CRITICAL trusted-wide:",
        "CRITICAL secret-on-command-line: --llm-api-key",
        "WARNING  sip-no-tls:",
    ):
        assert any(line.startswith(expected) for line in lines), out
    assert lines[-1].startswith("3 critical")
    assert "sk-on-the-command-line" not in out and "x" * 40 not in out
    bad = doctor(tmp_path, "--sip-port", "seventy")
    assert bad[0] == 2  # a setting it cannot read: like serve, one line and 2
