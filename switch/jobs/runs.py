"""Small jobs that lean on code that lives elsewhere."""

from __future__ import annotations

from typing import Any

from switch.jobs.context import JobContext


async def archive(context: JobContext) -> dict[str, Any]:
    """Upload every recording that waits in ``recordings_dir`` (a node that is gone
    left them, or no node uploads: the CronJob's safety net). A node uploading the same
    folder at the same time is harmless: the same object is put again and the same
    ``call.archived`` event (same id) said again."""
    result: dict[str, Any] = await context.archive().sweep()
    return result
