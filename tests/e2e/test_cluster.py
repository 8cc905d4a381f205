"""Kamailio (deploy/kamailio/kamailio.cfg) in front of two real nodes, driven by SIPp.

- calls spread over both nodes, each in-dialog request (ACK, BYE) routed back
  through Kamailio by its Record-Route;
- a node SIGKILLed: within the probe interval every new call goes to the survivor,
  and none fails;
- a node draining (SIGTERM with calls up: OPTIONS 503) gets no new calls, while its
  own calls end normally through Kamailio.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest.kamailio import Kamailio
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, run_sipp

pytestmark = pytest.mark.e2e

PROBE_S = 1
SCENARIO = "proxied_call.xml"


@pytest.fixture
def cluster(
    voxswitch_nodes: NodeFactory, tmp_path: Path
) -> Iterator[tuple[Kamailio, list[NodeProcess]]]:
    # A drain long enough for the draining test's calls to end by their own BYE.
    env = {"VOXSWITCH_AGENT": "none", "VOXSWITCH_DRAIN_GRACE_S": "30"}
    options = NodeOptions(media_timeout_s=0, env=env)
    nodes = [voxswitch_nodes.start(name, options) for name in ("node-a", "node-b")]
    balancer = Kamailio(
        tmp_path / "kamailio",
        [(node.host, node.sip_port, node.name) for node in nodes],
        probe_s=PROBE_S,
    )
    balancer.check()
    balancer.start()
    try:
        yield balancer, nodes
    finally:
        balancer.stop()


def calls_through(
    balancer: Kamailio, workdir: Path, *, calls: int, rate: float, pause_ms: int
) -> SippResult:
    return run_sipp(
        balancer.sip_address, SCENARIO, workdir=workdir, calls=calls, rate=rate,
        pause_ms=pause_ms, timeout_s=60,
    )  # fmt: skip


def in_background(run: Callable[[], SippResult]) -> tuple[threading.Thread, list[SippResult]]:
    results: list[SippResult] = []
    thread = threading.Thread(target=lambda: results.append(run()), daemon=True)
    thread.start()
    return thread, results


def served(node: NodeProcess) -> list[str]:
    return [str(r["call_id"]) for r in node.records()]


def active_calls(node: NodeProcess) -> int:
    with urllib.request.urlopen(node.health_url, timeout=5) as response:
        return int(json.loads(response.read())["active_calls"])


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_calls_spread_over_both_nodes_and_dialogs_route_back_through_kamailio(
    cluster: tuple[Kamailio, list[NodeProcess]], tmp_path: Path
) -> None:
    balancer, (a, b) = cluster
    result = calls_through(balancer, tmp_path / "sipp", calls=20, rate=10, pause_ms=1500)
    assert result.successful_calls == 20 and result.failed_calls == 0, balancer.log()
    wait_until("20 records", lambda: len(served(a)) + len(served(b)) == 20)
    # Fewest calls in progress first: at 10 calls/s of 1.5 s each, both take half.
    assert 7 <= len(served(a)) <= 13 and 7 <= len(served(b)) <= 13, balancer.routed()
    for record in a.records() + b.records():
        assert record["disposition"] == "completed", record  # the BYE reached the node


def test_a_killed_node_loses_no_call_and_is_out_of_rotation_within_the_probe_interval(
    cluster: tuple[Kamailio, list[NodeProcess]], tmp_path: Path
) -> None:
    balancer, (a, b) = cluster
    warm = calls_through(balancer, tmp_path / "sipp-1", calls=4, rate=20, pause_ms=200)
    assert warm.successful_calls == 4, balancer.log()
    assert b.process is not None
    b.process.kill()  # SIGKILL: no drain, no goodbye
    b.process.wait(5)
    # At once: the calls Kamailio still sends to b time out there (1 s) and go to a.
    during = calls_through(balancer, tmp_path / "sipp-2", calls=10, rate=20, pause_ms=200)
    assert during.successful_calls == 10 and during.failed_calls == 0, balancer.log()
    time.sleep(2 * PROBE_S + 1.5)  # two probes missed (the second's 1 s timeout), a margin
    log_from = len(balancer.log_path.read_text(errors="replace"))
    before = set(served(a))
    result = calls_through(balancer, tmp_path / "sipp-3", calls=20, rate=20, pause_ms=200)
    assert result.successful_calls == 20 and result.failed_calls == 0, balancer.log()
    wait_until("the survivor's records", lambda: len(set(served(a)) - before) == 20)
    after = balancer.log_path.read_text(errors="replace")[log_from:]
    assert after.count(f"new call to sip:{a.host}:{a.sip_port}") == 20, after
    assert "failed" not in after, after  # not one INVITE tried the dead node


def test_a_draining_node_gets_no_new_calls_and_its_own_end_normally(
    cluster: tuple[Kamailio, list[NodeProcess]], tmp_path: Path
) -> None:
    balancer, (a, b) = cluster
    # Four long calls: two land on each node (the least-loaded node first).
    thread, long_calls = in_background(
        lambda: calls_through(balancer, tmp_path / "sipp-long", calls=4, rate=20, pause_ms=8000)
    )
    wait_until("calls on both nodes", lambda: active_calls(a) >= 1 and active_calls(b) >= 1)
    assert b.process is not None
    b.process.terminate()  # SIGTERM: b drains, answering OPTIONS with 503
    time.sleep(2 * PROBE_S + 1.0)  # two probes answered 503
    before_a = set(served(a))
    result = calls_through(balancer, tmp_path / "sipp-new", calls=10, rate=20, pause_ms=200)
    assert result.successful_calls == 10 and result.failed_calls == 0, (result, balancer.log())
    wait_until("the new calls' records", lambda: len(set(served(a)) - before_a) >= 10)
    thread.join(60)
    (long_result,) = long_calls
    assert long_result.successful_calls == 4, balancer.log()  # b's calls ended by BYE
    b.process.wait(30)
    b_records = b.records()
    assert len(b_records) == 2 and all(r["disposition"] == "completed" for r in b_records)
