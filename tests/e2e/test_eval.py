"""``voxswitch eval`` end to end: a throwaway node, a real SIP call from the built-in
caller, graded from the node's call record; the exit code is the verdict. The full
suites in loadtest/suites/ run as benchmarks, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtest.node import NodeFactory, NodeOptions
from tests.e2e.api_client import ADMIN

SUITES = Path(__file__).resolve().parent / "eval_suites"


def voxswitch_eval(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "switch.cli", "eval", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_a_suite_whose_answers_are_right_passes(tmp_path: Path) -> None:
    done = voxswitch_eval(str(SUITES / "hours.yaml"), "--report", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["right"] == 1 and report["totals"]["passed"]
    case = report["cases"][0]
    assert case["turns"][0]["entries"][:1] == ["hours"]
    assert case["turns"][0]["latency_s"] is not None and case["turns"][0]["latency_s"] < 3
    assert "opening-hours | right" in (tmp_path / "report.md").read_text()


def test_a_wrong_expectation_fails_naming_the_case(tmp_path: Path) -> None:
    done = voxswitch_eval(str(SUITES / "wrong.yaml"), "--report", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "opening-hours: WRONG" in done.stdout
    assert "not 'address'" in done.stdout


def test_a_bad_suite_is_exit_2_naming_the_line() -> None:
    done = voxswitch_eval(str(SUITES / "bad.yaml"))
    assert done.returncode == 2
    assert "bad.yaml:6" in done.stderr and "transfr" in done.stderr


def test_a_running_node_as_the_target(voxswitch_nodes: NodeFactory, tmp_path: Path) -> None:
    node = voxswitch_nodes.start("eval-target", NodeOptions(env={"VOXSWITCH_API_KEY": ADMIN}))
    done = voxswitch_eval(
        str(SUITES / "hours.yaml"), "--report", str(tmp_path),
        "--target", f"sip:eval@{node.host}:{node.sip_port}",
        "--api", f"http://{node.host}:{node.api_port}", "--api-key", ADMIN,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.health()["calls_offered"] == 1
