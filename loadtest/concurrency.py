"""Concurrent media calls: the most calls one node holds with voice running on each.

    python -m loadtest.concurrency [--calls 250,500,750,1000] [--hold-s 40] [--rate 50]
                                   [--workers 2]
    make bench-media BENCH_ARGS="--calls 500,1000"

For each N, a fresh node (the default demo agent: VAD on every inbound stream,
the spoken greeting then silence paced out on every outbound stream) and SIPp's
``media_call.xml``: N calls, each streaming quiet audio (``caller.ulaw``, looped)
for ``--hold-s`` seconds. While all N are up the node's ``/health`` is sampled:
its own measure of the 20 ms send schedule (how late the last packet of each tick
left, over the last minute), its RSS (from /proc) against its RSS idle, and the
number of calls it holds. N passes when no call failed and the schedule's p99
lateness stayed under ``--max-p99-ms`` (10 ms).

``--record`` records every call (``record = all``): the verdict then also needs one
whole WAV per call; the files are counted, measured and deleted after each level.

``--workers`` (default 2) is the node's ``media_workers``: its calls' media runs in
that many worker processes (0: on the node's own loop). The node is pinned to CPU 1,
SIPp to CPU 0, and media worker i to CPU i mod 2 when there are two cores. The
caller audio is quiet noise: the VAD runs on every frame but hears no speech, so
no call asks the recogniser for anything (that load is per turn, not per call).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from threading import Thread

import numpy as np

from loadtest.cps import OUT_DIR, SIPP_BUFFER_BYTES, machine_summary
from loadtest.node import NodeOptions, NodeProcess
from loadtest.sipp import SippResult, run_sipp, sipp_version
from media.g711 import ulaw_encode


@dataclass
class Level:
    calls: int
    successful: int
    failed: int
    peak_calls: int  # most calls the node reported at once
    p50_ms: float
    p99_ms: float
    max_ms: float
    late_ticks: int
    rss_idle_mb: float
    rss_peak_mb: float
    verdict: str
    recordings: int = 0  # WAV files written (with --record)
    recorded_s: float = 0.0  # their total duration

    @property
    def mb_per_call(self) -> float:
        return (self.rss_peak_mb - self.rss_idle_mb) / max(1, self.peak_calls)


def caller_audio(seconds: float = 10.0, dbfs: float = -50.0, seed: int = 7) -> bytes:
    """Quiet noise as headerless µ-law: audio the VAD must process but never call speech."""
    rng = np.random.default_rng(seed)
    level = 32767 * 10 ** (dbfs / 20)
    pcm = np.clip(rng.normal(0, level, int(seconds * 8000)), -32768, 32767).astype(np.int16)
    return ulaw_encode(pcm)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wav_whole(path: Path) -> bool:
    """The header's data size is the file's length past the header (the node closed it)."""
    with path.open("rb") as file:
        header = file.read(44)
    return len(header) == 44 and int.from_bytes(header[40:44], "little") == (
        path.stat().st_size - 44
    )


def run_level(calls: int, args: argparse.Namespace, run_dir: Path, pinned: bool) -> Level:
    recordings = run_dir / f"recordings-{calls}"
    record_env = (
        {"VOXSWITCH_RECORD": "all", "VOXSWITCH_RECORDINGS_DIR": str(recordings)}
        if args.record else {}
    )  # fmt: skip
    node = NodeProcess(
        run_dir / f"node-{calls}",
        NodeOptions(
            max_calls=calls + 100,
            media_timeout_s=0,
            log_level="warning",
            rtp_port_count=2 * calls + 20,
            env={
                "VOXSWITCH_DRAIN_GRACE_S": "2",
                "VOXSWITCH_AGENT": args.agent,
                "VOXSWITCH_MEDIA_WORKERS": str(args.workers),
                **record_env,
            },
        ),
        name=f"media-node-{calls}",
        cpu=1 if pinned else None,
    )
    node.start(timeout_s=60)
    assert node.process is not None
    pid = node.process.pid
    time.sleep(1.0)
    media_info = node.health().get("media")
    assert isinstance(media_info, dict)
    workers = [int(w) for w in media_info.get("workers", [])]
    if pinned:
        # The node's loop stays on CPU 1 (SIP and the conversations: light once the
        # calls are up); media worker i goes to CPU i mod cores, so with two workers
        # one shares CPU 0 with SIPp and the other CPU 1 with the node.
        cores = os.cpu_count() or 1
        for i, worker in enumerate(workers):
            os.sched_setaffinity(worker, {i % cores})
    pids = [pid, *workers]
    rss_idle = sum(rss_mb(p) for p in pids)
    ramp_s = calls / args.rate
    result: list[SippResult] = []
    sipp_args = [
        "-buff_size", str(SIPP_BUFFER_BYTES),
        "-recv_timeout", "10000",
    ]  # fmt: skip

    def sipp() -> None:
        result.append(
            run_sipp(
                node.sip_address,
                "media_call.xml",
                workdir=run_dir / f"sipp-{calls}",
                calls=calls,
                rate=args.rate,
                call_limit=calls,
                pause_ms=int(args.hold_s * 1000),
                timeout_s=ramp_s + args.hold_s + 60,
                cpu=0 if pinned else None,
                files={"caller.ulaw": caller_audio()},
                extra_args=sipp_args,
            )
        )

    runner = Thread(target=sipp)
    runner.start()
    peak, rss_peak, health = 0, rss_idle, {}
    # Sample while every call is up: from the end of the ramp to the end of the hold.
    deadline = time.monotonic() + ramp_s + args.hold_s
    time.sleep(min(ramp_s + 2.0, ramp_s + args.hold_s))
    while time.monotonic() < deadline - 1.0 and runner.is_alive():
        try:
            health = node.health(timeout_s=3.0)
        except (OSError, ValueError):
            break
        active = int(health.get("active_calls", 0))  # type: ignore[call-overload]
        peak = max(peak, active)
        rss_peak = max(rss_peak, sum(rss_mb(p) for p in pids))
        time.sleep(1.0)
    media = health.get("media", {}) if health else {}
    assert isinstance(media, dict)
    runner.join()
    node.stop(timeout_s=30)
    sipp_result = result[0] if result else None
    failed = sipp_result.failed_calls if sipp_result else calls
    ok = sipp_result.successful_calls if sipp_result else 0
    p99 = float(media.get("tick_lateness_p99_ms", float("nan")))
    verdict = "ok"
    if failed or ok != calls:
        verdict = "failed calls"
    elif not p99 < args.max_p99_ms:
        verdict = f"p99 {p99:.1f} ms"
    elif node.tracebacks():
        verdict = "node traceback"
    files = sorted(recordings.rglob("*.wav")) if args.record else []
    recorded_s = sum(max(0, f.stat().st_size - 44) / 32000 for f in files)
    whole = sum(1 for f in files if _wav_whole(f))
    if args.record and whole != calls and verdict == "ok":
        verdict = f"{whole} whole recordings of {calls}"
    shutil.rmtree(recordings, ignore_errors=True)  # hundreds of MB: measured, not kept
    return Level(
        calls=calls,
        successful=ok,
        failed=failed,
        peak_calls=peak,
        p50_ms=float(media.get("tick_lateness_p50_ms", float("nan"))),
        p99_ms=p99,
        max_ms=float(media.get("tick_lateness_max_ms", float("nan"))),
        late_ticks=int(media.get("late_ticks", 0)),
        rss_idle_mb=rss_idle,
        rss_peak_mb=rss_peak,
        verdict=verdict,
        recordings=len(files),
        recorded_s=recorded_s,
    )


def table(levels: list[Level]) -> str:
    lines = [
        "| calls | ok | failed | peak held | tick p50 ms | p99 ms | max ms | late ticks "
        "| RSS idle MB | RSS peak MB | MB/call | recordings (hours) | verdict |",
        "|" + "---|" * 13,
    ]
    for lv in levels:
        lines.append(
            f"| {lv.calls} | {lv.successful} | {lv.failed} | {lv.peak_calls} | {lv.p50_ms:.2f} "
            f"| {lv.p99_ms:.2f} | {lv.max_ms:.2f} | {lv.late_ticks} | {lv.rss_idle_mb:.0f} "
            f"| {lv.rss_peak_mb:.0f} | {lv.mb_per_call:.2f} "
            f"| {lv.recordings} ({lv.recorded_s / 3600:.1f}) | {lv.verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.concurrency",
        description="the most concurrent media calls a node holds on time",
    )
    parser.add_argument("--calls", default="250,500,750,1000", help="levels of N to try")
    parser.add_argument("--hold-s", type=float, default=40.0, help="seconds every call lasts")
    parser.add_argument("--rate", type=float, default=50.0, help="calls per second in the ramp")
    parser.add_argument("--max-p99-ms", type=float, default=10.0, help="schedule budget (10)")
    parser.add_argument("--agent", default="demo", help="the node's agent setting (demo)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--record", action="store_true", help="record every call")
    parser.add_argument(
        "--workers", type=int, default=2, help="the node's media_workers setting (2)"
    )
    args = parser.parse_args(argv)
    levels_wanted = [int(x) for x in args.calls.split(",") if x.strip()]
    pinned = not args.no_pin and (os.cpu_count() or 1) >= 2 and bool(shutil.which("taskset"))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = OUT_DIR / f"concurrency-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_summary()}; {sipp_version()}")
    levels: list[Level] = []
    for calls in levels_wanted:
        level = run_level(calls, args, run_dir, pinned)
        levels.append(level)
        print(table([level]).splitlines()[-1], flush=True)
        if level.verdict != "ok":
            break
    best = max((lv.calls for lv in levels if lv.verdict == "ok"), default=0)
    text = "\n".join(
        [
            f"# Concurrent media calls {stamp}",
            "",
            f"- machine: {machine_summary()}",
            f"- pinning: {'node CPU 1, SIPp CPU 0' if pinned else 'none'}"
            + (f"; media worker i on CPU i mod 2 ({args.workers})" if args.workers else ""),
            f"- command: python -m loadtest.concurrency {' '.join(sys.argv[1:])}".rstrip(),
            "",
            table(levels),
            "",
            f"largest N on time with no failed call: {best}",
        ]
    )
    print("\n" + text)
    (run_dir / "summary.md").write_text(text + "\n")
    (run_dir / "levels.json").write_text(json.dumps([asdict(lv) for lv in levels], indent=2))
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
