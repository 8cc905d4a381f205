"""Where events go from the outbox: Kafka, PostgreSQL, or a local JSON-lines file.

A sink takes a batch of events and returns once the service has them (Kafka: every
event acknowledged by the broker with ``acks=all``; PostgreSQL: the transaction
committed); it raises when the service is unreachable, and the courier retries the
same batch later. Each sink connects lazily and reconnects after a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("voxswitch.backbone")

Event = dict[str, Any]


class Sink(Protocol):
    name: str
    # Events per delivery: a round trip to a service carries many; a sink whose write
    # does not await runs its whole batch in one step of the loop, so it takes few.
    batch: int

    async def deliver(self, events: list[Event]) -> None: ...

    async def close(self) -> None: ...


# ---- a local file (the embedded default) ----------------------------------------------


class FileSink:
    """Events as JSON lines in a file: ``make run`` needs no services."""

    name = "file"
    batch = 50  # decode, encode and write stay a millisecond or two of the loop

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def deliver(self, events: list[Event]) -> None:
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)

    async def close(self) -> None:
        return None


# ---- Kafka ----------------------------------------------------------------------------------


class KafkaSink:
    """One topic for the call lifecycle, keyed by call id; idempotent producer, acks=all."""

    name = "kafka"
    batch = 500

    def __init__(self, bootstrap: str, topic: str, client_id: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self._producer: Any = None

    async def _connect(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                enable_idempotence=True,
                acks="all",
                linger_ms=5,
                request_timeout_ms=10_000,
                value_serializer=lambda v: json.dumps(v, separators=(",", ":")).encode(),
                key_serializer=lambda k: k.encode(),
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def deliver(self, events: list[Event]) -> None:
        producer = await self._connect()
        try:
            sent = [await producer.send(self.topic, value=e, key=e["call_id"]) for e in events]
            await asyncio.gather(*sent)
        except BaseException:
            await self._reset()
            raise

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:  # already broken: we only let go of it
                log.debug("kafka: stopping a failed producer: %r", exc)

    async def close(self) -> None:
        await self._reset()


# ---- PostgreSQL -------------------------------------------------------------------------------


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of ``switch/backbone/migrations/NNN_name.sql``, in order."""
    found = []
    for entry in resources.files("switch.backbone.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(connection: Any) -> list[str]:
    """Apply the migrations this database lacks, each in its own transaction, under an
    advisory lock (two nodes starting at once do not race). Returns the names applied."""
    applied: list[str] = []
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(7468211)")
        rows = await connection.fetch("SELECT version FROM schema_migrations")
        done = {row["version"] for row in rows}
        for version, name, sql in migrations():
            if version in done:
                continue
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
    return applied


class PgLink:
    """One lazily opened PostgreSQL connection, migrated on connect; ``reset`` drops a
    broken one (the next use reconnects)."""

    def __init__(self, dsn: str, timeout_s: float) -> None:
        self.dsn = dsn
        self.timeout_s = timeout_s
        self._connection: Any = None

    async def get(self) -> Any:
        if self._connection is None or self._connection.is_closed():
            import asyncpg

            connection = await asyncpg.connect(self.dsn, timeout=self.timeout_s)
            try:
                applied = await migrate(connection)
            except BaseException:
                await connection.close()
                raise
            if applied:
                log.info("postgres: applied migrations %s", ", ".join(applied))
            self._connection = connection
        return self._connection

    async def reset(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.terminate()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            await connection.close()


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class PostgresSink:
    """Call records and turns, written in one transaction per batch; an event id already
    in ``call_events`` is skipped, so a redelivered batch changes nothing."""

    name = "postgres"
    batch = 500

    def __init__(self, dsn: str) -> None:
        self.link = PgLink(dsn, timeout_s=10)

    async def deliver(self, events: list[Event]) -> None:
        connection = await self.link.get()
        try:
            async with connection.transaction():
                for e in events:
                    fresh = await connection.fetchval(
                        "INSERT INTO call_events (event_id, call_id, type, ts, body)"
                        " VALUES ($1, $2, $3, $4, $5::jsonb)"
                        " ON CONFLICT (event_id) DO NOTHING RETURNING true",
                        e["event_id"], e["call_id"], e["type"], _time(e["ts"]), json.dumps(e),
                    )  # fmt: skip
                    if fresh:
                        await self._apply(connection, e)
        except BaseException:
            await self.link.reset()
            raise

    async def _apply(self, db: Any, e: Event) -> None:
        kind = e["type"]
        if kind == "call.offered":
            await db.execute(
                "INSERT INTO calls (call_id, direction, from_uri, to_uri, trunk, node_id,"
                " offered_at, sip_headers, metadata, campaign_id) VALUES ($1, $2, $3, $4, $5,"
                " $6, $7, $8::jsonb, $9::jsonb, $10) ON CONFLICT (call_id) DO NOTHING",
                e["call_id"], e["direction"], e["from_uri"], e["to_uri"], e["trunk"],
                e["node_id"], _time(e["ts"]), json.dumps(e.get("sip_headers") or {}),
                json.dumps(e.get("metadata") or {}), e.get("campaign_id") or "",
            )  # fmt: skip
        elif kind == "call.answered":
            await db.execute(
                "UPDATE calls SET answered_at = $2, codec = $3 WHERE call_id = $1",
                e["call_id"], _time(e["ts"]), e.get("codec"),
            )  # fmt: skip
        elif kind == "call.turn":
            await db.execute(
                "INSERT INTO call_turns (call_id, turn_index, event_id, source, caller_text,"
                " agent_text, interrupted, tools, latency_s, asr_s, llm_first_token_s,"
                " tts_first_audio_s, knowledge, kb_s, knowledge_error) VALUES ($1, $2, $3,"
                " $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13::jsonb, $14, $15)"
                " ON CONFLICT DO NOTHING",
                e["call_id"], e["index"], e["event_id"], e["source"], e["caller_text"],
                e["agent_text"], e["interrupted"], json.dumps(e["tools"]), e["latency_s"],
                e["asr_s"], e["llm_first_token_s"], e["tts_first_audio_s"],
                json.dumps(e.get("knowledge") or []), e.get("kb_s"), e.get("knowledge_error"),
            )  # fmt: skip
        elif kind == "call.dtmf":
            await db.execute(
                "UPDATE calls SET dtmf = $2 WHERE call_id = $1", e["call_id"], e["digits"]
            )
        elif kind == "call.transferred":
            await db.execute(
                "UPDATE calls SET transfer_target = $2 WHERE call_id = $1",
                e["call_id"], e["target"],
            )  # fmt: skip
        elif kind == "call.adopted":
            await db.execute(
                "UPDATE calls SET node_id = $2, nodes = $3::jsonb WHERE call_id = $1",
                e["call_id"], e["node_id"], json.dumps(e["nodes"]),
            )  # fmt: skip
        elif kind == "call.recorded":
            # call.ended comes first (one call's events are in order): the row exists.
            fields = {k: e[k] for k in ("location", "format", "channels", "bytes",
                                        "duration_s", "sha256") if k in e}  # fmt: skip
            await db.execute(
                "UPDATE calls SET recording = $2::jsonb WHERE call_id = $1",
                e["call_id"], json.dumps(fields),
            )  # fmt: skip
        elif kind == "call.archived":
            archived = {"location": e["location"], "archived_at": e["ts"]}
            await db.execute(
                "UPDATE calls SET recording = coalesce(recording, '{}'::jsonb) || $2::jsonb"
                " WHERE call_id = $1",
                e["call_id"], json.dumps(archived),
            )  # fmt: skip
        elif kind == "call.transcribed":
            await db.execute(
                "INSERT INTO call_transcripts (call_id, engine, event_id, caller_text,"
                " agent_text, segments, sha256, created_at) VALUES ($1, $2, $3, $4, $5,"
                " $6::jsonb, $7, $8) ON CONFLICT (call_id, engine) DO UPDATE SET"
                " event_id = EXCLUDED.event_id, caller_text = EXCLUDED.caller_text,"
                " agent_text = EXCLUDED.agent_text, segments = EXCLUDED.segments,"
                " sha256 = EXCLUDED.sha256, created_at = EXCLUDED.created_at",
                e["call_id"], e["engine"], e["event_id"], e["caller_text"], e["agent_text"],
                json.dumps(e["segments"]), e["sha256"], _time(e["ts"]),
            )  # fmt: skip
        elif kind == "call.ended":
            await db.execute(
                "INSERT INTO calls (call_id, direction, from_uri, to_uri, trunk, node_id,"
                " offered_at, answered_at, ended_at, duration_s, disposition, sip_code,"
                " reason, codec, packets_sent, packets_received, media, agent, nodes) VALUES"
                " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
                " $17::jsonb, $18, $19::jsonb)"
                " ON CONFLICT (call_id) DO UPDATE SET answered_at = EXCLUDED.answered_at,"
                " ended_at = EXCLUDED.ended_at, duration_s = EXCLUDED.duration_s,"
                " disposition = EXCLUDED.disposition, sip_code = EXCLUDED.sip_code,"
                " reason = EXCLUDED.reason, codec = EXCLUDED.codec,"
                " packets_sent = EXCLUDED.packets_sent,"
                " packets_received = EXCLUDED.packets_received, media = EXCLUDED.media,"
                " trunk = EXCLUDED.trunk, agent = EXCLUDED.agent,"
                " node_id = EXCLUDED.node_id, nodes = EXCLUDED.nodes",
                e["call_id"], e["direction"], e["from_uri"], e["to_uri"], e["trunk"],
                e["node_id"], _time(e["offered_at"]), _time(e["answered_at"]),
                _time(e["ended_at"]), e["duration_s"], e["disposition"], e["sip_code"],
                e["reason"], e["codec"], e["packets_sent"], e["packets_received"],
                json.dumps(e["media"]), e.get("agent") or "",
                json.dumps(e.get("nodes") or [e["node_id"]]),
            )  # fmt: skip

    async def close(self) -> None:
        await self.link.close()
