"""The checkpointer's rounds against the in-memory store (Redis: tests/e2e)."""

from __future__ import annotations

from typing import Any

from switch.backbone.checkpoints import Checkpointer, MemoryCheckpoints


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
    for _ in range(10):  # one second of rounds
        await checkpointer.round()
    saved = [c for r in store.rounds for c in r]
    assert sorted(saved) == sorted(live)  # everyone once within the second
    assert max(len(r) for r in store.rounds) <= 3  # 25 calls over 10 rounds
    assert {c["call_id"] for c in await store.owned("n1")} == set(live)
    checkpointer.changed("c7")
    await checkpointer.round()
    assert "c7" in store.rounds[-1]  # the next round, not the next second
    del live["c3"]
    checkpointer.ended("c3")
    await checkpointer.round()
    assert "c3" not in {c["call_id"] for c in await store.owned("n1")}
    assert checkpointer.status()["up"] and checkpointer.status()["failures"] == 0


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
    checkpointer.ended("gone")
    for _ in range(3):
        await checkpointer.round()
    status = checkpointer.status()
    assert not status["up"] and status["failures"] == 3
    assert "unreachable" in status["last_error"]
    store.down = False
    for _ in range(10):
        await checkpointer.round()
    assert checkpointer.status()["up"]
    assert await store.owned("n1") == [{"call_id": "c1"}]
