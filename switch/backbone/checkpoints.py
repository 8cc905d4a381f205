"""Call checkpoints: each live call's state, saved where a restarted node finds it.

The call manager snapshots every call whose state changed (answered, confirmed, ended)
at once, and every live call at least once a second. A snapshot holds what it takes
to end the call from outside the actor — or, later, to take it over on another node:
the dialog (Call-ID, tags, From/To, CSeq both ways, route set, remote target), the
transport and the peer's address, the negotiated media (our port, codec, the peer's
RTP address, our SSRC), the call record so far and the conversation's state.

Stores: Redis (``redis_url``; key ``voxswitch:call:<call id>`` with a TTL, and the set
``voxswitch:node:<node id>:calls``), or memory (the embedded default, which only lives
as long as the process). A store that is down makes the saves fail: the calls go on,
``failures`` counts, the next round saves the latest state again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from redis.exceptions import RedisError

log = logging.getLogger("voxswitch.checkpoints")

Snapshot = dict[str, Any]
KEY_PREFIX = "voxswitch:call:"


def node_key(node_id: str) -> str:
    return f"voxswitch:node:{node_id}:calls"


class CheckpointStore(Protocol):
    async def save(self, node_id: str, snapshots: list[Snapshot], ttl_s: int) -> None: ...

    async def delete(self, node_id: str, call_ids: list[str]) -> None: ...

    async def owned(self, node_id: str) -> list[Snapshot]:
        """Every checkpoint this node left (those whose key has not expired)."""
        ...

    async def close(self) -> None: ...


class MemoryCheckpoints:
    """The embedded default: checkpoints in this process (lost with it)."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Snapshot]] = {}

    async def save(self, node_id: str, snapshots: list[Snapshot], ttl_s: int) -> None:
        held = self.calls.setdefault(node_id, {})
        for snapshot in snapshots:
            held[snapshot["call_id"]] = snapshot

    async def delete(self, node_id: str, call_ids: list[str]) -> None:
        held = self.calls.get(node_id, {})
        for call_id in call_ids:
            held.pop(call_id, None)

    async def owned(self, node_id: str) -> list[Snapshot]:
        return list(self.calls.get(node_id, {}).values())

    async def close(self) -> None:
        return None


class RedisCheckpoints:
    """Checkpoints as JSON strings with a TTL, indexed by a per-node set."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        # Short timeouts: a save round must not hang the manager when Redis is away.
        self.redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    async def save(self, node_id: str, snapshots: list[Snapshot], ttl_s: int) -> None:
        if not snapshots:
            return
        pipe = self.redis.pipeline(transaction=False)
        index = node_key(node_id)
        for snapshot in snapshots:
            call_id = snapshot["call_id"]
            pipe.set(KEY_PREFIX + call_id, json.dumps(snapshot, separators=(",", ":")), ex=ttl_s)
            pipe.sadd(index, call_id)
        pipe.expire(index, ttl_s)
        await pipe.execute()

    async def delete(self, node_id: str, call_ids: list[str]) -> None:
        if not call_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(*[KEY_PREFIX + c for c in call_ids])
        pipe.srem(node_key(node_id), *call_ids)
        await pipe.execute()

    async def owned(self, node_id: str) -> list[Snapshot]:
        members = await self.redis.smembers(node_key(node_id))
        call_ids = [c.decode() if isinstance(c, bytes) else c for c in members]
        if not call_ids:
            return []
        values = await self.redis.mget([KEY_PREFIX + c for c in call_ids])
        expired = [c for c, v in zip(call_ids, values, strict=True) if v is None]
        if expired:
            await self.redis.srem(node_key(node_id), *expired)
        return [json.loads(v) for v in values if v is not None]

    async def close(self) -> None:
        await self.redis.aclose()


def build_store(redis_url: str) -> CheckpointStore:
    return RedisCheckpoints(redis_url) if redis_url else MemoryCheckpoints()


class Checkpointer:
    """Saves the live calls' snapshots: changed ones within ``ROUND_S``, and every
    live call once per ``EVERY_S`` — a slice of them each round, so a thousand calls
    never stall the loop for one long snapshot burst; deletes the ended ones."""

    ROUND_S = 0.1
    EVERY_S = 1.0

    def __init__(
        self,
        store: CheckpointStore,
        node_id: str,
        ttl_s: int,
        snapshots: Callable[[], dict[str, Callable[[], Snapshot]]],
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl_s = ttl_s
        self._live = snapshots  # call id -> how to snapshot it, for every live call
        self._changed: set[str] = set()
        self._ended: list[str] = []
        self._round: list[str] = []  # live calls still to save in this second
        self._turn = 0  # rounds so far
        self.up = True
        self.failures = 0
        self.saved = 0
        self.last_error = ""

    def changed(self, call_id: str) -> None:
        """Save it in the next round (within ``ROUND_S``)."""
        self._changed.add(call_id)

    def ended(self, call_id: str) -> None:
        self._changed.discard(call_id)
        self._ended.append(call_id)

    async def run(self) -> None:
        """A round every ``ROUND_S``, on the loop clock's grid."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ROUND_S - loop.time() % self.ROUND_S)
            await self.round()

    async def round(self) -> None:
        """Save this round's slice of the live calls and the changed ones; delete the
        ended ones."""
        live = self._live()
        slices = round(self.EVERY_S / self.ROUND_S)
        position = self._turn % slices
        if position == 0:
            self._round = list(live)
        self._turn += 1
        share = -(-len(self._round) // (slices - position))
        due, self._round = self._round[:share], self._round[share:]
        wanted = [c for c in {*due, *self._changed} if c in live]
        self._changed.clear()
        ended, self._ended = self._ended, []
        try:
            await self.store.save(self.node_id, [live[c]() for c in wanted], self.ttl_s)
            await self.store.delete(self.node_id, ended)
        except (OSError, RedisError) as exc:
            self._failed(exc)
            self._ended = ended + self._ended  # delete them next time
        else:
            self.saved += len(wanted)
            if not self.up:
                log.warning("checkpoint store is back")
            self.up = True

    async def flush(self) -> None:
        """Delete what ended (at shutdown: the drained calls' checkpoints)."""
        ended, self._ended = self._ended, []
        try:
            await self.store.delete(self.node_id, ended)
        except (OSError, RedisError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.up:
            log.warning("checkpoints not saved (%s): calls go on; retrying", self.last_error)
        self.up = False

    def status(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "saved": self.saved,
            "failures": self.failures,
            "last_error": self.last_error,
        }
