"""What a job works with: the settings, PostgreSQL, the archive, and the sinks its
events go to."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from switch.backbone.sinks import Event, FileSink, KafkaSink, PgLink, PostgresSink, Sink
from switch.config import Settings
from switch.jobs import JobError


class JobContext:
    """Opened per run (each Celery task runs its job in a fresh event loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = f"jobs@{socket.gethostname()}"
        self._link = PgLink(settings.postgres_dsn, timeout_s=10) if settings.postgres_dsn else None
        self._archive: Any = None
        # PostgreSQL first: a job's rows and its event are written in one transaction
        # there, then the event goes to Kafka. A failure raises: the job is run again
        # and the same event (same id) is delivered again, never lost.
        self.sinks: list[Sink] = []
        if settings.postgres_dsn:
            self.sinks.append(PostgresSink(settings.postgres_dsn))
        if settings.kafka_bootstrap:
            self.sinks.append(
                KafkaSink(settings.kafka_bootstrap, settings.kafka_topic, self.node_id)
            )
        if not self.sinks and settings.events_file:
            self.sinks.append(FileSink(settings.events_file))

    async def db(self) -> Any:
        """The PostgreSQL connection (migrated); JobError without ``postgres_dsn``."""
        if self._link is None:
            raise JobError("this job needs PostgreSQL: set postgres_dsn")
        return await self._link.get()

    @property
    def has_db(self) -> bool:
        return self._link is not None

    def archive(self, required: bool = True) -> Any:
        """The S3 archive (``switch.recording.archive.RecordingArchive``) of the
        recordings folder; None (or JobError when ``required``) without ``s3_url``."""
        if self._archive is None and self.settings.s3_url:
            from switch.recording.archive import ArchiveConfigError, RecordingArchive, S3Target

            try:
                target = S3Target.from_url(self.settings.s3_url, self.settings.s3_region)
            except ArchiveConfigError as exc:
                raise JobError(str(exc)) from exc
            self._archive = RecordingArchive(
                target, Path(self.settings.recordings_dir), publish=self.publish,
                node_id=self.node_id,
            )  # fmt: skip
        if self._archive is None and required:
            raise JobError("this job needs the S3 archive: set s3_url")
        return self._archive

    async def publish(self, event: Event) -> None:
        for sink in self.sinks:
            await sink.deliver([event])

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()
        if self._link is not None:
            await self._link.close()


async def run_in_context(settings: Settings, name: str, **options: Any) -> dict[str, Any]:
    """Run one job in a context opened and closed around it."""
    from switch.jobs import run_job

    context = JobContext(settings)
    try:
        return await run_job(context, name, **options)
    finally:
        await context.close()
