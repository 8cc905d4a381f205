"""``voxswitch eval`` end to end: a throwaway node, a real SIP call from the built-in
caller, graded from the node's call record; the exit code is the verdict. The full
suites in loadtest/suites/ run as benchmarks, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from loadtest.node import NodeFactory, NodeOptions
from tests.e2e.api_client import ADMIN, api

SUITES = Path(__file__).resolve().parent / "eval_suites"
SCENARIOS = Path(__file__).resolve().parents[2] / "loadtest" / "scenarios"


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


def test_a_running_node_as_the_target_two_calls_at_once(
    voxswitch_nodes: NodeFactory, tmp_path: Path
) -> None:
    node = voxswitch_nodes.start("eval-target", NodeOptions(env={"VOXSWITCH_API_KEY": ADMIN}))
    done = voxswitch_eval(
        str(SUITES / "two.yaml"), "--report", str(tmp_path), "--calls-at-once", "2",
        "--target", f"sip:eval@{node.host}:{node.sip_port}",
        "--api", f"http://{node.host}:{node.api_port}", "--api-key", ADMIN,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.health()["calls_offered"] == 2
    calls = [c["call"] for c in json.loads((tmp_path / "report.json").read_text())["cases"]]
    first, second = sorted(calls, key=lambda c: c["invited_at"])
    assert second["invited_at"] < first["ended_at"], calls  # the two calls overlapped


def test_a_foreign_target_is_graded_from_what_the_caller_heard(tmp_path: Path) -> None:
    """A SIPp UAS playing a recorded agent (greeting, a silence for the question, the
    hours): no API to read, so the answer is transcribed from the caller's recording."""
    from loadtest.sipp import SippServer
    from media.g711 import ulaw_encode
    from switch.eval.suite import Case
    from switch.eval.voices import speak

    voice = Case(id="agent", turns=(), voice="piper-joe")
    greeting = speak(voice, "Thank you for calling the city library.")
    answer = speak(voice, "We are open from nine in the morning until six in the evening.")
    silence = np.zeros(8000 * 5, dtype=np.int16)  # the caller asks in here
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    (workdir / "agent.ulaw").write_bytes(ulaw_encode(np.concatenate([greeting, silence, answer])))
    server = SippServer(SCENARIOS / "uas_recorded_agent.xml", workdir=workdir, timeout_s=60)
    try:
        done = voxswitch_eval(str(SUITES / "library.yaml"), "--report", str(tmp_path / "r"),
                              "--target", f"sip:library@{server.address}")  # fmt: skip
    finally:
        sipp = server.stop()
    assert done.returncode == 0, done.stdout + done.stderr + sipp.describe()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    turn = report["cases"][0]["turns"][0]
    assert turn["entries"] == ["hours"], turn
    assert {"nine", "six"} <= set(turn["answer"].lower().replace(".", " ").split()), turn
    assert 0 < turn["latency_s"] < 6, turn  # the caller-ear latency from the recording
    assert (tmp_path / "r" / "calls" / "opening-hours.wav").stat().st_size > 8000 * 4


def test_a_foreign_target_that_says_nothing_fails_the_case(tmp_path: Path) -> None:
    from loadtest.sipp import SippServer

    workdir = tmp_path / "sipp"
    workdir.mkdir()
    (workdir / "agent.ulaw").write_bytes(b"\xff" * 8000)  # a second of silence
    server = SippServer(SCENARIOS / "uas_recorded_agent.xml", workdir=workdir, timeout_s=60)
    try:
        done = voxswitch_eval(str(SUITES / "library.yaml"), "--report", str(tmp_path / "r"),
                              "--target", f"sip:library@{server.address}")  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "opening-hours: WRONG" in done.stdout, done.stdout


def test_typing_to_an_agent_answers_and_reports_actions_untaken(
    voxswitch_nodes: NodeFactory, tmp_path: Path
) -> None:
    node = voxswitch_nodes.start("eval-typed", NodeOptions(env={"VOXSWITCH_API_KEY": ADMIN}))
    status, hours = api(node, "POST", "/v1/agents/default/reply",
                        body={"text": "What are your OPENING hours?"})  # fmt: skip
    assert status == 200 and hours["knowledge"] == ["hours"] and hours["actions"] == [], hours
    status, moved = api(node, "POST", "/v1/agents/default/reply", body={"text": "operator"})
    assert status == 200 and [a["name"] for a in moved["actions"]] == ["transfer"], moved
    assert node.health()["calls_offered"] == 0  # reported, not carried out: no call
    status, missing = api(node, "POST", "/v1/agents/nobody/reply", body={"text": "hi"})
    assert status == 404 and "nobody" in missing["detail"]
    status, empty = api(node, "POST", "/v1/agents/default/reply", body={"text": ""})
    assert status == 422 and empty["detail"][0]["loc"][-1] == "text"
    status, _ = api(node, "POST", "/v1/agents/default/reply", key=None, body={"text": "hi"})
    assert status == 401
    done = voxswitch_eval(
        str(SUITES / "hours.yaml"), "--typed", "--report", str(tmp_path),
        "--target", f"sip:eval@{node.host}:{node.sip_port}",
        "--api", f"http://{node.host}:{node.api_port}", "--api-key", ADMIN,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["right"] == 1
    assert node.health()["calls_offered"] == 0
