"""``deploy/local/services.sh cluster``: N nodes behind Kamailio on this machine, as a
developer starts them — up, calls through the balancer, a node killed and its call
adopted, status, down."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.ports import free_listen_ports, free_port_range, release
from loadtest.sipp import SippResult, run_sipp

SERVICES = Path(__file__).resolve().parents[2] / "deploy" / "local" / "services.sh"


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    rtp, rtp_end = free_port_range(400)
    env = {
        **os.environ,
        "VOXSWITCH_CLUSTER_DIR": str(tmp_path / "cluster"),
        # Out of the ephemeral range: `cluster up` binds them seconds after this pick.
        "VOXSWITCH_LB_PORT": str(free_listen_ports(1, tcp=False)),
        "VOXSWITCH_NODE_SIP_BASE": str(free_listen_ports(3) - 1),
        "VOXSWITCH_NODE_API_BASE": str(free_listen_ports(3, udp=False) - 1),
        "VOXSWITCH_NODE_RTP_BASE": str(rtp),
        "VOXSWITCH_NODE_RTP_PORTS": "200",
        "VOXSWITCH_PROBE_S": "1",
        "VOXSWITCH_AGENT": "none",
        "VOXSWITCH_CLUSTER": f"local-{uuid.uuid4().hex[:8]}",  # not another run's nodes
    }
    yield env
    subprocess.run([str(SERVICES), "cluster", "down"], env=env, timeout=90, check=False)
    release(range(rtp, rtp_end + 1))  # other tests' nodes may have them now


def cluster(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVICES), "cluster", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_two_nodes_behind_kamailio_take_calls_and_one_takes_over_the_others(
    cluster_env: dict[str, str], tmp_path: Path
) -> None:
    up = cluster(cluster_env, "up", "2")
    assert up.returncode == 0, up.stderr
    status = cluster(cluster_env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("running") == 3, status.stdout  # two nodes and Kamailio
    lb = f"127.0.0.1:{cluster_env['VOXSWITCH_LB_PORT']}"

    results: list[SippResult] = []
    calls = threading.Thread(target=lambda: results.append(run_sipp(
        lb, "takeover_call.xml", workdir=tmp_path / "sipp", calls=4, rate=10, pause_ms=4000,
        timeout_s=60,
    )))  # fmt: skip
    calls.start()
    # Once every call is up, a node dies: its calls go on on the other one.
    dirs = [Path(cluster_env["VOXSWITCH_CLUSTER_DIR"]) / f"node-{i}" for i in (1, 2)]
    threading.Event().wait(1.5)
    os.kill(int((dirs[1] / "pid").read_text()), signal.SIGKILL)
    calls.join(90)
    (result,) = results
    assert result.successful_calls == 4 and result.failed_calls == 0, result.describe()
    log = (dirs[0] / "node.log").read_text()
    assert "adopted from local-2" in log, log[-3000:]
    status = cluster(cluster_env, "status")
    assert status.returncode == 1 and "local-2    stopped" in status.stdout, status.stdout

    down = cluster(cluster_env, "down")
    assert down.returncode == 0, down.stderr
    status = cluster(cluster_env, "status")
    assert status.returncode == 1 and "running" not in status.stdout, status.stdout
