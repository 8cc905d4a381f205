"""The dashboard and the alert rules ask only for metrics a real node exports: every
``voxswitch_*`` name in deploy/monitoring is in a running node's ``/metrics``."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from loadtest.node import NodeFactory, NodeOptions
from tests.e2e.api_client import ADMIN

pytestmark = pytest.mark.e2e

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\bvoxswitch_[a-z_]+\b")


def exported(text: str) -> set[str]:
    """The sample names a scrape can hold: each family, and a histogram's series."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def asked_for() -> dict[str, set[str]]:
    dashboard = json.loads((MONITORING / "grafana" / "voxswitch.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["definition"])
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    return {
        "dashboard": {m for e in exprs for m in METRIC.findall(e)},
        "alerts": {m for r in rules for m in METRIC.findall(r["expr"])},
    }


def test_every_metric_the_dashboard_and_alerts_use_is_exported(
    voxswitch_nodes: NodeFactory,
) -> None:
    env = {"VOXSWITCH_AGENT": "none", "VOXSWITCH_API_KEY": ADMIN}
    node = voxswitch_nodes.start("metrics", NodeOptions(env=env))
    url = f"http://{node.host}:{node.api_port}/metrics"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        names = exported(response.read().decode())
    assert len(names) > 30
    for where, metrics in asked_for().items():
        assert metrics, where
        assert not metrics - names, f"{where} asks for metrics no node exports"
