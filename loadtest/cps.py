"""Calls-per-second benchmark: the highest rate a node takes with zero failed calls.

    python -m loadtest.cps [--start 200] [--step 100] [--max 2000] [--step-s 10]
    make bench BENCH_ARGS="--max 1000"

Starts its own node (uvloop, free loopback ports, log level warning, no media
timeout), then runs SIPp's built-in ``uac`` scenario over UDP with short calls
(INVITE, 200, ACK, BYE, 200; ``-d 0`` by default) at a rising rate: each step sends
``rate * step_s`` calls at ``rate`` calls per second. The ramp stops at the first
step with a failed call, a retransmission storm (more than ``--max-retrans-pct``
of the calls retransmitted something), a rate SIPp could not reach, or a node
that stopped answering /health. Then it bisects between the last good and the
first bad rate down to ``--resolution`` cps.

On a machine with two or more cores the node is pinned to one core and SIPp to
another (``taskset``), so each has a core of its own and the figures are steady;
on one core both share it and the figures mean less.

Prints a table and the best zero-failure rate; writes the table as Markdown and
JSON under loadtest/out/ (not committed). loadtest/RESULTS.md keeps the figures
worth keeping.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.node import NodeOptions, NodeProcess
from loadtest.services import services_env
from loadtest.sipp import SippResult, run_sipp, sipp_binary, sipp_version

OUT_DIR = Path(__file__).resolve().parent / "out"
SIPP_BUFFER_BYTES = 4 * 1024 * 1024


@dataclass
class StepResult:
    target_cps: int
    achieved_cps: float
    calls: int
    successful: int
    failed: int
    retransmissions: int
    response_ms: float
    response_p95_bucket: str
    call_length_ms: float
    sipp_exit: int
    elapsed_s: float
    verdict: str
    causes: str = ""

    @property
    def good(self) -> bool:
        return self.verdict == "ok"


@dataclass
class BenchConfig:
    start: int
    step: int
    max_cps: int
    step_s: float
    pause_ms: int
    transport: str
    resolution: int
    max_retrans_pct: float
    min_achieved_pct: float
    settle_s: float
    pin: bool
    services: bool = False  # Redis, Kafka, PostgreSQL configured on the node
    agent: str = "demo"  # the node's agent: demo (a conversation per call) or none


def percentile_bucket(repartition: dict[str, int], fraction: float = 0.95) -> str:
    """The response-time bucket (``"<10"`` ms ...) holding the given fraction of calls."""
    total = sum(repartition.values())
    if total == 0:
        return "-"
    seen = 0
    for bucket, count in repartition.items():  # SIPp writes them in rising order
        seen += count
        if seen >= fraction * total:
            return bucket
    return list(repartition)[-1]


def judge(result: SippResult, target_cps: int, calls: int, cfg: BenchConfig, node_ok: bool) -> str:
    if not node_ok:
        return "node down"
    if result.killed or result.returncode not in (0, 1):
        return f"sipp exit {result.returncode}"
    if result.failed_calls != 0 or result.successful_calls != calls:
        return "failed calls"
    if result.retransmissions > calls * cfg.max_retrans_pct / 100:
        return "retrans storm"
    if result.call_rate < target_cps * cfg.min_achieved_pct / 100:
        return "rate not reached"
    return "ok"


def run_step(node: NodeProcess, rate: int, cfg: BenchConfig, run_dir: Path) -> StepResult:
    calls = max(1, round(rate * cfg.step_s))
    cpus = os.cpu_count() or 1
    result = run_sipp(
        node.sip_address,
        "uac",
        workdir=run_dir / f"step-{rate:05d}cps-{time.monotonic_ns()}",
        transport=cfg.transport,
        calls=calls,
        rate=rate,
        pause_ms=cfg.pause_ms,
        timeout_s=cfg.step_s + 30,
        cpu=0 if cfg.pin and cpus >= 2 else None,
        extra_args=[
            "-buff_size", str(SIPP_BUFFER_BYTES),
            # A call whose next response takes over 5 s counts as failed.
            "-recv_timeout", "5000",
            "-max_recv_loops", "5000",
            "-max_sched_loops", "5000",
        ],
    )  # fmt: skip
    node_ok = node.alive()
    if node_ok:
        try:
            node.health(timeout_s=3.0)
        except (OSError, ValueError):
            node_ok = False
    causes = {
        k.removeprefix("Failed").removesuffix("(C)"): v
        for k, v in result.stats.items()
        if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and v != "0"
    }
    return StepResult(
        target_cps=rate,
        achieved_cps=result.call_rate,
        calls=calls,
        successful=result.successful_calls,
        failed=result.failed_calls,
        retransmissions=result.retransmissions,
        response_ms=result.response_time_ms,
        response_p95_bucket=percentile_bucket(result.repartition()),
        call_length_ms=result.duration_ms("CallLength(C)"),
        sipp_exit=result.returncode,
        elapsed_s=result.elapsed_s,
        verdict=judge(result, rate, calls, cfg, node_ok),
        causes=", ".join(f"{k}={v}" for k, v in causes.items())
        + ("; " + first_line(result.errors[0]) if result.errors else ""),
    )


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def table(steps: list[StepResult]) -> str:
    head = (
        "| target cps | achieved cps | calls | ok | failed | retrans | resp mean ms "
        "| resp p95 ms | call ms | verdict |"
    )
    lines = [head, "|" + "---|" * 10]
    for s in steps:
        lines.append(
            f"| {s.target_cps} | {s.achieved_cps:.1f} | {s.calls} | {s.successful} | {s.failed} "
            f"| {s.retransmissions} | {_ms(s.response_ms)} | {s.response_p95_bucket} "
            f"| {_ms(s.call_length_ms)} | {s.verdict} |"
        )
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def machine_summary() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def bench(cfg: BenchConfig) -> int:
    sipp_binary()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = OUT_DIR / f"cps-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    pinned = cfg.pin and cpus >= 2 and shutil.which("taskset") is not None
    node = NodeProcess(
        run_dir / "node",
        NodeOptions(
            max_calls=100_000,
            media_timeout_s=0,
            log_level="warning",
            rtp_port_count=2000,
            env={
                "VOXSWITCH_DRAIN_GRACE_S": "2",
                "VOXSWITCH_AGENT": cfg.agent,
                **(services_env() if cfg.services else {}),
            },
        ),
        name="bench-node",
        cpu=1 if pinned else None,
    )
    print(f"machine: {machine_summary()}")
    print(f"sipp: {sipp_version()}; python {platform.python_version()}")
    print(
        "pinning: "
        + ("node on CPU 1, SIPp on CPU 0 (taskset)" if pinned else "none (node and SIPp share)")
    )
    node.start()
    print(f"node: {' '.join(node.command())}")
    print(f"logs and SIPp runs: {run_dir}\n")
    steps: list[StepResult] = []
    try:
        steps = ramp(node, cfg, run_dir)
    finally:
        node.stop(timeout_s=20)
    tracebacks = node.tracebacks()
    best = max((s.target_cps for s in steps if s.good), default=0)
    best_step = next((s for s in steps if s.good and s.target_cps == best), None)
    summary = [
        f"# CPS benchmark {stamp}",
        "",
        f"- machine: {machine_summary()}",
        f"- SIPp: {sipp_version()}, built-in uac over {cfg.transport}, -d {cfg.pause_ms} ms, "
        f"{cfg.step_s:g} s per step",
        f"- pinning: {'node CPU 1, SIPp CPU 0' if pinned else 'none'}",
        f"- command: python -m loadtest.cps {' '.join(sys.argv[1:])}".rstrip(),
        "",
        table(steps),
        "",
        f"best zero-failure rate: {best} cps"
        + (
            f" (SIPp achieved {best_step.achieved_cps:.1f} cps, "
            f"mean response {_ms(best_step.response_ms)} ms)"
            if best_step
            else ""
        ),
    ]
    bad = [s for s in steps if not s.good]
    if bad:
        summary.append(f"first bad step: {bad[0].target_cps} cps: {bad[0].verdict} {bad[0].causes}")
    if tracebacks:
        summary.append(f"node wrote {len(tracebacks)} traceback(s): see {node.stderr_path}")
    text = "\n".join(summary)
    print("\n" + text)
    (run_dir / "summary.md").write_text(text + "\n")
    (run_dir / "steps.json").write_text(
        json.dumps([asdict(s) for s in steps], indent=2, default=str) + "\n"
    )
    return 0 if best > 0 and not tracebacks else 1


def ramp(node: NodeProcess, cfg: BenchConfig, run_dir: Path) -> list[StepResult]:
    steps: list[StepResult] = []

    def step(rate: int) -> StepResult:
        result = run_step(node, rate, cfg, run_dir)
        steps.append(result)
        print(
            f"{rate:6d} cps: {result.verdict:16s} achieved {result.achieved_cps:7.1f} "
            f"ok {result.successful}/{result.calls} failed {result.failed} "
            f"retrans {result.retransmissions} resp {_ms(result.response_ms)} ms "
            f"{result.causes}",
            flush=True,
        )
        time.sleep(cfg.settle_s)
        return result

    good, bad = 0, 0
    rate = cfg.start
    while rate <= cfg.max_cps:
        if step(rate).good:
            good = rate
            rate += cfg.step
        else:
            bad = rate
            break
        if not node.alive():
            return steps
    # Bisect between the last good and the first bad rate.
    while bad and bad - good > cfg.resolution and node.alive():
        mid = (good + bad) // 2
        if step(mid).good:
            good = mid
        else:
            bad = mid
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.cps",
        description="find the highest calls-per-second rate with zero failed calls",
    )
    parser.add_argument("--start", type=int, default=200, help="first rate, cps (200)")
    parser.add_argument("--step", type=int, default=100, help="rate increment, cps (100)")
    parser.add_argument("--max", type=int, default=2000, dest="max_cps", help="top rate (2000)")
    parser.add_argument("--step-s", type=float, default=10.0, help="seconds per step (10)")
    parser.add_argument("--pause-ms", type=int, default=0, help="call hold time, -d (0)")
    parser.add_argument("--transport", default="u1", help="SIPp -t: u1, un, t1, tn (u1)")
    parser.add_argument("--resolution", type=int, default=25, help="bisect down to, cps (25)")
    parser.add_argument(
        "--max-retrans-pct", type=float, default=1.0, help="retransmission storm above (1.0)"
    )
    parser.add_argument(
        "--min-achieved-pct", type=float, default=95.0, help="SIPp must reach this %% of rate"
    )
    parser.add_argument("--settle-s", type=float, default=2.0, help="pause between steps (2)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--agent", default="demo", help="the node's agent: demo or none (demo)")
    parser.add_argument(
        "--services",
        action="store_true",
        help="node with Redis, Kafka and PostgreSQL (deploy/local/services.sh)",
    )
    args = parser.parse_args(argv)
    if args.start <= 0 or args.step <= 0 or args.max_cps < args.start:
        parser.error("need 0 < start <= max and step > 0")
    cfg = BenchConfig(
        start=args.start,
        step=args.step,
        max_cps=args.max_cps,
        step_s=args.step_s,
        pause_ms=args.pause_ms,
        transport=args.transport,
        resolution=args.resolution,
        max_retrans_pct=args.max_retrans_pct,
        min_achieved_pct=args.min_achieved_pct,
        settle_s=args.settle_s,
        pin=not args.no_pin,
        services=args.services,
        agent=args.agent,
    )
    return bench(cfg)


if __name__ == "__main__":
    sys.exit(main())
