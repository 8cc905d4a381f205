"""``log_format = json``: a node's stderr is JSON lines, and the lines of a call carry
its Call-ID (what Loki/ELK index on without parsing rules)."""

from __future__ import annotations

import json

import pytest

from loadtest.node import NodeFactory, NodeOptions
from loadtest.sipp import SippRunner

pytestmark = pytest.mark.e2e


def test_a_json_logging_node_writes_one_object_a_line_with_the_call_id(
    voxswitch_nodes: NodeFactory, sipp: SippRunner
) -> None:
    env = {"VOXSWITCH_LOG_FORMAT": "json", "VOXSWITCH_NODE_ID": "json-node"}
    # No RTP from SIPp and a 1 s media timeout: the call's actor logs its hang-up.
    node = voxswitch_nodes.start("json-logs", NodeOptions(media_timeout_s=1, env=env))
    result = sipp(node, "uac", pause_ms=4000, timeout_s=30)
    (record,) = node.records()
    call_id = str(record["call_id"])
    lines = [json.loads(line) for line in node.stderr_text().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message", "node"} <= line.keys() for line in lines)
    assert {line["node"] for line in lines} == {"json-node"}
    about_the_call = [line for line in lines if call_id in line["message"]]
    assert len(about_the_call) >= 2, (lines, result)  # the media timeout and the end
    assert all(line.get("call_id") == call_id for line in about_the_call), about_the_call
    assert any("no RTP" in line["message"] for line in about_the_call), about_the_call
