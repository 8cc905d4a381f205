"""Which nodes are alive: a heartbeat each node keeps in Redis.

Every ``heartbeat_s`` a node sets ``voxswitch:alive:<node id>`` (a small JSON object:
its instance, addresses and calls) with a TTL of ``dead_s``, and is a member of its
cluster's set ``voxswitch:cluster:<name>:nodes`` (several clusters may share one
Redis: a node judges only its own cluster's members). A member whose key has expired
has been silent for ``dead_s``:
it is dead (SIGKILL, a lost host, a loop stalled that long), and its calls are up for
takeover. A node that stops cleanly leaves the set.

The instance id tells a node's previous run (dead: its key expires and is not set
again) from another live process using the same node id (its key keeps being set):
``instance_of`` lets a starting node wait out the first and refuse to run beside the
second.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

ALIVE_PREFIX = "voxswitch:alive:"


def members_key(cluster: str) -> str:
    return f"voxswitch:cluster:{cluster}:nodes"


class Membership(Protocol):
    async def beat(self, node_id: str, info: dict[str, Any], ttl_s: float) -> None:
        """This node is alive for ``ttl_s`` more seconds."""

    async def silent(self, node_id: str) -> list[str]:
        """The members other than ``node_id`` whose heartbeat has expired."""
        ...

    async def instance_of(self, node_id: str) -> str | None:
        """The instance that last beat for ``node_id``, while its heartbeat holds."""
        ...

    async def alive(self) -> dict[str, dict[str, Any]]:
        """Every node with a live heartbeat, and what it said."""
        ...

    async def forget(self, node_id: str) -> None:
        """A dead node with nothing left to take over: no longer a member."""

    async def leave(self, node_id: str, instance: str, *, hand_over: bool = False) -> None:
        """This node stops: its heartbeat gone and, unless it hands its calls over
        (``hand_over``: it stays a member, silent, so the others adopt them), out of
        the set."""


class LocalMembership:
    """The embedded default (no Redis): a cluster of one."""

    def __init__(self) -> None:
        self.info: dict[str, dict[str, Any]] = {}

    async def beat(self, node_id: str, info: dict[str, Any], ttl_s: float) -> None:
        self.info[node_id] = info

    async def silent(self, node_id: str) -> list[str]:
        return []

    async def instance_of(self, node_id: str) -> str | None:
        found = self.info.get(node_id)
        return str(found["instance"]) if found else None

    async def alive(self) -> dict[str, dict[str, Any]]:
        return dict(self.info)

    async def forget(self, node_id: str) -> None:
        self.info.pop(node_id, None)

    async def leave(self, node_id: str, instance: str, *, hand_over: bool = False) -> None:
        self.info.pop(node_id, None)


# KEYS: the alive key; ARGV: this instance. Only our own heartbeat is removed.
_LEAVE = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['instance'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisMembership:
    """Heartbeats in Redis (the client the checkpoints use), for cluster ``cluster``."""

    def __init__(self, redis: Any, cluster: str) -> None:
        self.redis = redis
        self.members = members_key(cluster)
        self._leave = redis.register_script(_LEAVE)

    async def beat(self, node_id: str, info: dict[str, Any], ttl_s: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(ALIVE_PREFIX + node_id, json.dumps(info, separators=(",", ":")),
                 px=max(1, round(ttl_s * 1000)))  # fmt: skip
        pipe.sadd(self.members, node_id)
        await pipe.execute()

    async def silent(self, node_id: str) -> list[str]:
        members = sorted(_text(m) for m in await self.redis.smembers(self.members))
        others = [m for m in members if m != node_id]
        if not others:
            return []
        found = await self.redis.mget([ALIVE_PREFIX + m for m in others])
        return [m for m, value in zip(others, found, strict=True) if value is None]

    async def instance_of(self, node_id: str) -> str | None:
        held = await self.redis.get(ALIVE_PREFIX + node_id)
        return str(json.loads(held)["instance"]) if held else None

    async def alive(self) -> dict[str, dict[str, Any]]:
        members = sorted(_text(m) for m in await self.redis.smembers(self.members))
        if not members:
            return {}
        found = await self.redis.mget([ALIVE_PREFIX + m for m in members])
        return {m: json.loads(v) for m, v in zip(members, found, strict=True) if v is not None}

    async def forget(self, node_id: str) -> None:
        await self.redis.srem(self.members, node_id)

    async def leave(self, node_id: str, instance: str, *, hand_over: bool = False) -> None:
        await self._leave([ALIVE_PREFIX + node_id], [instance])
        if not hand_over:
            await self.redis.srem(self.members, node_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
