"""The checkpointer's rounds against the in-memory store (Redis: tests/e2e)."""

from __future__ import annotations

from typing import Any

from switch.cluster.checkpoints import Checkpointer, MemoryCheckpoints


class CountingStore(MemoryCheckpoints):
    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[list[str]] = []

    async def save(self, node_id: str, snapshots: list[dict[str, Any]], ttl_s: int) -> list[str]:
        self.rounds.append([s["call_id"] for s in snapshots])
        return await super().save(node_id, snapshots, ttl_s)


async def test_every_live_call_each_second_in_slices_and_changes_at_once() -> None:
    store = CountingStore()
    live = {f"c{i}": (lambda i=i: {"call_id": f"c{i}", "n": i}) for i in range(25)}
    checkpointer = Checkpointer(store, "n1", 60, lambda: live)
    for _ in range(10):  # one second of rounds
        await checkpointer.round()
    saved = [c for r in store.rounds for c in r]
    assert sorted(saved) == sorted(live)  # everyone once within the second
    assert max(len(r) for r in store.rounds) <= 3  # 25 calls over 10 rounds
    assert set(await store.owned("n1")) == set(live)
    checkpointer.changed("c7")
    await checkpointer.round()
    assert "c7" in store.rounds[-1]  # the next round, not the next second
    del live["c3"]
    checkpointer.ended("c3")
    await checkpointer.round()
    assert "c3" not in await store.owned("n1")
    assert checkpointer.status()["up"] and checkpointer.status()["failures"] == 0


class DownStore(MemoryCheckpoints):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def save(self, node_id: str, snapshots: list[dict[str, Any]], ttl_s: int) -> list[str]:
        if self.down:
            raise ConnectionRefusedError("store unreachable")
        return await super().save(node_id, snapshots, ttl_s)


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
    assert await store.owned("n1") == ["c1"]


async def test_a_claimed_call_is_the_claimers_and_its_old_owner_is_told_on_its_next_save() -> None:
    store = MemoryCheckpoints()
    live = {"c1": lambda: {"call_id": "c1", "step": "listening"}}
    taken: list[str] = []
    checkpointer = Checkpointer(store, "n1", 60, lambda: live, on_taken=taken.append)
    for _ in range(10):
        await checkpointer.round()
    assert await store.claim("n1", "n2", "c1", 60) == {"call_id": "c1", "step": "listening"}
    assert await store.claim("n1", "n3", "c1", 60) is None  # one adopter only
    assert await store.owned("n1") == [] and await store.owned("n2") == ["c1"]
    checkpointer.changed("c1")
    await checkpointer.round()  # n1 was only slow: its save is refused
    assert taken == ["c1"]
    assert store.snapshots["c1"] == {"call_id": "c1", "step": "listening"}
    checkpointer.ended("c1")
    await checkpointer.round()  # nor may it delete the adopter's checkpoint
    assert await store.owned("n2") == ["c1"]
