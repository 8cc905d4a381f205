"""Retention: calls older than ``retention_days`` go, with everything about them.

A call is old when it ended (or, never answered and never ended, was offered) before
the cut-off. Its recording is deleted first (the local file and its archive manifest,
or the object in the S3 archive); only then its rows (turns, events, transcript, the
call) in one transaction, so a failure part-way leaves a row that points at nothing
rather than a recording nobody can find; the next run finishes it. A recording the
job cannot delete (the store is down) keeps its call for the next run. Then the
recordings folder itself: files older than the cut-off that no call row names (a node
without PostgreSQL) are deleted by their age. The daily reports hold no caller data
and are kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from switch.jobs import JobError
from switch.jobs.context import JobContext
from switch.recording.archive import MANIFEST_SUFFIX

log = logging.getLogger("voxswitch.jobs")

BATCH = 500


async def retention(context: JobContext, days: int | str | None = None) -> dict[str, Any]:
    keep_days = int(days) if days is not None else context.settings.retention_days
    if keep_days <= 0:
        raise JobError("retention: retention_days is 0 (keep everything); set it above 0")
    cutoff = time.time() - keep_days * 86400
    result: dict[str, Any] = {"days": keep_days, "calls": 0, "recordings": 0, "kept": {}}
    if context.has_db:
        await _old_calls(context, cutoff, result)
    result["files"] = await asyncio.to_thread(_old_files, Path(context.settings.recordings_dir),
                                              cutoff)  # fmt: skip
    return result


async def _old_calls(context: JobContext, cutoff: float, result: dict[str, Any]) -> None:
    db = await context.db()
    before = dt.datetime.fromtimestamp(cutoff, dt.UTC)
    kept: dict[str, str] = result["kept"]
    while True:
        rows = await db.fetch(
            "SELECT call_id, recording FROM calls WHERE coalesce(ended_at, offered_at) < $1"
            " AND NOT (call_id = ANY($2::text[])) ORDER BY call_id LIMIT $3",
            before, list(kept), BATCH,
        )  # fmt: skip
        if not rows:
            return
        gone: list[str] = []
        for row in rows:
            try:
                if row["recording"]:
                    await _delete_recording(context, json.loads(row["recording"]))
                    result["recordings"] += 1
            except (OSError, BotoCoreError, ClientError, JobError) as exc:
                kept[row["call_id"]] = f"{type(exc).__name__}: {exc}"
                log.warning("call %s: recording not deleted (kept for the next run): %s",
                            row["call_id"], exc)  # fmt: skip
                continue
            gone.append(row["call_id"])
        async with db.transaction():
            for table in ("call_turns", "call_events", "call_transcripts", "calls"):
                await db.execute(f"DELETE FROM {table} WHERE call_id = ANY($1::text[])", gone)
        result["calls"] += len(gone)


async def _delete_recording(context: JobContext, recording: dict[str, Any]) -> None:
    location = str(recording.get("location") or "")
    if location.startswith("s3://"):
        await asyncio.to_thread(context.archive().delete, location)
    elif location:
        path = Path(location)
        path.unlink(missing_ok=True)
        path.with_name(path.name + MANIFEST_SUFFIX).unlink(missing_ok=True)


def _old_files(root: Path, cutoff: float) -> int:
    """Recordings (and their manifests) last written before the cut-off; empty day
    folders after them."""
    if not root.is_dir():
        return 0
    deleted = 0
    for path in sorted(root.rglob("*.wav")):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                path.with_name(path.name + MANIFEST_SUFFIX).unlink(missing_ok=True)
                deleted += 1
        except FileNotFoundError:
            continue  # the node's archive took it meanwhile
    # Only past days' folders: today's may be about to receive a new recording.
    last_day = dt.datetime.fromtimestamp(cutoff, dt.UTC).date().isoformat()
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and folder.name < last_day and not any(folder.iterdir()):
            folder.rmdir()
    return deleted
