"""Trunks and routes in PostgreSQL: every node of a cluster dials by the same table.

The API writes through this store first (a PostgreSQL outage is a 503 and changes
nothing); each node reloads the tables every ``trunks_reload_s`` so a change made on
one node reaches the others. The JSON file stays the node's local copy: a node that
starts while PostgreSQL is down dials by what it last knew.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from switch.backbone.sinks import PgLink

log = logging.getLogger("voxswitch.trunks")


class TrunkStoreError(Exception):
    """PostgreSQL could not be read or written."""


class PostgresTrunkStore:
    def __init__(self, dsn: str) -> None:
        self.link = PgLink(dsn, timeout_s=5)
        # One connection, one operation at a time: the reload loop and an API write
        # overlapping made asyncpg refuse the second ("another operation is in
        # progress"), whose reset then cut the first (seen in a CI-clone run: a PUT 503).
        self._lock = asyncio.Lock()

    async def _run(self, sql: str, *args: Any, fetch: bool = False) -> Any:
        async with self._lock:
            return await self._run_locked(sql, *args, fetch=fetch)

    async def _run_locked(self, sql: str, *args: Any, fetch: bool) -> Any:
        try:
            connection = await self.link.get()
            if fetch:
                return await connection.fetch(sql, *args)
            return await connection.execute(sql, *args)
        except (OSError, TimeoutError) as exc:
            await self.link.reset()
            raise TrunkStoreError(f"PostgreSQL unreachable: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("asyncpg"):
                await self.link.reset()
                raise TrunkStoreError(f"PostgreSQL error: {exc}") from exc
            raise

    async def load(self) -> dict[str, Any]:
        """Everything, in the shape of the JSON file (``TrunkBook.apply`` takes it)."""
        trunks = await self._run("SELECT config FROM trunks ORDER BY name", fetch=True)
        routes = await self._run("SELECT kind, config FROM routes ORDER BY name", fetch=True)
        return {
            "trunks": [json.loads(r["config"]) for r in trunks],
            "outbound_routes": [json.loads(r["config"]) for r in routes if r["kind"] == "outbound"],
            "inbound_routes": [json.loads(r["config"]) for r in routes if r["kind"] == "inbound"],
        }

    async def put_trunk(self, name: str, config: dict[str, Any]) -> None:
        await self._run(
            "INSERT INTO trunks (name, config) VALUES ($1, $2::jsonb) ON CONFLICT (name)"
            " DO UPDATE SET config = EXCLUDED.config, updated_at = now()",
            name, json.dumps(config),
        )  # fmt: skip

    async def delete_trunk(self, name: str) -> None:
        await self._run("DELETE FROM trunks WHERE name = $1", name)

    async def put_route(self, kind: str, name: str, config: dict[str, Any]) -> None:
        await self._run(
            "INSERT INTO routes (kind, name, config) VALUES ($1, $2, $3::jsonb)"
            " ON CONFLICT (kind, name) DO UPDATE SET config = EXCLUDED.config,"
            " updated_at = now()",
            kind, name, json.dumps(config),
        )  # fmt: skip

    async def delete_route(self, kind: str, name: str) -> None:
        await self._run("DELETE FROM routes WHERE kind = $1 AND name = $2", kind, name)

    async def close(self) -> None:
        await self.link.close()
