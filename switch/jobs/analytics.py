"""The daily analytics ETL: a day's calls (UTC, by when they were offered) aggregated
per trunk, agent and disposition into ``daily_call_stats``.

Per group: calls, answered calls, average and total handle time (answer to hang-up),
agent turns with their end-of-speech → first-audio latency p50/p95, transfers (and
their share of answered calls), barge-ins (turns the caller interrupted, and their
share of turns). A day is replaced whole in one transaction, so running the job again
(a retry, a late call record) gives the same rows, never twice as many.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from switch.backbone.sinks import PgLink
from switch.jobs import JobError
from switch.jobs.context import JobContext

_AGGREGATE = """
WITH c AS (
    SELECT call_id, trunk, agent, coalesce(disposition, 'unknown') AS disposition,
           answered_at, duration_s, transfer_target
    FROM calls WHERE offered_at >= $2 AND offered_at < $3
), t AS (
    SELECT c.trunk, c.agent, c.disposition, count(*) AS turns,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_s) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_s) AS p95,
           count(*) FILTER (WHERE interrupted) AS barge_ins
    FROM call_turns JOIN c USING (call_id)
    GROUP BY c.trunk, c.agent, c.disposition
)
INSERT INTO daily_call_stats (day, trunk, agent, disposition, calls, answered,
    handle_s_avg, handle_s_total, turns, turn_latency_p50, turn_latency_p95, transfers,
    transfer_rate, barge_ins, barge_in_rate, computed_at)
SELECT $1::date, c.trunk, c.agent, c.disposition, count(*), count(c.answered_at),
       avg(c.duration_s) FILTER (WHERE c.answered_at IS NOT NULL),
       coalesce(sum(c.duration_s) FILTER (WHERE c.answered_at IS NOT NULL), 0),
       coalesce(max(t.turns), 0), max(t.p50), max(t.p95),
       count(*) FILTER (WHERE coalesce(c.transfer_target, '') <> ''),
       count(*) FILTER (WHERE coalesce(c.transfer_target, '') <> '')::double precision
           / nullif(count(c.answered_at), 0),
       coalesce(max(t.barge_ins), 0),
       max(t.barge_ins)::double precision / nullif(max(t.turns), 0),
       now()
FROM c LEFT JOIN t USING (trunk, agent, disposition)
GROUP BY c.trunk, c.agent, c.disposition
"""

COLUMNS = (
    "trunk", "agent", "disposition", "calls", "answered", "handle_s_avg", "handle_s_total",
    "turns", "turn_latency_p50", "turn_latency_p95", "transfers", "transfer_rate",
    "barge_ins", "barge_in_rate",
)  # fmt: skip


def parse_day(text: str | None, *, today: dt.date | None = None) -> dt.date:
    """``YYYY-MM-DD``; none given: yesterday (UTC), the last whole day."""
    if not text:
        return (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise JobError(f"day: expected YYYY-MM-DD, got {text!r}") from None


async def daily_report(context: JobContext, day: str | None = None) -> dict[str, Any]:
    date = parse_day(day)
    start = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
    db = await context.db()
    async with db.transaction():
        await db.execute("DELETE FROM daily_call_stats WHERE day = $1", date)
        status = await db.execute(_AGGREGATE, date, start, start + dt.timedelta(days=1))
    rows = int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"
    calls = await db.fetchval("SELECT coalesce(sum(calls), 0) FROM daily_call_stats WHERE day = $1",
                              date)  # fmt: skip
    return {"day": date.isoformat(), "groups": rows, "calls": int(calls)}


async def fetch_daily(db: Any, first: dt.date, last: dt.date) -> list[dict[str, Any]]:
    """The computed rows of ``first``..``last`` (inclusive), by day then group."""
    rows = await db.fetch(
        "SELECT day, " + ", ".join(COLUMNS) + ", computed_at FROM daily_call_stats"
        " WHERE day BETWEEN $1 AND $2 ORDER BY day, trunk, agent, disposition",
        first, last,
    )  # fmt: skip
    out = []
    for row in rows:
        item = {name: row[name] for name in COLUMNS}
        item["day"] = row["day"].isoformat()
        item["computed_at"] = row["computed_at"].timestamp()
        out.append(item)
    return out


class DailyReports:
    """What the node's API serves: computed days from PostgreSQL, over one connection,
    one query at a time (asyncpg refuses overlapping ones)."""

    def __init__(self, dsn: str) -> None:
        self.link = PgLink(dsn, timeout_s=5)
        self._lock = asyncio.Lock()

    async def fetch(self, first: dt.date, last: dt.date) -> list[dict[str, Any]]:
        async with self._lock:
            try:
                return await fetch_daily(await self.link.get(), first, last)
            except BaseException:
                await self.link.reset()
                raise

    async def close(self) -> None:
        await self.link.close()
