"""A load run's report: ``report.json``, ``report.md`` and ``report.png`` (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_reports(summary: dict[str, Any], out: Path) -> None:
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary))
    chart(summary, out / "report.png")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _quantiles(figures: dict[str, Any], prefix: str) -> str:
    return " / ".join(_fmt(figures[f"{prefix}{q}_s"]) for q in ("p50", "p95", "p99", "max"))


def markdown(s: dict[str, Any]) -> str:
    settings = s["settings"]
    lines = [
        f"# Load run: {s['scenario']}",
        "",
        f"{s['description']}.",
        "",
        f"Started {s['started_at']}, {s['elapsed_s']} s; {settings['rate']} calls/s offered "
        f"for {settings['duration_s']} s, each held {settings['hold_s']} s; agent "
        f"`{settings['agent']}`, media workers {settings['media_workers']}"
        + (f", {', '.join(settings['node_env'])}" if settings["node_env"] else "")
        + f". Machine: {s['machine']}; {s['sipp']}.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| attempted | {_fmt(s['attempted'])} |",
        f"| succeeded | {_fmt(s['succeeded'])} |",
        f"| failed | {_fmt(s['failed'])} |",
        f"| calls per second achieved | {_fmt(s['cps_achieved'])} |",
        f"| peak concurrency (calls up at the node) | {_fmt(s['peak_concurrency'])} |",
        f"| node CPU, mean / peak (% of one core) | {_fmt(s['node']['cpu_pct_avg'])} / "
        f"{_fmt(s['node']['cpu_pct_peak'])} |",
        f"| node RSS peak (MB, with media workers) | {_fmt(s['node']['rss_mb_peak'])} |",
        f"| agent turns (answered) | {_fmt(s['turn_latency']['turns'])} "
        f"({_fmt(s['turn_latency']['answered'])}) |",
        f"| turn latency p50 / p95 / p99 / max (s) | {_quantiles(s['turn_latency'], '')} |",
        f"| recognition p50 / p95 / p99 / max (s) | {_quantiles(s['turn_latency'], 'asr_')} |",
        "",
    ]
    if s["failed_by_reason"]:
        lines += ["| failed because | calls |", "| --- | --- |"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(s["failed_by_reason"].items())]
        lines.append("")
    lines += ["| part | attempted | succeeded | failed |", "| --- | --- | --- | --- |"]
    for part in s["parts"]:
        failed = ", ".join(f"{k} {v}" for k, v in part["failed"].items()) or "0"
        lines.append(f"| {part['kind']} ({part['scenario']}) | {part['attempted']} | "
                     f"{part['succeeded']} | {failed} |")  # fmt: skip
    lines.append("")
    if s["sip_response_time"]:
        lines += [
            "SIP response times, SIPp's counters per scenario (`media_call.xml`: rtd1 INVITE → "
            "200; `long_call.xml`: rtd1 INVITE → 200, rtd2 a refresh → 200; "
            "`cancel_storm.xml`: rtd1 INVITE → 180, rtd2 INVITE → 503):",
            "",
            "| scenario | counter | calls | p50 ms | p95 ms | p99 ms | max ms |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for scenario, counters in s["sip_response_time"].items():
            for name, r in counters.items():
                lines.append(f"| {scenario} | {name} | {r['calls']} | {_fmt(r['p50_ms'])} | "
                             f"{_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | "
                             f"{_fmt(r['max_ms'])} |")  # fmt: skip
        lines.append("")
    lines += ["![calls, calls per second, response time and CPU over time](report.png)", ""]
    return "\n".join(lines)


def chart(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    node, sipp = s["series"]["node"], s["series"]["sipp"]
    fig, (calls, rate, latency) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    fig.suptitle(f"voxswitch load run: {s['scenario']} ({s['settings']['rate']} calls/s offered)")
    calls.plot([p["t"] for p in node], [p["active_calls"] for p in node], label="calls up (node)")
    calls.plot([p["t"] for p in sipp], [p["sipp_calls_up"] for p in sipp], "--",
               label="calls up (SIPp)")  # fmt: skip
    calls.set_ylabel("calls")
    calls.legend(loc="upper left")
    with_rate = [p for p in node if "offered_cps" in p]
    rate.plot([p["t"] for p in with_rate], [p["offered_cps"] for p in with_rate],
              label="offered to the node /s")  # fmt: skip
    rate.plot([p["t"] for p in with_rate], [p["placed_cps"] for p in with_rate],
              label="placed by the node /s")  # fmt: skip
    rate.plot([p["t"] for p in sipp], [p["sipp_cps"] for p in sipp], ":", label="SIPp call rate")
    rate.set_ylabel("calls per second")
    rate.legend(loc="upper left")
    timed = [p for p in sipp if p["response_ms"] is not None]
    latency.plot([p["t"] for p in timed], [p["response_ms"] for p in timed], color="tab:red",
                 label="SIP response time 1 (ms)")  # fmt: skip
    latency.set_ylabel("ms")
    latency.set_xlabel("seconds")
    cpu = latency.twinx()
    with_cpu = [p for p in node if "cpu_pct" in p]
    cpu.plot([p["t"] for p in with_cpu], [p["cpu_pct"] for p in with_cpu], color="tab:gray",
             alpha=0.6, label="node CPU (%)")  # fmt: skip
    cpu.set_ylabel("% of a core")
    handles = latency.get_legend_handles_labels()[0] + cpu.get_legend_handles_labels()[0]
    latency.legend(handles, [h.get_label() for h in handles], loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
