"""Calls per second through Kamailio: one node behind it against two.

    python -m loadtest.cluster [--rates 100,200,300] [--step-s 15] [--hold-ms 1000]
                               [--children 2]

For each layout — a node direct (no balancer; SIPp's ``uac``), Kamailio + 1 node,
Kamailio + 2 nodes (``loadtest/scenarios/proxied_call.xml``: a record-routed call) —
SIPp offers each rate for ``--step-s`` (calls held ``--hold-ms``, no RTP; the nodes
run ``agent = none``; Kamailio with ``--children`` UDP workers — the scenario takes a
180 relayed after its 200, as any UAC must) and
the step counts calls completed per second and failed calls. A layout's figure is the
highest rate it held with no failed call; the ratio of two nodes to one is the
scale-out. Every process shares this machine's cores (say how many with the figures):
on a 2-core machine the nodes, Kamailio and SIPp all compete, so the ratio says how
much a second node adds *here*, not on separate hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.kamailio import Kamailio
from loadtest.node import NodeFactory, NodeOptions
from loadtest.sipp import run_sipp

SCENARIO = "proxied_call.xml"  # through Kamailio: follows its Record-Route
DIRECT_SCENARIO = "uac"  # SIPp's own call, for the node without a proxy
SIPP_ARGS = ["-buff_size", "4194304"]


@dataclass
class Step:
    layout: str
    offered_cps: float
    completed: int
    failed: int
    elapsed_s: float

    @property
    def completed_cps(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s else 0.0


def run_layout(
    layout: str, nodes: int, rates: list[float], step_s: float, hold_ms: int, workdir: Path,
    children: int = 2,
) -> list[Step]:
    factory = NodeFactory(workdir / layout, {"VOXSWITCH_AGENT": "none"})
    balancer: Kamailio | None = None
    steps: list[Step] = []
    try:
        started = [
            factory.start(
                f"node-{i}", NodeOptions(media_timeout_s=0, max_calls=20000, rtp_port_count=1200)
            )
            for i in range(nodes)
        ]
        target = started[0].sip_address
        if layout != "direct":
            balancer = Kamailio(
                workdir / layout / "kamailio",
                [(n.host, n.sip_port, n.name) for n in started],
                children=children,  # Kamailio's UDP workers
            )
            balancer.start()
            target = balancer.sip_address
        for rate in rates:
            calls = int(rate * step_s)
            scenario = DIRECT_SCENARIO if balancer is None else SCENARIO
            result = run_sipp(
                target, scenario, workdir=workdir / layout / f"sipp-{rate:g}", calls=calls,
                rate=rate, pause_ms=hold_ms, timeout_s=step_s + 60, extra_args=SIPP_ARGS,
            )  # fmt: skip
            step = Step(layout, rate, result.successful_calls, result.failed_calls,
                        result.elapsed_s - hold_ms / 1000)  # fmt: skip
            print(json.dumps({**asdict(step), "completed_cps": round(step.completed_cps, 1)}))
            steps.append(step)
            if step.failed:
                break  # past this layout's capacity: higher rates only fail more
    finally:
        if balancer is not None:
            balancer.stop()
        factory.stop_all()
    return steps


def held(steps: list[Step]) -> float:
    """The highest offered rate a layout took with no failed call."""
    return max((s.offered_cps for s in steps if s.failed == 0 and s.completed), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="50,100,150,200,300")
    parser.add_argument("--step-s", type=float, default=15.0)
    parser.add_argument("--hold-ms", type=int, default=1000)
    parser.add_argument("--children", type=int, default=2, help="Kamailio's UDP workers")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    summary: dict[str, object] = {"cpus": os.cpu_count(), "machine": platform.processor()}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        for layout, nodes in (("direct", 1), ("kamailio-1", 1), ("kamailio-2", 2)):
            steps = run_layout(layout, nodes, rates, args.step_s, args.hold_ms, Path(tmp),
                               args.children)  # fmt: skip
            summary[layout] = held(steps)
    one, two = summary["kamailio-1"], summary["kamailio-2"]
    if isinstance(one, float) and isinstance(two, float) and one:
        summary["ratio_2_to_1"] = round(two / one, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
