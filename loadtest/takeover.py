"""Live-call takeover under load: how fast and how many of a dead node's calls move.

    python -m loadtest.takeover [--calls 200] [--rate 100] [--hold-s 8] [--agent none]
                                [--runs 3] [--media-workers 0]

Kamailio in front of two nodes that share Redis (``deploy/local/services.sh``). SIPp
places ``--calls`` calls through Kamailio (``takeover_call.xml``: it answers a
re-INVITE and sends its BYE to whoever sent the last one), Kamailio spreads them
over both nodes, and once every call is up one node is SIGKILLed. Measured per run:

- ``adopted``: calls the survivor took over, against the calls the dead node had
  (its ``/health`` just before the kill) — the fraction of live calls adopted;
- takeover time: from the kill to each adopted call's ``call.adopted`` event (the
  caller's 2xx to our re-INVITE: its media flows to the survivor), min/p50/p95/max;
- SIPp's failed calls (a call whose BYE found nobody fails).

Calls are up for half a second before the kill: a call answered in the checkpointer's
last round (0.1 s) before a crash has no checkpoint and cannot be adopted (a run
that killed at once showed it: 98 of 100).

``--agent demo`` adds the voice agent: each adopted call resumes its conversation
(the line is synthesised once per node, then cached).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from loadtest.kamailio import Kamailio
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.services import services_env
from loadtest.sipp import SippResult, run_sipp

SCENARIO = "takeover_call.xml"
SIPP_ARGS = ["-buff_size", "4194304"]


def events(node: NodeProcess, kind: str) -> list[dict[str, Any]]:
    path = node.workdir / "voxswitch-events.jsonl"
    if not path.exists():
        return []
    found = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [e for e in found if e["type"] == kind]


def active_calls(node: NodeProcess) -> int:
    return int(str(node.health()["active_calls"]))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run_once(
    workdir: Path, redis_url: str, *, calls: int, rate: float, hold_s: float, agent: str,
    media_workers: int,
) -> dict[str, Any]:  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    env = {
        "VOXSWITCH_REDIS_URL": redis_url,
        "VOXSWITCH_CLUSTER": f"bench-{tag}",
        "VOXSWITCH_AGENT": agent,
        "VOXSWITCH_MEDIA_WORKERS": str(media_workers),
        "VOXSWITCH_DRAIN_GRACE_S": "2",
    }
    factory = NodeFactory(workdir, env)
    balancer: Kamailio | None = None
    try:
        nodes = []
        for name in ("node-a", "node-b"):
            options = NodeOptions(media_timeout_s=0, max_calls=20000,
                                  rtp_port_count=2 * calls + 200,
                                  env={"VOXSWITCH_NODE_ID": f"{name}-{tag}"})  # fmt: skip
            nodes.append(factory.start(name, options))
        balancer = Kamailio(workdir / "kamailio", [(n.host, n.sip_port, n.name) for n in nodes],
                            children=1)  # fmt: skip
        balancer.start()
        results: list[SippResult] = []
        sipp = threading.Thread(target=lambda: results.append(run_sipp(
            balancer.sip_address if balancer else "", SCENARIO, workdir=workdir / "sipp",
            calls=calls, rate=rate, pause_ms=round(hold_s * 1000),
            timeout_s=calls / rate + hold_s + 60, extra_args=SIPP_ARGS,
        )))  # fmt: skip
        sipp.start()
        deadline = time.monotonic() + calls / rate + 10
        while sum(active_calls(n) for n in nodes) < calls and time.monotonic() < deadline:
            time.sleep(0.05)
        # Every call answered and checkpointed (within the checkpointer's 0.1 s round): a
        # call answered in the last round before a crash has no checkpoint yet.
        time.sleep(0.5)
        survivor, doomed = nodes
        had = active_calls(doomed)
        up = active_calls(survivor) + had
        assert doomed.process is not None
        doomed.process.kill()
        killed_at = time.time()
        doomed.process.wait(10)
        sipp.join(calls / rate + hold_s + 90)
        time.sleep(1.0)  # the last records and events
        dead = f"node-b-{tag}"
        adopted = [e for e in events(survivor, "call.adopted") if e["from_node"] == dead]
        delays = [e["ts"] - killed_at for e in adopted]
        rebinds = [e["rebind_s"] for e in adopted if e["rebind_s"] is not None]
        result = results[0] if results else None
        return {
            "calls": calls, "rate": rate, "agent": agent, "media_workers": media_workers,
            "up_at_kill": up, "dead_node_had": had, "adopted": len(adopted),
            "adopted_fraction": round(len(adopted) / had, 4) if had else None,
            "takeover_s": {
                "min": round(min(delays), 3), "p50": round(statistics.median(delays), 3),
                "p95": round(percentile(delays, 95), 3), "max": round(max(delays), 3),
            } if delays else None,
            "rebind_s_p50": round(statistics.median(rebinds), 4) if rebinds else None,
            "sipp_successful": result.successful_calls if result else None,
            "sipp_failed": result.failed_calls if result else None,
            "records_on_survivor": len(survivor.records()),
        }  # fmt: skip
    finally:
        if balancer is not None:
            balancer.stop()
        factory.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--hold-s", type=float, default=8.0, help="after the re-INVITE window")
    parser.add_argument("--agent", default="none")
    parser.add_argument("--media-workers", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    redis_url = services_env()["VOXSWITCH_REDIS_URL"]
    machine = platform.processor() or platform.machine()
    print(json.dumps({"cpus": os.cpu_count(), "machine": machine}))
    with tempfile.TemporaryDirectory(prefix="takeover-bench-") as tmp:
        for run in range(args.runs):
            summary = run_once(
                Path(tmp) / f"run-{run}", redis_url, calls=args.calls, rate=args.rate,
                hold_s=args.hold_s, agent=args.agent, media_workers=args.media_workers,
            )  # fmt: skip
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
