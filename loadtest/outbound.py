"""Outbound benchmark: how fast one node places calls, paced, through a trunk.

    python -m loadtest.outbound [--rates 50,100,200,400] [--step-s 10] [--hold-s 2]

For each rate: a fresh SIPp UAS plays the carrier and the callees (built-in ``uas``:
180, 200, then waits for our BYE), a fresh node (``agent = none``, maximum call
duration ``--hold-s`` so the node hangs up; ``--agent demo`` runs the conversation
on every call) gets a trunk to it, and a campaign of
``rate * step_s`` numbers at ``rate`` calls per second, unlimited concurrency. The
pace is measured where it matters, at the callee: the INVITE arrival times in SIPp's
message log. A step passes when every call completed and the measured rate is within
±10% of the asked one (the campaign contract). Node on CPU 1, SIPp on CPU 0 when
there are two cores.

Past capacity (a rate above what the node can carry, e.g. ``--rates 1500 --agent
demo``) the node's overload control refuses the campaign's excess attempts (503
inside the node: nothing is sent) and the campaign puts each refused number back for
the refusal's Retry-After. What to look for then: every number completed in the end
(none ``failed``), ``goodput_cps`` (completed calls over the campaign's duration)
near the node's capacity, ``refused`` (the node's attempts refused for overload) and
no INVITE retransmission at the callee (``invite_retransmissions``).

``--inbound-cps N`` also sends the node N inbound calls per second for ``--step-s``
while the campaign runs (SIPp ``overload_uac.xml``: a short call, or a 503 ACKed):
does the campaign leave inbound callers their share? Reported under ``inbound``:
completed, refused (503), failed and INVITE retransmissions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest.cps import OUT_DIR, SIPP_BUFFER_BYTES, machine_summary
from loadtest.node import NodeOptions, NodeProcess
from loadtest.overload import COUNTERS, SIPP_ARGS
from loadtest.sipp import (
    SippResult,
    SippServer,
    received_times,
    run_sipp,
    sipp_binary,
    sipp_version,
)

KEY = "bench-admin-key-0123456789"


def call_api(node: NodeProcess, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        node.health_url.replace("/health", path), data=data, method=method
    )
    request.add_header("Authorization", f"Bearer {KEY}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def run_campaign(
    node: NodeProcess, trunk: str, numbers: list[dict[str, str]], cps: float, deadline: float
) -> Any:
    """A campaign of one attempt per number through ``trunk``; its view once it is over
    (or at ``deadline``, a monotonic time)."""
    view = call_api(node, "POST", "/v1/campaigns", {
        "numbers": numbers, "trunk": trunk, "cps": cps, "max_concurrent": 10_000,
        "retry": {"max_attempts": 1}})  # fmt: skip
    path = f"/v1/campaigns/{view['campaign_id']}"
    while time.monotonic() < deadline:
        view = call_api(node, "GET", path)
        if view["state"] in ("completed", "canceled"):
            break
        time.sleep(0.5)
    return view


def step(
    rate: int, step_s: float, hold_s: float, run_dir: Path, pinned: bool, agent: str,
    node_env: dict[str, str] | None = None, inbound_cps: float = 0.0,
) -> dict[str, Any]:
    calls = int(rate * step_s)
    work = run_dir / f"rate-{rate}"
    uas = SippServer(
        "uas", workdir=work / "sipp", calls=calls, timeout_s=step_s + hold_s + 60,
        trace_msg=True, extra_args=["-buff_size", str(SIPP_BUFFER_BYTES)],
        cpu=0 if pinned else None,
    )  # fmt: skip
    node = NodeProcess(
        work / "node",
        NodeOptions(
            max_calls=100_000, media_timeout_s=0, max_call_duration_s=hold_s,
            log_level="warning", rtp_port_count=min(4000, rate * int(hold_s + 2) * 2 + 400),
            env={"VOXSWITCH_API_KEY": KEY, "VOXSWITCH_AGENT": agent,
                 "VOXSWITCH_TRUNKS_FILE": str(work / "trunks.json"), **(node_env or {})},
        ),
        name="outbound-node",
        cpu=1 if pinned else None,
    )  # fmt: skip
    node.start()
    try:
        call_api(node, "PUT", "/v1/trunks/bench", {"host": "127.0.0.1", "port": uas.port,
                                                    "options_interval_s": 0})  # fmt: skip
        numbers = [{"to": f"+1555{i:07d}"} for i in range(calls)]
        callers: list[SippResult] = []
        inbound = threading.Thread(target=lambda: callers.append(run_sipp(
            node.sip_address, "overload_uac.xml", workdir=work / "callers",
            calls=max(1, round(inbound_cps * step_s)), rate=inbound_cps,
            timeout_s=step_s + 60, cpu=0 if pinned else None, extra_args=SIPP_ARGS)))  # fmt: skip
        started = time.monotonic()
        if inbound_cps:
            inbound.start()
        view = run_campaign(node, "bench", numbers, rate, started + step_s * 3 + hold_s + 60)
        elapsed = time.monotonic() - started
        refused = refused_for_overload(node)
        media = node.health(timeout_s=5)["media"]  # the 20 ms schedule over the last minute
        assert isinstance(media, dict)
        result = uas.wait(timeout_s=60)
        if inbound_cps:
            inbound.join(timeout=step_s + 90)
    finally:
        uas.stop()
        node.stop(timeout_s=20)
    invites = received_times(uas.messages_log, "INVITE")
    measured = (len(invites) - 1) / (invites[-1] - invites[0]) if len(invites) > 1 else 0.0
    completed = view["dispositions"].get("completed", 0) + view["dispositions"].get(
        "max_duration", 0
    )
    ok = (
        view["state"] == "completed"
        and completed == calls
        and result.failed_calls == 0
        and abs(measured - rate) <= 0.1 * rate
    )
    return {
        "rate": rate, "calls": calls, "invites_at_callee": len(invites),
        "measured_cps": round(measured, 2), "dispositions": view["dispositions"],
        "sipp_successful": result.successful_calls, "sipp_failed": result.failed_calls,
        "max_concurrent_seen": view["max_concurrent_seen"],
        "campaign_s": round(elapsed, 1), "goodput_cps": round(completed / elapsed, 1),
        # One attempt per number: INVITEs beyond one per number are our retransmissions;
        # SIPp's own are its 200 OKs resent while our ACK was late.
        "refused": refused, "invite_retransmissions": max(0, len(invites) - calls),
        "uas_retransmissions": result.retransmissions,
        "media_p99_ms": media["tick_lateness_p99_ms"],
        "media_max_ms": media["tick_lateness_max_ms"],
        "ok": ok,
        **({"inbound": _callers(callers[0])} if callers else {}),
    }  # fmt: skip


def _callers(result: SippResult) -> dict[str, int]:
    sent, retrans, refused, through = COUNTERS["overload_uac.xml"]
    return {"invites": result.count(sent), "completed": result.count(through),
            "refused": result.count(refused), "failed": result.failed_calls,
            "invite_retransmissions": result.count(retrans)}  # fmt: skip


def refused_for_overload(node: NodeProcess) -> int:
    """Attempts the node's admission control refused (ours while overloaded; any
    inbound ones for overload or max_cps)."""
    url = node.health_url.replace("/health", "/metrics")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("voxswitch_calls_refused_total{") and any(
            f'reason="{reason}"' in line for reason in ("outbound_overload", "overload", "max_cps")
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="50,100,200,400")
    parser.add_argument("--step-s", type=float, default=10.0)
    parser.add_argument("--hold-s", type=float, default=2.0)
    parser.add_argument("--agent", default="none", help="the node's agent: none or demo")
    parser.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a node setting, e.g. VOXSWITCH_OVERLOAD_BUSY=0")  # fmt: skip
    parser.add_argument("--inbound-cps", type=float, default=0.0,
                        help="inbound calls per second alongside the campaign")  # fmt: skip
    args = parser.parse_args(argv)
    node_env = dict(item.split("=", 1) for item in args.node_env)
    sipp_binary()
    run_dir = OUT_DIR / f"outbound-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    print(f"machine: {machine_summary()}; {sipp_version()}; pinned: {pinned}")
    print(f"command: python -m loadtest.outbound {' '.join(sys.argv[1:])}".rstrip())
    rows = []
    for rate in (int(r) for r in args.rates.split(",")):
        row = step(rate, args.step_s, args.hold_s, run_dir, pinned, args.agent, node_env,
                   args.inbound_cps)  # fmt: skip
        rows.append(row)
        print(json.dumps(row))
        if not row["ok"]:
            break
    best = max((r["rate"] for r in rows if r["ok"]), default=0)
    print(f"highest rate paced within ±10% with every call completed: {best} calls/s")
    (run_dir / "steps.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if best else 1


if __name__ == "__main__":
    raise SystemExit(main())
