"""What the node (or a batch job) published: the Kafka topic read from its start, and
the events' JSON schema."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "call-events.v1.json").read_text()
)


def kafka_events(bootstrap: str, topic: str, expect: int, timeout_s: float = 20.0) -> list[Any]:
    """Every event on the topic, from the start, once at least ``expect`` distinct ones
    (by event id) arrived: delivery is at least once, so a copy may come too."""

    async def consume() -> list[Any]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        got: list[Any] = []
        try:
            deadline = time.monotonic() + timeout_s
            while len({e["event_id"] for _, e in got}) < expect and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for r in records:
                        got.append((r.key.decode(), json.loads(r.value)))
        finally:
            await consumer.stop()
        return got

    return asyncio.run(consume())
