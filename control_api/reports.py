"""Reports: the daily analytics the ``daily_report`` job computed (scope
``reports:read``). ``GET /v1/reports/daily?day=`` for one day, ``?from=&to=`` for a
range (inclusive, at most ``MAX_DAYS``); days the job has not computed are listed in
``missing_days`` (run ``voxswitch jobs run daily_report --day D``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

MAX_DAYS = 366

FetchDaily = Callable[[dt.date, dt.date], Awaitable[list[dict[str, Any]]]]


def query_error(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["query", field], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


def report_router(fetch: FetchDaily | None, require: Callable[[str], Any]) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/reports/daily", dependencies=[require("reports:read")], response_model=None)
    async def daily(
        day: Annotated[dt.date | None, Query(description="one day (YYYY-MM-DD)")] = None,
        first: Annotated[dt.date | None, Query(alias="from", description="first day")] = None,
        last: Annotated[dt.date | None, Query(alias="to", description="last day")] = None,
    ) -> dict[str, Any] | JSONResponse:
        """Calls per day, trunk, agent and disposition: answered, handle time, turn
        latency p50/p95, transfer and barge-in rates."""
        if day is not None and (first or last):
            return query_error("day", "give day, or from and to, not both")
        if day is None and (first is None or last is None):
            return query_error("day" if first is None and last is None else
                               ("from" if first is None else "to"),
                               "give day, or both from and to")  # fmt: skip
        start, end = (day, day) if day is not None else (first, last)
        assert start is not None and end is not None
        if end < start:
            return query_error("to", "must not be before from")
        if (end - start).days >= MAX_DAYS:
            return query_error("to", f"at most {MAX_DAYS} days at once")
        if fetch is None:
            # Not an outage to retry: this node keeps no reports.
            raise HTTPException(404, "no reports here: they need PostgreSQL (postgres_dsn)")
        try:
            rows = await fetch(start, end)
        except Exception as exc:  # PostgreSQL unreachable: say so, and when to retry
            raise HTTPException(
                503, f"the reports database did not answer: {type(exc).__name__}: {exc}",
                headers={"Retry-After": "10"},
            ) from exc  # fmt: skip
        computed = {row["day"] for row in rows}
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        return {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "rows": rows,
            "missing_days": [d.isoformat() for d in days if d.isoformat() not in computed],
        }

    return router
