"""The control API fuzzed from its own OpenAPI schema (schemathesis): no 5xx, and every
error answered as JSON."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from loadtest.node import NodeFactory, NodeOptions, NodeProcess

ADMIN = "fuzz-admin-key-0123456789"


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    return voxswitch_nodes.start(
        "fuzz", NodeOptions(media_timeout_s=0, env={"VOXSWITCH_API_KEY": ADMIN})
    )


def test_no_server_errors_and_json_errors(node: NodeProcess) -> None:
    """Every operation of /openapi.json, 40 generated requests each, with and without
    the admin key."""
    schema = schemathesis.openapi.from_url(
        node.health_url.replace("/health", "/openapi.json"),
        headers={"Authorization": f"Bearer {ADMIN}"},  # only /health is open
    )
    # The live-calls stream never ends (a client reads it for as long as it wants):
    # tests/e2e/test_console.py reads it.
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path != "/v1/stream/calls"]
    assert {op.path for op in operations} >= {"/v1/calls", "/v1/calls/{call_id}/say",
                                             "/v1/webrtc/calls"}  # fmt: skip
    sent = 0
    for operation in operations:

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            for key in (ADMIN, None):
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                response = case.call(headers=headers)
                nonlocal sent
                sent += 1
                assert response.status_code < 500, (case.method, case.path, response.text[:300])
                if response.status_code >= 400:
                    body = json.loads(response.text)
                    assert isinstance(body, dict) and "detail" in body

        check()
    assert sent >= 20 * len(operations)  # the generator did run
