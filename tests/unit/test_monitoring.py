"""deploy/monitoring: the alert rules pass promtool's checks and its rule tests (the
alerts fire when they should and not before), the Prometheus config is valid, and the
Grafana dashboard has what Grafana needs to load it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "voxswitch.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool missing: deploy/local/install-test-deps.sh installs Debian's prometheus"
    return subprocess.run(
        [path, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", "alerts.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


def test_the_alerts_fire_when_their_rule_tests_say() -> None:
    done = promtool("test", "rules", "alerts_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alert_rule_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation must make `promtool test rules` fail, or the test above
    proves nothing."""
    spec = yaml.safe_load((MONITORING / "alerts_test.yaml").read_text())
    spec["rule_files"] = [str(MONITORING / "alerts.yaml")]
    spec["tests"][0]["alert_rule_test"][0]["eval_time"] = "4m"  # the node is down by then
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(spec))
    done = promtool("test", "rules", str(broken))
    assert done.returncode != 0 and "VoxswitchNodeDown" in done.stdout + done.stderr


def test_every_alert_says_what_and_how_bad() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    for wanted in ("NodeDown", "TrunkDown", "OutboxGrowing", "TurnLatencyHigh", "RtpLossHigh"):
        assert f"Voxswitch{wanted}" in names
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["for"], rule["alert"]


def test_the_prometheus_config_is_valid_and_scrapes_with_a_key(tmp_path: Path) -> None:
    # /metrics needs a reports:read key: Prometheus reads it from a file beside its config.
    for name in ("prometheus.yaml", "alerts.yaml"):
        shutil.copy(MONITORING / name, tmp_path / name)
    (tmp_path / "voxswitch-metrics.key").write_text("a-reports-read-key\n")
    path = shutil.which("promtool")
    assert path
    done = subprocess.run([path, "check", "config", "prometheus.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())["scrape_configs"][0]
    assert job["authorization"]["type"] == "Bearer"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_the_dashboard_has_the_fields_grafana_needs(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    datasource = yaml.safe_load((MONITORING / "grafana" / "datasource.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in ("timeseries", "stat", "gauge", "table"), panel["title"]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    variable = dashboard["templating"]["list"][0]
    assert variable["name"] == "instance"
    assert all("$instance" in t["expr"] for p in dashboard["panels"] for t in p["targets"])


def test_no_two_panels_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[x, y] = panel["title"]


def test_the_dashboard_covers_what_operators_watch(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "voxswitch_active_calls", "voxswitch_calls_offered_total",
        "voxswitch_turn_latency_seconds_bucket", "voxswitch_rtp_loss_ratio_bucket",
        "voxswitch_rtp_jitter_seconds_bucket", "voxswitch_event_loop_lag_seconds_bucket",
        "voxswitch_outbox_depth", "voxswitch_trunk_up",
    ):  # fmt: skip
        assert metric in exprs, metric
