"""``python -m loadtest run SCENARIO``: one load run against a node, with a report.

    python -m loadtest run inbound --rate 20 --duration-s 60 --hold-s 20 --agent demo
    python -m loadtest run mix --rate 30 --duration-s 120
    python -m loadtest list

The runner starts a node of its own (``voxswitch serve`` on free loopback ports, its
settings from ``--agent``, ``--media-workers`` and ``--node-env NAME=VALUE``), drives
it with SIPp (and its API, for outbound calls) as the scenario says, samples the node
every second (``/health``: calls up and offered; ``/proc``: the CPU and RSS of the
node and its media workers) and writes, in ``--out`` (default
``loadtest/out/run-<scenario>-<time>``):

- ``report.json``: attempted, succeeded, failed (by reason: SIPp's failure classes,
  the outbound calls' dispositions), calls per second achieved, peak concurrency, SIP
  response times (p50/p95/p99/max, from SIPp's per-call ``-trace_rtt``), the node's
  CPU and RSS, the turn and recognition latencies from its call records, and the
  per-second series;
- ``report.md``: the same as tables;
- ``report.png``: calls up, calls per second, and SIP response time and node CPU,
  over time (matplotlib).

Progress is printed every ``--progress-s`` seconds. The scenarios are in ``SCENARIOS``
(and loadtest/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.cps import OUT_DIR, SIPP_BUFFER_BYTES, machine_summary
from loadtest.node import NodeOptions, NodeProcess
from loadtest.outbound import KEY, call_api, run_campaign
from loadtest.overload import percentile, response_times
from loadtest.report import write_reports
from loadtest.sipp import SippResult, SippServer, parse_duration_ms, run_sipp, sipp_version

SIPP_ARGS = ["-buff_size", str(SIPP_BUFFER_BYTES), "-trace_rtt", "-rtt_freq", "1"]
QUESTION = "what are your opening hours"


@dataclass(frozen=True)
class Part:
    """One stream of calls in a scenario: SIPp calling the node, or the node calling
    a SIPp UAS through the API (``outbound``)."""

    kind: str  # "sipp" or "outbound"
    share: float  # of the scenario's --rate
    scenario: str = ""  # the SIPp scenario (kind sipp)
    caller_audio: bool = False  # the SIPp scenario streams caller.ulaw


@dataclass(frozen=True)
class Scenario:
    description: str
    parts: tuple[Part, ...]
    node_env: dict[str, str] = field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {
    "inbound": Scenario(
        "callers with RTP audio both ways: a spoken question, repeated, for --hold-s",
        (Part("sipp", 1.0, "media_call.xml", caller_audio=True),),
    ),
    "outbound": Scenario(
        "calls the node places through the API (POST /v1/calls) over a trunk to a SIPp "
        "UAS that answers and echoes RTP; the node hangs up after --hold-s",
        (Part("outbound", 1.0),),
    ),
    "cancel-storm": Scenario(
        "callers who give up while it rings: INVITE, 180, CANCEL (the node rings 2 s)",
        (Part("sipp", 1.0, "cancel_storm.xml"),),
        {"VOXSWITCH_RING_MS": "2000"},
    ),
    "long-calls": Scenario(
        "long calls refreshed by three re-INVITEs, --hold-s apart (response time 2: the "
        "refreshes')",
        (Part("sipp", 1.0, "long_call.xml"),),
    ),
    "mix": Scenario(
        "at once: 60 % inbound with audio, 20 % outbound through the API, 20 % callers "
        "who cancel",
        (
            Part("sipp", 0.6, "media_call.xml", caller_audio=True),
            Part("outbound", 0.2),
            Part("sipp", 0.2, "cancel_storm.xml"),
        ),
        {"VOXSWITCH_RING_MS": "500"},
    ),
}


def caller_audio(seconds_before: float = 3.0, seconds_after: float = 4.0) -> bytes:
    """Headerless µ-law: silence, the question spoken (espeak), silence (SIPp loops it)."""
    from media.g711 import ulaw_encode
    from media.tts import EspeakSynthesizer

    speech = asyncio.run(EspeakSynthesizer(rate_wpm=150).synthesize(QUESTION))
    pcm = np.concatenate([np.zeros(int(8000 * seconds_before), np.int16), speech,
                          np.zeros(int(8000 * seconds_after), np.int16)])  # fmt: skip
    return ulaw_encode(pcm)


# ---- sampling the node ------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """The node once a second, in the background: calls up and offered, CPU, RSS."""

    TICKS_PER_S = 100  # os.sysconf("SC_CLK_TCK") on Linux

    def __init__(self, node: NodeProcess, on_sample: Callable[[dict[str, Any]], None]) -> None:
        self.node = node
        self.on_sample = on_sample
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _pids(self, health: dict[str, Any]) -> list[int]:
        assert self.node.process is not None
        return [self.node.process.pid, *health.get("media", {}).get("workers", [])]

    def _run(self) -> None:
        last: tuple[float, int, int, int] | None = None  # time, cpu ticks, offered, placed
        while not self._stop.wait(1.0):
            try:
                health = self.node.health(timeout_s=2.0)
                pids = self._pids(health)
                ticks = sum(_cpu_ticks(p) for p in pids)
                rss = sum(_rss_mb(p) for p in pids)
            except (OSError, ValueError):
                continue
            now = time.monotonic()
            offered, placed = int(str(health["calls_offered"])), int(str(health["calls_placed"]))
            sample: dict[str, Any] = {
                "t": round(now - self._started, 2),
                "active_calls": health["active_calls"],
                "rss_mb": round(rss, 1),
            }
            if last is not None:
                span = now - last[0]
                sample["cpu_pct"] = round(100 * (ticks - last[1]) / self.TICKS_PER_S / span, 1)
                sample["offered_cps"] = round((offered - last[2]) / span, 1)
                sample["placed_cps"] = round((placed - last[3]) / span, 1)
            last = (now, ticks, offered, placed)
            self.samples.append(sample)
            self.on_sample(sample)


# ---- the parts ----------------------------------------------------------------------------


@dataclass
class PartResult:
    part: Part
    attempted: int = 0
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    sipp: SippResult | None = None
    workdir: Path | None = None


_UNEXPECTED = re.compile(r"unexpected message .*?received '(SIP/2\.0 \d{3}[^\r\n']*|\w+)")


def _sipp_failures(result: SippResult) -> dict[str, int]:
    """SIPp's failed calls by class (its FailedXxx(C) counters); an unexpected message
    by what it was (``unexpected SIP/2.0 503 Service Unavailable``), from its error log."""
    found: dict[str, int] = {}
    for name, value in result.stats.items():
        match = re.fullmatch(r"Failed(\w+)\(C\)", name)
        if match and match.group(1) != "Call" and value.strip().isdigit() and int(value) > 0:
            found[match.group(1)] = int(value)
    unexpected = [m.group(1) for e in result.errors if (m := _UNEXPECTED.search(e))]
    if unexpected and len(unexpected) == found.get("UnexpectedMessage"):
        del found["UnexpectedMessage"]
        for what in unexpected:
            found[f"unexpected {what.strip()}"] = found.get(f"unexpected {what.strip()}", 0) + 1
    return found


def run_sipp_part(node: NodeProcess, part: Part, args: argparse.Namespace, workdir: Path,
                  audio: bytes | None) -> PartResult:  # fmt: skip
    rate = args.rate * part.share
    calls = max(1, round(rate * args.duration_s))
    result = run_sipp(
        node.sip_address, part.scenario, workdir=workdir, calls=calls, rate=rate,
        pause_ms=round(args.hold_s * 1000), timeout_s=args.duration_s + 4 * args.hold_s + 90,
        stat_period_s=1, files={"caller.ulaw": audio} if audio else None,
        extra_args=SIPP_ARGS,
    )  # fmt: skip
    failed = _sipp_failures(result)
    if result.failed_calls and not failed:
        failed = {"other": result.failed_calls}
    return PartResult(part, result.created_calls, result.successful_calls, failed, result,
                      workdir)  # fmt: skip


def run_outbound_part(node: NodeProcess, part: Part, args: argparse.Namespace,
                      workdir: Path) -> PartResult:  # fmt: skip
    rate = args.rate * part.share
    calls = max(1, round(rate * args.duration_s))
    uas = SippServer(
        "uas", workdir=workdir, calls=calls, timeout_s=args.duration_s + args.hold_s + 120,
        extra_args=["-buff_size", str(SIPP_BUFFER_BYTES), "-rtp_echo"],
    )  # fmt: skip
    try:
        call_api(node, "PUT", "/v1/trunks/load", {"host": "127.0.0.1", "port": uas.port,
                                                  "options_interval_s": 0})  # fmt: skip
        numbers = [{"to": f"+1555{i:07d}"} for i in range(calls)]
        deadline = time.monotonic() + args.duration_s * 3 + args.hold_s + 90
        view = run_campaign(node, "load", numbers, rate, deadline)
    finally:
        uas.stop()
    dispositions: dict[str, int] = dict(view.get("dispositions", {}))
    ok = dispositions.pop("completed", 0) + dispositions.pop("max_duration", 0)
    return PartResult(part, sum(view.get("dispositions", {}).values()), ok, dispositions)


# ---- the node's view at the end -------------------------------------------------------


def turn_latencies(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The agents' answers, from the node's call records: every turn's latency (end of
    the caller's speech to the first reply packet) and its recognition time."""
    turns = [t for r in records for t in r.get("turns", [])]
    latency = [float(t["latency_s"]) for t in turns if t.get("latency_s") is not None]
    asr = [float(t["asr_s"]) for t in turns if t.get("asr_s") is not None]
    out: dict[str, Any] = {"turns": len(turns), "answered": len(latency)}
    for name, values in (("", latency), ("asr_", asr)):
        for q in (50, 95, 99):
            out[f"{name}p{q}_s"] = percentile(values, q)
        out[f"{name}max_s"] = max(values, default=None)
    return out


def _ms(text: str | None) -> float | None:
    """SIPp's ``HH:MM:SS`` (elapsed times) or ``HH:MM:SS:uuuuuu`` in milliseconds."""
    text = (text or "").strip()
    try:
        if text.count(":") == 2:
            hours, minutes, seconds = (int(p) for p in text.split(":"))
            return ((hours * 60 + minutes) * 60 + seconds) * 1000.0
        return parse_duration_ms(text)
    except ValueError:
        return None


def sipp_series(parts: Sequence[PartResult]) -> list[dict[str, Any]]:
    """SIPp's per-second statistics, summed over the parts: calls up, call rate, and the
    response time 1 of that second (ms, the mean of the parts that had one)."""
    import csv

    by_second: dict[int, dict[str, Any]] = {}
    for part in parts:
        if part.workdir is None:
            continue
        for path in part.workdir.glob("*stat*.csv"):
            with path.open(newline="", errors="replace") as fh:
                rows = list(csv.DictReader(fh, delimiter=";"))
            for row in rows:
                elapsed_ms = _ms(row.get("ElapsedTime(C)"))
                if elapsed_ms is None:
                    continue
                second = round(elapsed_ms / 1000)
                empty = {"t": second, "sipp_calls_up": 0, "sipp_cps": 0.0, "response_ms": []}
                slot = by_second.setdefault(second, empty)
                slot["sipp_calls_up"] += int(row.get("CurrentCall") or 0)
                slot["sipp_cps"] += float(row.get("CallRate(P)") or 0)
                rt = _ms(row.get("ResponseTime1(P)"))
                if rt:
                    slot["response_ms"].append(rt)
    series = []
    for second in sorted(by_second):
        slot = by_second[second]
        times = slot.pop("response_ms")
        slot["response_ms"] = round(sum(times) / len(times), 2) if times else None
        slot["sipp_cps"] = round(slot["sipp_cps"], 1)
        series.append(slot)
    return series


# ---- the run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    scenario = SCENARIOS[args.scenario]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else OUT_DIR / f"run-{args.scenario}-{stamp}"
    if out.exists():  # a folder given again: this run's files only (SIPp adds, never replaces)
        for old in [*out.glob("part-*"), out / "node"]:
            shutil.rmtree(old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    # Defaults as settings in the environment (not the command line, which would beat
    # them), so the scenario's and --node-env's settings win.
    outbound = any(p.kind == "outbound" for p in scenario.parts)
    env = {
        "VOXSWITCH_API_KEY": KEY, "VOXSWITCH_AGENT": args.agent,
        "VOXSWITCH_MEDIA_WORKERS": str(args.media_workers),
        "VOXSWITCH_TRUNKS_FILE": str(out / "trunks.json"),
        "VOXSWITCH_MAX_CALLS": "100000", "VOXSWITCH_MEDIA_TIMEOUT_S": "0",
        # The node hangs up its outbound calls (the SIPp UAS waits for a BYE).
        **({"VOXSWITCH_MAX_CALL_DURATION_S": str(args.hold_s + 1)} if outbound else {}),
        **scenario.node_env,
    }  # fmt: skip
    for item in args.node_env:
        name, _, value = item.partition("=")
        env[name] = value
    # Two ports a call up; a long call lasts four holds. At most what the loopback RTP
    # regions give one block (loadtest/ports.py): past it, --node-env VOXSWITCH_RTP_PORTS.
    held_s = args.hold_s * (4 if args.scenario == "long-calls" else 1) + 5
    ports = int(min(4000, 2 * args.rate * held_s + 200))
    options = NodeOptions(log_level="warning", rtp_port_count=ports, env=env)
    node = NodeProcess(out / "node", options, name="load-node")
    node.start()
    audio = caller_audio() if any(p.caller_audio for p in scenario.parts) else None
    started_at = time.time()
    began = time.monotonic()
    results: list[PartResult] = []
    lock = threading.Lock()

    def progress(sample: dict[str, Any]) -> None:
        if sample["t"] % args.progress_s < 1.0:
            print(f"[{sample['t']:6.0f} s] calls up {sample['active_calls']:>5}  "
                  f"offered/s {sample.get('offered_cps', 0):>6}  placed/s "
                  f"{sample.get('placed_cps', 0):>6}  cpu {sample.get('cpu_pct', 0):>5} %  "
                  f"rss {sample['rss_mb']:.0f} MB", flush=True)  # fmt: skip

    def drive(index: int, part: Part) -> None:
        workdir = out / f"part-{index}-{part.kind}"
        try:
            if part.kind == "outbound":
                result = run_outbound_part(node, part, args, workdir)
            else:
                audio_file = audio if part.caller_audio else None
                result = run_sipp_part(node, part, args, workdir, audio_file)
        except Exception as exc:  # the part could not run: the report says so, not a thread
            result = PartResult(part, failed={f"part not run: {exc!r}"[:200]: 1})
        with lock:
            results.append(result)

    try:
        with Sampler(node, progress) as sampler:
            threads = [threading.Thread(target=drive, args=(i, p), daemon=True)
                       for i, p in enumerate(scenario.parts)]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(args.duration_s * 4 + args.hold_s * 6 + 300)
    finally:
        node.stop(timeout_s=30)
    elapsed = time.monotonic() - began
    return summarize(args, scenario, results, sampler.samples, node.records(), started_at,
                     elapsed, out)  # fmt: skip


def summarize(args: argparse.Namespace, scenario: Scenario, results: list[PartResult],
              samples: list[dict[str, Any]], records: Sequence[dict[str, Any]],
              started_at: float, elapsed: float, out: Path) -> dict[str, Any]:  # fmt: skip
    failed: dict[str, int] = {}
    for r in results:
        for reason, n in r.failed.items():
            failed[reason] = failed.get(reason, 0) + n
    response: dict[str, dict[str, Any]] = {}  # per SIPp scenario, per response-time counter
    for r in results:
        if r.workdir is None:
            continue
        for number, values in sorted(response_times(r.workdir).items()):
            if values:
                response.setdefault(r.part.scenario, {})[f"rtd{number}"] = {
                    "calls": len(values),
                    **{f"p{q}_ms": percentile(values, q) for q in (50, 95, 99)},
                    "max_ms": max(values),
                }
    cpu = [s["cpu_pct"] for s in samples if "cpu_pct" in s]
    attempted = sum(r.attempted for r in results)
    succeeded = sum(r.succeeded for r in results)
    offering_s = max(1.0, args.duration_s)
    summary: dict[str, Any] = {
        "scenario": args.scenario,
        "description": scenario.description,
        "settings": {
            "rate": args.rate, "duration_s": args.duration_s, "hold_s": args.hold_s,
            "agent": args.agent, "media_workers": args.media_workers,
            "node_env": list(args.node_env),
        },
        "machine": machine_summary(),
        "sipp": sipp_version(),
        "started_at": dt.datetime.fromtimestamp(started_at, dt.UTC).isoformat(),
        "elapsed_s": round(elapsed, 1),
        "attempted": attempted,
        "succeeded": succeeded,
        "failed": sum(failed.values()),
        "failed_by_reason": failed,
        "parts": [
            {"kind": r.part.kind, "scenario": r.part.scenario or "API campaign",
             "attempted": r.attempted, "succeeded": r.succeeded, "failed": r.failed}
            for r in results
        ],
        "cps_achieved": round(attempted / offering_s, 1),
        "peak_concurrency": max((s["active_calls"] for s in samples), default=0),
        "sip_response_time": response,
        "node": {
            "cpu_pct_avg": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_pct_peak": max(cpu, default=None),
            "rss_mb_peak": max((s["rss_mb"] for s in samples), default=None),
        },
        "turn_latency": turn_latencies(records),
        "series": {"node": samples, "sipp": sipp_series(results)},
    }
    write_reports(summary, out)
    summary["out"] = str(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    summary_line = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=summary_line)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the scenarios")
    go = sub.add_parser("run", help="run a scenario against a node of its own")
    go.add_argument("scenario", choices=sorted(SCENARIOS))
    go.add_argument("--rate", type=float, default=10.0, help="new calls per second, all parts")
    go.add_argument("--duration-s", type=float, default=30.0, help="how long calls are offered")
    go.add_argument("--hold-s", type=float, default=10.0, help="how long each call lasts")
    go.add_argument("--agent", default="none", help="the node's agent: none, demo, ...")
    go.add_argument("--media-workers", type=int, default=0)
    go.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                    help="another node setting (VOXSWITCH_...)")  # fmt: skip
    go.add_argument("--progress-s", type=float, default=5.0)
    go.add_argument("--out", default="", help="the report's folder")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, scenario in SCENARIOS.items():
            print(f"{name:14} {scenario.description}")
        return 0
    summary = run(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "series"}, indent=2))
    return 0 if summary["failed"] == 0 and summary["attempted"] else 1
