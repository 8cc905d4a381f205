"""The checkpointer's rounds against the in-memory store (Redis: tests/e2e)."""

from __future__ import annotations

import asyncio
from typing import Any

from switch.checkpoints import Checkpointer, MemoryCheckpoints


class CountingStore(MemoryCheckpoints):
    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[list[str]] = []

    async def save(self, node_id: str, snapshots: list[dict[str, Any]], ttl_s: int) -> None:
        self.rounds.append([s["call_id"] for s in snapshots])
        await super().save(node_id, snapshots, ttl_s)


async def test_every_live_call_each_second_in_slices_and_changes_at_once() -> None:
    store = CountingStore()
    live = {f"c{i}": (lambda i=i: {"call_id": f"c{i}", "n": i}) for i in range(25)}
    checkpointer = Checkpointer(store, "n1", 60, lambda: live)
    task = asyncio.ensure_future(checkpointer.run())
    try:
        await asyncio.sleep(1.05)
        saved = {c for r in store.rounds for c in r}
        assert saved == set(live)  # everyone within a second
        assert max(len(r) for r in store.rounds) <= 3  # 25 calls over 10 rounds
        assert {c["call_id"] for c in await store.owned("n1")} == set(live)
        before = len(store.rounds)
        checkpointer.changed("c7")
        await asyncio.sleep(0.15)
        assert any("c7" in r for r in store.rounds[before:])  # within a round
        del live["c3"]
        checkpointer.ended("c3")
        await asyncio.sleep(0.15)
        assert "c3" not in {c["call_id"] for c in await store.owned("n1")}
        assert checkpointer.status()["up"] and checkpointer.status()["failures"] == 0
    finally:
        task.cancel()


class DownStore(MemoryCheckpoints):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def save(self, node_id: str, snapshots: list[dict[str, Any]], ttl_s: int) -> None:
        if self.down:
            raise ConnectionRefusedError("store unreachable")
        await super().save(node_id, snapshots, ttl_s)


async def test_an_unreachable_store_is_counted_and_retried() -> None:
    store = DownStore()
    live = {"c1": lambda: {"call_id": "c1"}}
    checkpointer = Checkpointer(store, "n1", 60, lambda: live)
    task = asyncio.ensure_future(checkpointer.run())
    try:
        await asyncio.sleep(0.35)
        status = checkpointer.status()
        assert not status["up"] and status["failures"] >= 2
        assert "unreachable" in status["last_error"]
        store.down = False
        await asyncio.sleep(1.1)
        assert checkpointer.status()["up"]
        assert await store.owned("n1") == [{"call_id": "c1"}]
    finally:
        task.cancel()
