"""The node's backbone: lifecycle events into the outbox, and couriers that deliver them.

``Backbone.publish`` appends an event to the spool (durable at once) and wakes one
courier per sink. A courier reads a batch from its cursor, hands it to its sink, and
commits the cursor when the sink returns; when the sink raises (the service is down,
a timeout), it logs once, counts, waits with backoff (0.5 s doubling to 30 s), and
retries the same batch. So an outage delays events and never drops them, and their
order per sink is the order they were published.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from switch.backbone.sinks import Event, FileSink, KafkaSink, PostgresSink, Sink
from switch.backbone.spool import Spool
from switch.backbone.webhooks import WebhookSink
from switch.guard.targets import TargetPolicy

log = logging.getLogger("voxswitch.backbone")

LINGER_S = 0.02
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class Courier:
    """Delivers one sink's share of the spool, in order, until cancelled."""

    def __init__(self, spool: Spool, sink: Sink) -> None:
        self.spool = spool
        self.sink = sink
        self.reader = spool.reader(sink.name)
        self.wake = asyncio.Event()
        self.up = True  # the last delivery worked (or none was tried yet)
        self.failures = 0
        self.delivered = 0
        self.last_error = ""

    async def run(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            batch = self.reader.read(self.sink.batch)
            if not batch:
                self.wake.clear()
                await self.wake.wait()
                # Let a burst gather: one batch, one round trip, one commit.
                await asyncio.sleep(LINGER_S)
                continue
            try:
                await self.sink.deliver([event for _, event in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.up:
                    log.warning(
                        "%s unreachable (%s): %d events wait in the spool; retrying",
                        self.sink.name, self.last_error, self.spool.depth(self.sink.name),
                    )  # fmt: skip
                self.up = False
                self.reader.rewind()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self.reader.commit(batch[-1][0])
            self.delivered += len(batch)
            if not self.up:
                log.warning("%s is back: delivering the spool", self.sink.name)
            self.up = True
            backoff = BACKOFF_START_S
            await asyncio.sleep(0)  # the loop turns before the next batch

    def status(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "depth": self.spool.depth(self.sink.name),
            "delivered": self.delivered,
            "failures": self.failures,
            "last_error": self.last_error,
            "rejected": getattr(self.sink, "rejected", 0),  # kept aside (webhook 4xx)
            "refused": getattr(self.sink, "refused", 0),  # of those: target refused (SSRF)
        }


class Backbone:
    """The spool and its couriers: ``publish`` from the call manager, ``close`` at exit."""

    def __init__(self, spool_dir: str | Path, sinks: list[Sink], *, max_bytes: int) -> None:
        self.sinks = sinks
        self.spool = Spool(spool_dir, [s.name for s in sinks], max_bytes=max_bytes)
        self.couriers = [Courier(self.spool, s) for s in sinks]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(c.run(), name=f"courier {c.sink.name}") for c in self.couriers
        ]

    def publish(self, event: Event) -> None:
        self.spool.append(event)
        for courier in self.couriers:
            courier.wake.set()

    @property
    def full(self) -> bool:
        """The undelivered backlog is over its bound: take no new calls."""
        return self.spool.full

    async def flush(self, timeout: float) -> bool:
        """Wait until every sink has what was published (or ``timeout``); True if so."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(self.spool.depth(c.sink.name) for c in self.couriers):
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sink in self.sinks:
            await sink.close()
        self.spool.close()

    def status(self) -> dict[str, Any]:
        return {
            "spool_bytes": self.spool.pending_bytes,
            "spool_full": self.spool.full,
            "sinks": {c.sink.name: c.status() for c in self.couriers},
        }


def build_sinks(
    *,
    kafka_bootstrap: str,
    kafka_topic: str,
    postgres_dsn: str,
    events_file: str,
    node_id: str,
    webhook_url: str = "",
    webhook_secret: str = "",
    spool_dir: str | Path = ".",
    webhook_targets: TargetPolicy | None = None,
) -> list[Sink]:
    """Kafka and/or PostgreSQL when configured, else the local events file; and the
    webhook when one is set, or a secret to sign the calls' own webhooks with."""
    sinks: list[Sink] = []
    if kafka_bootstrap:
        sinks.append(KafkaSink(kafka_bootstrap, kafka_topic, f"voxswitch-{node_id}"))
    if postgres_dsn:
        sinks.append(PostgresSink(postgres_dsn))
    if not sinks and events_file:
        sinks.append(FileSink(events_file))
    if webhook_url or webhook_secret:
        dead = Path(spool_dir) / "webhook-dead-letters.jsonl"
        sinks.append(WebhookSink(webhook_url, webhook_secret, dead, targets=webhook_targets))
    return sinks
