"""Celery workers for the batch jobs (``voxswitch worker``), on the Redis broker.

Every job of ``switch.jobs.JOBS`` is the task ``voxswitch.<name>`` (options as keyword
arguments). Tasks are acknowledged late, when they finished: a worker that dies
mid-task (SIGKILL, an OOM kill, a lost node) leaves its task unacknowledged, and it is
run again: at once when only the pool process died (``task_reject_on_worker_lost``),
after ``jobs_visibility_s`` when the whole worker went (the broker hands it to another
worker). Each worker takes one task per pool process at a time (prefetch 1), so a
killed worker takes nothing else down with it. A task that fails for a reason that may
pass (PostgreSQL, Kafka or S3 unreachable) is retried with a growing pause (5 s
doubling to 5 min); a ``JobError`` (a missing setting) is not.

``--beat`` also runs the schedule (for a deployment without Kubernetes CronJobs):
archive every 5 minutes (with ``s3_url``), transcribe every 15, the daily report at
00:30 UTC, retention at 03:00 UTC (with ``retention_days``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from typing import Any

from celery import Celery
from celery.schedules import crontab

from switch.config import Settings
from switch.jobs import JOBS, JobError
from switch.jobs.context import run_in_context

TASK_PREFIX = "voxswitch."
QUEUE = "voxswitch.jobs"
RETRY_BACKOFF_S = 5
RETRY_BACKOFF_MAX_S = 300
MAX_RETRIES = 20


def broker_url(settings: Settings) -> str:
    url = settings.jobs_broker_url or settings.redis_url
    if not url:
        raise JobError("batch jobs need Redis: set redis_url (or jobs_broker_url)")
    return url


def make_app(settings: Settings) -> Celery:
    url = broker_url(settings)
    app = Celery("voxswitch", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,  # the result backend says STARTED (and which process)
        task_default_queue=QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 86400,
        broker_transport_options={
            "visibility_timeout": settings.jobs_visibility_s,
            # Look for a dead worker's tasks every few seconds (kombu's default sweep
            # is every 100 s: a killed worker's task would wait that long on top).
            "unacked_restore_interval": max(1, min(10, settings.jobs_visibility_s // 3)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=schedule(settings),
        beat_schedule_filename=_beat_file(url),
        timezone="UTC",
    )
    for name in JOBS:
        app.task(
            name=TASK_PREFIX + name,
            bind=True,
            autoretry_for=(Exception,),
            dont_autoretry_for=(JobError,),
            retry_backoff=RETRY_BACKOFF_S,
            retry_backoff_max=RETRY_BACKOFF_MAX_S,
            max_retries=MAX_RETRIES,
        )(_runner(settings, name))
    return app


def _runner(settings: Settings, name: str) -> Any:
    def run(task: Any, **options: Any) -> dict[str, Any]:
        # A fresh loop per task: asyncpg and aiokafka connections belong to one loop.
        return asyncio.run(run_in_context(settings, name, **options))

    run.__name__ = name
    return run


def schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {
        "transcribe": {"task": TASK_PREFIX + "transcribe", "schedule": 15 * 60.0},
        "daily_report": {"task": TASK_PREFIX + "daily_report",
                         "schedule": crontab(minute="30", hour="0")},
    }  # fmt: skip
    if settings.s3_url:
        entries["archive"] = {"task": TASK_PREFIX + "archive", "schedule": 5 * 60.0}
    if settings.retention_days > 0:
        entries["retention"] = {"task": TASK_PREFIX + "retention",
                                "schedule": crontab(minute="0", hour="3")}  # fmt: skip
    return entries


def _beat_file(url: str) -> str:
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"voxswitch-beat-{tag}")


def run_worker(settings: Settings, concurrency: int, beat: bool) -> None:
    """Run a worker in the foreground until it is stopped (SIGTERM: warm shutdown)."""
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--loglevel={settings.log_level.upper()}",
        f"--hostname=voxswitch-{os.getpid()}@%h",
        f"--queues={QUEUE}",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        argv.append("--beat")
    make_app(settings).worker_main(argv)


def enqueue(settings: Settings, name: str, options: dict[str, Any]) -> str:
    """Put a job on the queue for the workers; returns the task id."""
    if name not in JOBS:
        raise JobError(f"no job {name!r} (jobs: {', '.join(JOBS)})")
    result = make_app(settings).send_task(TASK_PREFIX + name, kwargs=options, queue=QUEUE)
    return str(result.id)
