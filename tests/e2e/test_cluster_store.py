"""The cluster's Redis side against the real Redis (deploy/local/services.sh): fenced
checkpoints, one adopter per call however many race, heartbeats that expire, and the
takeover loop that adopts a silent node's calls (and judges nobody right after a
Redis outage)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from switch.cluster import build_cluster
from switch.cluster.checkpoints import CheckpointStore, RedisCheckpoints
from switch.cluster.membership import Membership
from switch.cluster.takeover import NodeIdInUse, Takeover, TakeoverConfig
from tests.e2e.tcp_proxy import TcpProxy


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]


@pytest.fixture
async def cluster(services: dict[str, str]) -> AsyncIterator[tuple[CheckpointStore, Membership]]:
    name = f"test-{uuid.uuid4().hex[:8]}"  # a cluster of its own: no other test's nodes
    store, members = build_cluster(services["VOXSWITCH_REDIS_URL"], name)
    yield store, members
    await store.close()


async def test_a_save_is_fenced_by_the_owner_and_a_claim_moves_the_call(
    cluster: tuple[CheckpointStore, Membership],
) -> None:
    store, _ = cluster
    a, b = _ids("node", 2)
    (call,) = _ids("call", 1)
    assert await store.save(a, [{"call_id": call, "step": "greeting"}], 60) == []
    assert await store.owned(a) == [call]
    claimed = await store.claim(a, b, call, 60)
    assert claimed == {"call_id": call, "step": "greeting"}
    assert await store.owned(a) == [] and await store.owned(b) == [call]
    # a was only slow: its next save is refused (and says so), its delete is a no-op.
    assert await store.save(a, [{"call_id": call, "step": "stale"}], 60) == [call]
    await store.delete(a, [call])
    assert await store.claim(b, b, call, 60) == {"call_id": call, "step": "greeting"}
    # The owner's save and delete work.
    assert await store.save(b, [{"call_id": call, "step": "listening"}], 60) == []
    await store.delete(b, [call])
    assert await store.owned(b) == [] and await store.claim(b, a, call, 60) is None


async def test_of_many_racing_adopters_exactly_one_gets_each_call(
    services: dict[str, str], cluster: tuple[CheckpointStore, Membership]
) -> None:
    store, _ = cluster
    dead = _ids("dead", 1)[0]
    calls = _ids("call", 50)
    await store.save(dead, [{"call_id": c} for c in calls], 60)
    adopters = _ids("adopter", 5)
    # Five nodes, each with its own connection, claim every call at once.
    stores = [RedisCheckpoints(services["VOXSWITCH_REDIS_URL"]) for _ in adopters]
    try:
        results = await asyncio.gather(*(
            asyncio.gather(*(s.claim(dead, node, c, 60) for c in calls))
            for s, node in zip(stores, adopters, strict=True)
        ))  # fmt: skip
    finally:
        for s in stores:
            await s.close()
    winners: dict[str, list[str]] = {}
    for node, claims in zip(adopters, results, strict=True):
        for call, got in zip(calls, claims, strict=True):
            if got is not None:
                winners.setdefault(call, []).append(node)
    assert sorted(winners) == sorted(calls)
    assert all(len(nodes) == 1 for nodes in winners.values()), winners
    owned = [c for node in adopters for c in await store.owned(node)]
    assert sorted(owned) == sorted(calls) and await store.owned(dead) == []


async def test_a_silent_member_is_found_once_its_heartbeat_expires(
    cluster: tuple[CheckpointStore, Membership],
) -> None:
    _, members = cluster
    a, b = _ids("node", 2)
    await members.beat(a, {"instance": "ia"}, 0.3)
    await members.beat(b, {"instance": "ib"}, 5.0)
    assert await members.silent(b) == []
    assert set(await members.alive()) == {a, b}
    assert await members.instance_of(a) == "ia"
    await asyncio.sleep(0.5)
    assert await members.silent(b) == [a]
    assert await members.silent(a) == []  # never itself
    assert await members.instance_of(a) is None
    await members.forget(a)
    assert await members.silent(b) == []
    await members.leave(b, "not-ib")  # another instance's leave keeps b's heartbeat
    assert await members.instance_of(b) == "ib"
    await members.leave(b, "ib")
    assert await members.instance_of(b) is None and await members.alive() == {}


def _takeover(
    store: CheckpointStore, members: Membership, node: str, adopted: list[tuple[str, str]],
    **config: Any,
) -> Takeover:
    return Takeover(
        TakeoverConfig(node_id=node, heartbeat_s=0.1, dead_s=0.3, ttl_s=60, **config),
        store, members,
        adopt=lambda snapshot, source: adopted.append((snapshot["call_id"], source)),
        live_ids=set, info=dict,
    )  # fmt: skip


async def test_a_dead_nodes_calls_are_adopted_and_the_node_forgotten(
    cluster: tuple[CheckpointStore, Membership],
) -> None:
    store, members = cluster
    dead, me = _ids("node", 2)
    calls = _ids("call", 3)
    adopted: list[tuple[str, str]] = []
    dying = _takeover(store, members, dead, [])
    await dying.step()
    await store.save(dead, [{"call_id": c} for c in calls], 60)
    survivor = _takeover(store, members, me, adopted)
    await survivor.step()  # not judging yet: it has beaten for less than dead_s
    assert adopted == []
    await asyncio.sleep(0.4)  # the dead node stopped beating 0.4 s ago: silent
    await survivor.step()
    assert sorted(adopted) == sorted((c, dead) for c in calls)
    assert sorted(await store.owned(me)) == sorted(calls)
    assert survivor.status()["claimed"] == 3
    await survivor.step()  # nothing left to take: the dead node is no longer a member
    assert dead not in await members.alive() and await members.silent(me) == []
    assert len(adopted) == 3


async def test_with_takeover_off_a_node_takes_only_its_own_previous_runs_calls(
    cluster: tuple[CheckpointStore, Membership],
) -> None:
    store, members = cluster
    other, me = _ids("node", 2)
    await _takeover(store, members, other, []).step()
    (theirs, mine) = _ids("call", 2)
    await store.save(other, [{"call_id": theirs}], 60)
    await store.save(me, [{"call_id": mine}], 60)
    adopted: list[tuple[str, str]] = []
    node = _takeover(store, members, me, adopted, enabled=False)
    task = asyncio.create_task(node.run())
    await asyncio.sleep(0.8)
    task.cancel()
    assert adopted == [(mine, me)]  # its previous run's: ended (or adopted) by the node
    assert await store.owned(other) == [theirs]


async def test_a_second_live_process_with_the_same_node_id_is_refused(
    cluster: tuple[CheckpointStore, Membership],
) -> None:
    store, members = cluster
    (node,) = _ids("node", 1)
    first = _takeover(store, members, node, [])
    beating = asyncio.create_task(first.run())
    try:
        await asyncio.sleep(0.2)
        with pytest.raises(NodeIdInUse, match="in use by a live node"):
            await _takeover(store, members, node, []).join()
    finally:
        beating.cancel()
    # Its heartbeat expires (the first process died): a new one may take the id.
    await _takeover(store, members, node, []).join()


async def test_after_a_redis_outage_nobody_is_judged_until_the_heartbeats_are_back(
    services: dict[str, str],
) -> None:
    host, port = services["VOXSWITCH_REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
    proxy = TcpProxy(int(port), host).up()
    name = f"test-{uuid.uuid4().hex[:8]}"
    direct_store, direct = build_cluster(services["VOXSWITCH_REDIS_URL"], name)
    store, members = build_cluster(f"redis://127.0.0.1:{proxy.port}/0", name)
    try:
        peer, me = _ids("node", 2)
        await direct.beat(peer, {"instance": "p"}, 0.3)
        await direct_store.save(peer, [{"call_id": "c-" + peer}], 60)
        adopted: list[tuple[str, str]] = []
        node = _takeover(store, members, me, adopted)
        await node.step()
        proxy.down()
        await asyncio.sleep(0.4)  # the peer's heartbeat expired meanwhile...
        await node.step()
        assert not node.status()["heartbeat_up"]
        proxy.up()
        await direct.beat(peer, {"instance": "p"}, 0.3)  # ...and is back with Redis
        await node.step()
        assert node.status()["heartbeat_up"] and adopted == []
        await asyncio.sleep(0.4)  # now the peer really is silent
        await node.step()
        assert adopted == [("c-" + peer, peer)]
    finally:
        proxy.down()
        await store.close()
        await direct_store.close()
