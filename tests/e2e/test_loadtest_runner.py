"""``python -m loadtest run``: a short run of the mixed scenario and of long calls write
consistent reports (JSON, Markdown, PNG); a node that refuses calls shows up as
failures by reason and a failing exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run(scenario: str, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", scenario, "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    report = out / "report.json"
    assert report.exists(), done.stdout[-2000:] + done.stderr[-3000:]
    return done.returncode, json.loads(report.read_text())


def test_a_mixed_run_reports_every_call_and_its_figures(tmp_path: Path) -> None:
    code, report = run("mix", tmp_path, "--rate", "10", "--duration-s", "4", "--hold-s", "2")
    assert code == 0, report
    parts = {p["scenario"]: p for p in report["parts"]}
    # 60 % inbound, 20 % outbound, 20 % cancelling callers of 10 calls/s for 4 s.
    assert {k: parts[k]["attempted"] for k in parts} == {
        "media_call.xml": 24, "API campaign": 8, "cancel_storm.xml": 8,
    }  # fmt: skip
    assert report["attempted"] == report["succeeded"] == 40 and report["failed"] == 0
    assert report["failed_by_reason"] == {}
    assert 5 <= report["peak_concurrency"] <= 40
    assert report["sip_response_time"]["media_call.xml"]["rtd1"]["calls"] == 24
    assert report["sip_response_time"]["cancel_storm.xml"]["rtd1"]["calls"] == 8
    assert report["node"]["rss_mb_peak"] > 30 and report["node"]["cpu_pct_peak"] is not None
    assert len(report["series"]["node"]) >= 4 and len(report["series"]["sipp"]) >= 4
    assert max(p["active_calls"] for p in report["series"]["node"]) == report["peak_concurrency"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| attempted | 40 |" in markdown
    assert "| outbound (API campaign) | 8 | 8 | 0 |" in markdown
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_long_calls_time_their_refreshes(tmp_path: Path) -> None:
    code, report = run("long-calls", tmp_path, "--rate", "5", "--duration-s", "2",
                       "--hold-s", "1")  # fmt: skip
    assert code == 0, report
    assert report["attempted"] == report["succeeded"] == 10
    timed = report["sip_response_time"]["long_call.xml"]
    assert set(timed) == {"rtd1", "rtd2"} and timed["rtd2"]["max_ms"] < 1000


def test_refused_calls_are_failures_by_reason_and_fail_the_run(tmp_path: Path) -> None:
    code, report = run("inbound", tmp_path, "--rate", "10", "--duration-s", "1",
                       "--hold-s", "3", "--node-env", "VOXSWITCH_MAX_CALLS=3")  # fmt: skip
    assert code == 1
    assert report["attempted"] == 10 and report["succeeded"] == 3, report
    assert report["failed"] == 7, report
    assert report["failed_by_reason"] == {"unexpected SIP/2.0 503 Service Unavailable": 7}
    assert "| failed | 7 |" in (tmp_path / "report.md").read_text()


def test_an_inbound_run_with_the_agent_reports_its_turns(tmp_path: Path) -> None:
    code, report = run("inbound", tmp_path, "--rate", "2", "--duration-s", "2",
                       "--hold-s", "6", "--agent", "demo")  # fmt: skip
    assert code == 0 and report["attempted"] == report["succeeded"] == 4, report
    turns = report["turn_latency"]
    # Each caller asks once (at 3 s) within its 6 s: every question answered.
    assert turns["turns"] >= 4 and turns["answered"] >= 4, turns
    assert 0 < turns["p50_s"] <= turns["p95_s"] <= turns["max_s"] < 5.0, turns
    assert 0 < turns["asr_p50_s"] < turns["p50_s"], turns
    assert "| agent turns (answered) |" in (tmp_path / "report.md").read_text()
