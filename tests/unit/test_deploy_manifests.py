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
