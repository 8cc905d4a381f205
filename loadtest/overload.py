"""Overload benchmark: offered 2× and 3× the zero-failure rate, does the node shed the
excess and keep its goodput?

    python -m loadtest.overload [--zero-rate 400] [--multiples 1,2,3,1] [--step-s 30]

Starts its own node (the default demo agent: every call runs a conversation), then
runs SIPp with ``loadtest/scenarios/overload_uac.xml`` (a short call, or a 503 that
is ACKed) at ``multiple × zero-rate`` calls per second for ``--step-s`` each, one step
after the other with no pause, so the last 1× step shows the recovery. Per step:

- completed calls per second (the BYE's 200 received) against the zero-failure rate:
  the target is at least 90 % of it at 2× and 3×;
- refused calls (503) and how fast the 503 came (SIPp's response time 2, every one
  from -trace_rtt): the target is p99 under 50 ms;
- INVITE retransmissions per INVITE sent: the target is under 5 %;
- failed calls (a timeout, another answer): the target is none;
- the node's admission view each second (/health: limit, loop busy, queue delay).

``--zero-rate`` is the rate ``make bench`` (``python -m loadtest.cps``) finds with zero
failed calls on the same machine; measure it first. Node on CPU 1, SIPp on CPU 0.
Writes JSON and Markdown under loadtest/out/; loadtest/RESULTS.md keeps the figures.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.node import NodeOptions, NodeProcess
from loadtest.sipp import SippResult, run_sipp, sipp_version

OUT_DIR = Path(__file__).resolve().parent / "out"
SCENARIO = "overload_uac.xml"
# Per scenario, the -trace_counts names of: INVITEs sent, their retransmissions, the
# 503s, and the calls that went through (a completed call; a cancelled one).
COUNTERS = {
    "overload_uac.xml": ("1_INVITE_Sent", "1_INVITE_Retrans", "4_503_Recv", "8_200_Recv"),
    "cancel_storm.xml": ("1_INVITE_Sent", "1_INVITE_Retrans", "3_503_Recv", "7_487_Recv"),
}
SIPP_ARGS = [
    "-buff_size", "4194304",
    "-max_recv_loops", "5000",
    "-max_sched_loops", "5000",
    "-trace_rtt", "-rtt_freq", "1",
]  # fmt: skip


@dataclass
class StepResult:
    multiple: float
    offered_cps: float
    achieved_cps: float  # SIPp's call rate
    invites: int
    completed: int
    refused: int
    failed: int
    invite_retransmissions: int
    completed_cps: float
    refusal_ms_p50: float | None
    refusal_ms_p99: float | None
    refusal_ms_max: float | None
    answer_ms_p50: float | None
    answer_ms_p99: float | None
    admission: list[dict[str, Any]] = field(default_factory=list)

    @property
    def retrans_pct(self) -> float:
        return 100.0 * self.invite_retransmissions / max(1, self.invites)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def response_times(workdir: Path) -> dict[int, list[float]]:
    """SIPp's -trace_rtt file(s): every response time (ms) by its rtd number."""
    times: dict[int, list[float]] = {}
    for path in workdir.glob("*_rtt.csv"):
        with path.open(newline="") as fh:
            for row in csv.reader(fh, delimiter=";"):
                if len(row) < 3 or not row[1].replace(".", "", 1).isdigit():
                    continue
                times.setdefault(int(row[2]), []).append(float(row[1]))
    return times


class AdmissionSampler:
    """The node's /health admission view, once a second, in the background."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AdmissionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                health = self.node.health(timeout_s=2.0)
            except (OSError, ValueError):
                continue
            admission = health.get("admission")
            if isinstance(admission, dict):
                self.samples.append(admission)


def run_step(node: NodeProcess, zero_rate: float, multiple: float, step_s: float,
             run_dir: Path, scenario: str = SCENARIO) -> StepResult:  # fmt: skip
    rate = zero_rate * multiple
    calls = max(1, round(rate * step_s))
    workdir = run_dir / f"step-{multiple:g}x-{time.monotonic_ns()}"
    with AdmissionSampler(node) as sampler:
        result: SippResult = run_sipp(
            node.sip_address, scenario, workdir=workdir, calls=calls, rate=rate,
            timeout_s=step_s + 40, cpu=0, extra_args=SIPP_ARGS,
        )  # fmt: skip
    times = response_times(workdir)
    refusals, answers = times.get(2, []), times.get(1, [])
    sent, retrans, refused, through = COUNTERS[scenario]
    completed = max(0, result.count(through))
    elapsed = calls / max(rate, 1e-9)
    return StepResult(
        multiple=multiple,
        offered_cps=rate,
        achieved_cps=result.call_rate,
        invites=max(0, result.count(sent)),
        completed=completed,
        refused=max(0, result.count(refused)),
        failed=result.failed_calls,
        invite_retransmissions=max(0, result.count(retrans)),
        completed_cps=completed / elapsed,
        refusal_ms_p50=percentile(refusals, 50),
        refusal_ms_p99=percentile(refusals, 99),
        refusal_ms_max=max(refusals) if refusals else None,
        answer_ms_p50=percentile(answers, 50),
        answer_ms_p99=percentile(answers, 99),
        admission=sampler.samples,
    )


def verdicts(step: StepResult, zero_rate: float) -> list[str]:
    """What the step missed of the targets (empty: all met)."""
    missed = []
    if step.failed:
        missed.append(f"{step.failed} failed calls")
    if step.retrans_pct >= 5.0:
        missed.append(f"INVITE retransmissions {step.retrans_pct:.1f} %")
    if step.refusal_ms_p99 is not None and step.refusal_ms_p99 >= 50.0:
        missed.append(f"503 p99 {step.refusal_ms_p99:.0f} ms")
    if step.multiple > 1 and step.completed_cps < 0.9 * zero_rate:
        missed.append(f"goodput {step.completed_cps / zero_rate:.0%} of the zero-failure rate")
    if step.multiple <= 1 and step.refused:
        missed.append(f"{step.refused} refused at {step.multiple:g}×")
    return missed


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(steps: list[StepResult], zero_rate: float, meta: dict[str, Any]) -> str:
    lines = [
        f"# Overload, {meta['date']}", "",
        f"machine: {meta['machine']}; {meta['sipp']}", f"node: {meta['node']}",
        f"zero-failure rate: {zero_rate:g} calls/s", "",
        "| offered | completed/s (of zero-failure) | refused | failed | INVITE retrans "
        "| 503 p50 / p99 / max ms | 200 p50 / p99 ms | admission limit (min–max) "
        "| loop busy (mean) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for s in steps:
        limits = [a["limit_cps"] for a in s.admission if a.get("limit_cps") is not None]
        busy = [a["loop_busy"] for a in s.admission if "loop_busy" in a]
        limit_text = f"{min(limits):.0f}–{max(limits):.0f}" if limits else "none"
        busy_text = f"{statistics.mean(busy):.2f}" if busy else "-"
        missed = verdicts(s, zero_rate)
        lines.append(
            f"| {s.multiple:g}× = {s.offered_cps:.0f}/s | {s.completed_cps:.1f} "
            f"({s.completed_cps / zero_rate:.0%}) | {s.refused} | {s.failed} "
            f"| {s.invite_retransmissions} ({s.retrans_pct:.2f} %) "
            f"| {_fmt(s.refusal_ms_p50)} / {_fmt(s.refusal_ms_p99)} / {_fmt(s.refusal_ms_max)} "
            f"| {_fmt(s.answer_ms_p50)} / {_fmt(s.answer_ms_p99)} | {limit_text} | {busy_text} "
            f"| {'; '.join(missed) or 'ok'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zero-rate", type=float, default=400.0,
                        help="the zero-failure rate from make bench (400)")  # fmt: skip
    parser.add_argument("--multiples", default="1,2,3,1", help="offered rates, × zero-rate")
    parser.add_argument("--step-s", type=float, default=30.0, help="seconds per step (30)")
    parser.add_argument("--warmup-s", type=float, default=40.0,
                        help="seconds at 0.75 × zero-rate first (40: a steady state)")  # fmt: skip
    parser.add_argument("--agent", default="demo", help="the node's agent (demo)")
    parser.add_argument("--scenario", default=SCENARIO, choices=sorted(COUNTERS),
                        help="overload_uac.xml (calls) or cancel_storm.xml (with a "
                        "--node-arg=--ring-ms --node-arg=2000 node)")  # fmt: skip
    parser.add_argument("--node-arg", action="append", default=[],
                        help="an extra 'voxswitch serve' argument (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    multiples = [float(m) for m in args.multiples.split(",") if m.strip()]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = OUT_DIR / f"overload-{stamp}"
    node = NodeProcess(
        run_dir,
        NodeOptions(
            log_level="warning", media_timeout_s=0, max_calls=100_000, rtp_port_count=4000,
            extra_args=["--agent", args.agent, *args.node_arg],
        ),
        cpu=1,
    )  # fmt: skip
    node.start()
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
        "sipp": sipp_version(),
        "node": " ".join(node.command()),
    }
    try:
        # Warm up past RFC 3261's 32 s of completed transactions: before then none
        # expires, and the node looks cheaper per call than it is in a steady state.
        warm_rate = args.zero_rate * 0.75
        run_sipp(node.sip_address, args.scenario, workdir=run_dir / "warmup",
                 calls=round(warm_rate * args.warmup_s), rate=warm_rate,
                 timeout_s=args.warmup_s + 30, cpu=0, extra_args=SIPP_ARGS)  # fmt: skip
        steps = []
        for multiple in multiples:
            step = run_step(node, args.zero_rate, multiple, args.step_s, run_dir, args.scenario)
            steps.append(step)
            missed = "; ".join(verdicts(step, args.zero_rate)) or "ok"
            print(f"{multiple:g}×: completed {step.completed_cps:.1f}/s, refused {step.refused}, "
                  f"failed {step.failed}, retrans {step.retrans_pct:.2f} %, 503 p99 "
                  f"{_fmt(step.refusal_ms_p99)} ms: {missed}", flush=True)  # fmt: skip
    finally:
        node.stop()
    report = markdown(steps, args.zero_rate, meta)
    (run_dir / "report.md").write_text(report)
    rows = [asdict(s) | {"retrans_pct": s.retrans_pct} for s in steps]
    body = {"meta": meta, "zero_rate": args.zero_rate, "steps": rows}
    (run_dir / "report.json").write_text(json.dumps(body, indent=1))
    print(report)
    print(f"written to {run_dir}")
    return 0 if all(not verdicts(s, args.zero_rate) for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
