"""README "Your own agent in 5 minutes", step by step, with the real CLI in a fresh
folder: an agent file, an FAQ, a config file with an inbound route, ``voxswitch kb
load``, ``voxswitch serve``, and one call placed by ``voxswitch eval`` (its built-in
caller, an eSpeak voice, full band) whose answer must come from the FAQ."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.ports import free_port, free_port_range

pytestmark = pytest.mark.e2e

# The files exactly as the README shows them (the README's ports aside).
AGENT = """\
name: Northfield Clinic
greeting: Northfield Clinic, how can I help?
fallback: Sorry, I can help with our opening hours, appointments and parking.
goodbye: Thanks for calling Northfield Clinic. Goodbye!
intents:
  - id: reception
    action: transfer
    target: sip:reception@127.0.0.1
    patterns: [talk to a person, reception]
    say: Putting you through to reception.
  - id: bye
    action: hang_up
    patterns: [goodbye, that's all]
"""

FAQ = """\
# Opening hours
Q: what are your opening hours
Q: when are you open
We are open Monday to Friday, 8 AM to 6 PM, and Saturday mornings.

# Parking
Q: is there parking
Q: where can I park
Free parking behind the clinic, entrance on Mill Lane.

# Appointments
Q: how do I book an appointment
Q: can I see a doctor today
Book online at northfield clinic dot example, or call before 10 AM for a same-day slot.
"""

CONFIG = """\
agents_dir = "agents"
inbound_routes = ["clinic=clinic"]   # calls to sip:clinic@this-host reach agents/clinic.yaml
"""

SUITE = """\
agent: {name: clinic, knowledge: faq.md}
defaults: {voice: espeak-en-us, band: full}
cases:
  - id: hours
    say: what are your opening hours
    expect: {entry: opening-hours}
"""


def voxswitch(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "switch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], dict[str, int]]]:
    """The user's folder with the three files, a clean environment, free ports."""
    folder = tmp_path / "desk"
    (folder / "agents").mkdir(parents=True)
    (folder / "agents" / "clinic.yaml").write_text(AGENT)
    (folder / "faq.md").write_text(FAQ)
    start, end = free_port_range(40)
    ports = {"sip": free_port(), "api": free_port(udp=False), "rtp_start": start, "rtp_end": end}
    (folder / "voxswitch.toml").write_text(
        CONFIG + f'sip_host = "127.0.0.1"\nsip_port = {ports["sip"]}\napi_host = "127.0.0.1"\n'
        f'api_port = {ports["api"]}\nrtp_ports = "{start}-{end}"\n'
    )
    (folder / "check.yaml").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXSWITCH_")}
    env["VOXSWITCH_API_KEY"] = secrets.token_urlsafe(24)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # nothing of this test outside tmp_path
    yield folder, env, ports


def test_own_agent_in_five_minutes(desk: tuple[Path, dict[str, str], dict[str, int]]) -> None:
    folder, env, ports = desk
    key = env["VOXSWITCH_API_KEY"]
    typo = voxswitch("kb", "load", "--config", "voxswitch.toml", "--agent", "clinc", "faq.md",
                     cwd=folder, env=env)  # fmt: skip
    assert typo.returncode == 2 and "default, clinic" in typo.stderr, typo.stderr
    loaded = voxswitch("kb", "load", "--config", "voxswitch.toml", "--agent", "clinic", "faq.md",
                       cwd=folder, env=env)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["total"] == 3
    assert (folder / "voxswitch-kb" / "clinic.npz").is_file()  # beside the config file

    log = (folder / "node.log").open("w")
    node = subprocess.Popen([sys.executable, "-m", "switch.cli", "serve", "--config",
                             "voxswitch.toml"], cwd=folder, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        deadline = time.monotonic() + 30
        while not health(api):
            assert node.poll() is None, (folder / "node.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the node did not start in 30 s"
            time.sleep(0.2)
        request = urllib.request.Request(api + "/v1/routes/inbound",
                                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as answer:
            routes = json.load(answer)["routes"]
        assert [(r["pattern"], r["agent"], r["source"]) for r in routes] == [
            ("clinic", "clinic", "config")
        ]
        called = voxswitch(
            "eval", "check.yaml", "--target", f"sip:clinic@127.0.0.1:{ports['sip']}",
            "--api", api, "--api-key", key, "--report", "report", cwd=folder, env=env,
        )  # fmt: skip
        report = json.loads((folder / "report" / "report.json").read_text())
        assert called.returncode == 0, (called.stdout + called.stderr)[-3000:]
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        finally:
            node.kill()
            log.close()
    text = (folder / "node.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    (turn,) = report["cases"][0]["turns"]
    assert turn["entries"] == ["opening-hours"] and "Monday to Friday" in turn["answer"], turn
