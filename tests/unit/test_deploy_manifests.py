"""The Kubernetes manifests in deploy/kubernetes: every CronJob runs a job that exists,
with arguments our own CLI accepts, the settings it reads, and the recordings volume
where the job reads recordings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from switch.cli import _build_parser
from switch.jobs import JOBS

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "jobs.yaml"
CRON_FIELD = r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*"
NEEDS_RECORDINGS = {"archive", "retention"}


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(spec["template"]["spec"])


def test_every_job_has_a_cronjob_and_each_runs_a_real_job(documents: list[dict[str, Any]]) -> None:
    [settings] = by_kind(documents, "ConfigMap")
    recordings = settings["data"]["VOXSWITCH_RECORDINGS_DIR"]
    ran = set()
    for cron in by_kind(documents, "CronJob"):
        spec = cron["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        fields = spec["schedule"].split()
        assert len(fields) == 5 and all(re.fullmatch(CRON_FIELD, f) for f in fields), fields
        job_pod = pod(spec["jobTemplate"]["spec"])
        assert job_pod["restartPolicy"] == "Never"
        assert job_pod["securityContext"]["runAsNonRoot"] is True
        [container] = job_pod["containers"]
        args = _build_parser().parse_args(container["args"])  # our CLI takes them
        assert (args.command, args.jobs_command) == ("jobs", "run")
        assert args.name in JOBS
        ran.add(args.name)
        refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
        assert refs == ["voxswitch-settings", "voxswitch-secrets"]
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        if args.name in NEEDS_RECORDINGS:
            assert mounts == [recordings], cron["metadata"]["name"]
    assert ran == set(JOBS)


def test_the_workers_take_tasks_and_have_time_to_finish_one(
    documents: list[dict[str, Any]],
) -> None:
    [deployment] = by_kind(documents, "Deployment")
    worker_pod = pod(deployment["spec"])
    [container] = worker_pod["containers"]
    args = _build_parser().parse_args(container["args"])
    assert args.command == "worker" and args.concurrency >= 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert worker_pod["terminationGracePeriodSeconds"] >= 60


NODES = MANIFESTS.with_name("voxswitch.yaml")
KAMAILIO_CFG = MANIFESTS.parents[1] / "kamailio" / "kamailio.cfg"


@pytest.fixture(scope="module")
def node_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(NODES.read_text()) if d]


def node_pod(node_documents: list[dict[str, Any]]) -> dict[str, Any]:
    [statefulset] = by_kind(node_documents, "StatefulSet")
    return pod(statefulset["spec"])


def test_the_node_runs_serve_with_real_settings_and_probes_that_fit_a_drain(
    node_documents: list[dict[str, Any]],
) -> None:
    from switch.config import settings_fields

    spec = node_pod(node_documents)
    [container] = spec["containers"]
    args = _build_parser().parse_args(container["args"])
    assert args.command == "serve" and (args.sip_port, args.api_port) == ("5060", "8080")
    known = {f.name for f in settings_fields()}
    for env in container["env"]:
        assert env["name"].startswith("VOXSWITCH_")
        assert env["name"].removeprefix("VOXSWITCH_").lower() in known, env["name"]
    drain = next(float(e["value"]) for e in container["env"] if e["name"].endswith("DRAIN_GRACE_S"))
    assert spec["terminationGracePeriodSeconds"] >= drain + 10
    ready = container["readinessProbe"]["httpGet"]
    assert (ready["path"], str(ready["port"])) == ("/health", args.api_port)
    assert "httpGet" not in container["livenessProbe"]  # /health is 503 while draining
    if spec.get("hostNetwork"):  # one node per host: the ports are the host's
        term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term[0]["topologyKey"] == "kubernetes.io/hostname"


def test_the_budget_autoscaler_and_service_select_the_nodes(
    node_documents: list[dict[str, Any]],
) -> None:
    [statefulset] = by_kind(node_documents, "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"] == labels
    [budget] = by_kind(node_documents, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == labels
    [hpa] = by_kind(node_documents, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == statefulset["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    metrics_source = (MANIFESTS.parents[2] / "control_api" / "metrics.py").read_text()
    assert f'"{metric}"' in metrics_source  # a gauge the node really exports
    headless = next(
        s
        for s in by_kind(node_documents, "Service")
        if s["metadata"]["name"] == statefulset["spec"]["serviceName"]
    )
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"] == labels


def test_kamailio_gets_the_settings_its_config_defines(
    node_documents: list[dict[str, Any]],
) -> None:
    balancer = next(
        d for d in by_kind(node_documents, "Deployment") if "kamailio" in d["metadata"]["name"]
    )
    [container] = pod(balancer["spec"])["containers"]
    args = container["args"]
    defines = {args[i + 1].split("=", 1)[0] for i, a in enumerate(args) if a == "-A"}
    config = KAMAILIO_CFG.read_text()
    assert defines and all(f"#!ifndef {name}" in config for name in defines), defines
    assert args[args.index("-f") + 1].endswith("/kamailio.cfg")
