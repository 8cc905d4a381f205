"""Lifecycle webhooks to a local receiver: signed, retried while it is down, refused
ones kept aside."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippRunner
from switch.backbone.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from tests.e2e.api_client import ADMIN, api
from tests.e2e.conftest import SippServerFactory
from tests.e2e.polling import wait_for

SECRET = "whsec-test-0123456789"


class Receiver:
    """An HTTP server in a thread that keeps what it is POSTed; can go down and up."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.refuse_types: set[str] = set()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def up(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(SECRET, self.headers[SIGNATURE_HEADER], body, now=time.time())
                event = json.loads(body)
                if not ok or self.headers[EVENT_ID_HEADER] != event["event_id"]:
                    receiver.bad_signatures += 1
                    self.send_response(401)
                elif event["type"] in receiver.refuse_types:
                    self.send_response(400)
                else:
                    receiver.got.append(event)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def types(self) -> list[str]:
        return [e["type"] for e in self.got]


def webhook_status(node: NodeProcess) -> dict[str, Any]:
    backbone = node.health()["backbone"]
    assert isinstance(backbone, dict)
    return dict(backbone["sinks"]["webhook"])


def test_signed_retried_and_refused_events(
    voxswitch_nodes: NodeFactory, sipp: SippRunner, tmp_path: Path
) -> None:
    receiver = Receiver().up()
    spool = tmp_path / "spool"
    try:
        env = {
            "VOXSWITCH_WEBHOOK_URL": f"http://127.0.0.1:{receiver.port}/hooks",
            "VOXSWITCH_WEBHOOK_SECRET": SECRET,
            "VOXSWITCH_SPOOL_DIR": str(spool),
        }
        node = voxswitch_nodes.start("webhooks", NodeOptions(media_timeout_s=0, env=env))
        assert sipp(node, "uac", pause_ms=200).successful_calls == 1
        wait_for("3 events", lambda: len(receiver.got) >= 3)
        assert receiver.types() == ["call.offered", "call.answered", "call.ended"]
        assert receiver.bad_signatures == 0

        # The receiver goes away: the next call's events wait in the spool.
        receiver.down()
        assert sipp(node, "uac", pause_ms=200).successful_calls == 1
        status = wait_for(
            "the webhook marked down",
            lambda: (s := webhook_status(node)) and not s["up"] and s["depth"] >= 3 and s,
        )
        assert status["failures"] >= 1
        receiver.refuse_types = {"call.answered"}  # it comes back refusing one kind
        receiver.up()
        wait_for("the backlog", lambda: len(receiver.got) >= 5, timeout_s=40)
        assert receiver.types()[3:] == ["call.offered", "call.ended"]  # in order
        assert receiver.got[3]["call_id"] == receiver.got[4]["call_id"] != receiver.got[0][
            "call_id"
        ]
        status = wait_for("drained", lambda: (s := webhook_status(node))["depth"] == 0 and s)
        assert status["up"] and status["rejected"] == 1
        (dead,) = [json.loads(x) for x in (spool / "webhook-dead-letters.jsonl").read_text()
                   .splitlines()]  # fmt: skip
        assert dead["status"] == 400 and dead["event"]["type"] == "call.answered"
        assert receiver.bad_signatures == 0
    finally:
        receiver.down()


def test_webhook_settings_are_checked() -> None:
    from switch.config import ConfigError, load_settings

    for env, message in (
        ({"VOXSWITCH_WEBHOOK_URL": "http://x/"}, "webhook_secret"),
        ({"VOXSWITCH_WEBHOOK_URL": "ftp://x/", "VOXSWITCH_WEBHOOK_SECRET": "s"}, "webhook_url"),
    ):
        try:
            load_settings(env=env)
        except ConfigError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{env} was accepted")


def test_a_call_placed_with_its_own_webhook_url(
    voxswitch_nodes: NodeFactory, sipp_server: SippServerFactory, tmp_path: Path
) -> None:
    """The node has no webhook of its own, only the secret: a call's events go to the
    URL it was placed with, signed; events of other calls do not."""
    receiver = Receiver().up()
    try:
        env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_WEBHOOK_SECRET": SECRET,
               "VOXSWITCH_AGENT": "none", "VOXSWITCH_SPOOL_DIR": str(tmp_path / "spool"),
               "VOXSWITCH_TRUNKS_FILE": str(tmp_path / "trunks.json")}  # fmt: skip
        node = voxswitch_nodes.start("own-hook", NodeOptions(media_timeout_s=0, env=env))
        callee = sipp_server("uas_busy.xml", calls=2, timeout_s=30)
        trunk = {"host": "127.0.0.1", "port": callee.port, "options_interval_s": 0}
        assert api(node, "PUT", "/v1/trunks/t", body=trunk)[0] == 200
        hook = f"http://127.0.0.1:{receiver.port}/hooks/call"
        status, placed = api(node, "POST", "/v1/calls", body={
            "to": "+15557770001", "trunk": "t", "webhook_url": hook})  # fmt: skip
        assert status == 202
        status, _ = api(node, "POST", "/v1/calls", body={"to": "+15557770002", "trunk": "t"})
        assert status == 202
        wait_for("the call's events", lambda: "call.ended" in receiver.types(), 20)
        assert receiver.types() == ["call.offered", "call.ended"]
        assert {e["call_id"] for e in receiver.got} == {placed["call_id"]}
        assert receiver.bad_signatures == 0
        ended = receiver.got[-1]
        assert ended["disposition"] == "busy" and ended["sip_code"] == 486
        assert "webhook_url" not in ended  # routing, not part of the event
        assert callee.wait(timeout_s=20).successful_calls == 2
    finally:
        receiver.down()
