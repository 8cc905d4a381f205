"""``GET /metrics`` on a running node, after real SIPp calls."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippRunner
from tests.e2e.api_client import ADMIN
from tests.e2e.polling import wait_for


def scrape(node: NodeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics with the admin key (the node must have it: /metrics is keyed)."""
    url = node.health_url.replace("/health", "/metrics")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_count_calls_responses_and_the_spool(
    voxswitch_nodes: NodeFactory, sipp: SippRunner
) -> None:
    env = {"VOXSWITCH_API_KEY": ADMIN}
    node = voxswitch_nodes.start("metrics", NodeOptions(media_timeout_s=0, env=env))
    before = scrape(node)
    assert before[("voxswitch_up", ())] == 1
    assert before[("voxswitch_active_calls", ())] == 0
    assert before[("voxswitch_calls_offered_total", ())] == 0
    result = sipp(node, "uac", calls=3, rate=10, pause_ms=200)
    assert result.successful_calls == 3
    # A record is written just after the call's last response leaves.
    records = wait_for("3 call records", lambda: (r := node.records()) and len(r) == 3 and r, 10)
    m = scrape(node)
    assert m[("voxswitch_calls_offered_total", ())] == 3
    assert m[("voxswitch_calls_ended_total", (("direction", "inbound"),
                                              ("disposition", "completed")))] == 3  # fmt: skip
    assert m[("voxswitch_sip_responses_sent_total", (("code", "200"),))] >= 6  # INVITEs, BYEs
    assert m[("voxswitch_sip_responses_sent_total", (("code", "180"),))] == 3
    assert m[("voxswitch_active_calls", ())] == 0
    # The last events leave the spool within the courier's linger (20 ms).
    deadline = time.monotonic() + 5
    while m[("voxswitch_outbox_depth", (("sink", "file"),))] and time.monotonic() < deadline:
        time.sleep(0.05)
        m = scrape(node)
    assert m[("voxswitch_outbox_depth", (("sink", "file"),))] == 0
    assert m[("voxswitch_sink_up", (("sink", "file"),))] == 1
    assert m[("voxswitch_checkpoints_up", ())] == 1
    assert m[("voxswitch_event_loop_lag_seconds_count", ())] > 0
    with_loss = sum(1 for r in records if r["media"].get("rx_loss_pct") is not None)  # type: ignore[union-attr]
    assert m[("voxswitch_rtp_loss_ratio_count", ())] == with_loss
    assert ("voxswitch_turn_latency_seconds_bucket", (("le", "1.0"),)) in m
    assert ("voxswitch_media_tick_lateness_seconds", (("quantile", "0.99"),)) in m
