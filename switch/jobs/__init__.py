"""Batch jobs: archive recordings, transcribe them again, apply retention, compute the
daily reports.

Each job is an async function of a :class:`~switch.jobs.context.JobContext` and its
options that returns a summary (a JSON object). ``voxswitch jobs run NAME`` runs one
once, in the foreground (what a Kubernetes CronJob calls); ``voxswitch worker`` runs
them as Celery tasks on the Redis broker (``switch.jobs.worker``). Jobs are safe to run
twice: what they write is keyed by what it is about (a call and an engine, a day), and
the events they publish carry ids derived from their content (``events.stable_id``),
so a worker killed before it acknowledged a task is simply run again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switch.jobs.context import JobContext


class JobError(Exception):
    """A job cannot run as configured (a missing setting, a bad option): not retried."""


JobFunction = Callable[..., Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Job:
    name: str
    summary: str
    module: str  # imported when the job runs: the CLI stays quick to start
    function: str
    options: tuple[str, ...] = ()

    def load(self) -> JobFunction:
        import importlib

        return getattr(importlib.import_module(self.module), self.function)  # type: ignore[no-any-return]


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("archive", "upload recordings that wait for the S3 archive (one pass)",
            "switch.jobs.runs", "archive"),
        Job("transcribe", "transcribe recorded calls again (both channels) into PostgreSQL",
            "switch.jobs.transcribe", "transcribe", ("call_id", "limit")),
        Job("retention", "delete calls and recordings older than retention_days",
            "switch.jobs.retention", "retention", ("days",)),
        Job("daily_report", "aggregate a day's calls per trunk, agent and disposition",
            "switch.jobs.analytics", "daily_report", ("day",)),
    )
}  # fmt: skip


async def run_job(context: JobContext, name: str, **options: Any) -> dict[str, Any]:
    job = JOBS.get(name)
    if job is None:
        raise JobError(f"no job {name!r} (jobs: {', '.join(JOBS)})")
    unknown = sorted(set(options) - set(job.options))
    if unknown:
        raise JobError(f"job {name}: unknown option {unknown[0]!r}")
    return await job.load()(context, **options)
