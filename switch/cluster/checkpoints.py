"""Call checkpoints: each live call's state, saved where another node (or this one,
restarted) finds it.

The call manager snapshots every call whose state changed (answered, confirmed, ended)
at once, and every live call at least once a second. A snapshot holds what it takes
to end the call from outside the actor, or to take it over on another node: the
dialog (Call-ID, tags, From/To, CSeq both ways, route set, remote target), the
transport and the peer's address, the negotiated media (codec, the peer's RTP
address, our SDP's origin), the call record so far and the conversation's state.

Ownership. Each call has one owner node at a time. A save is fenced: it writes only
while the call is this node's (or nobody's yet), so a node that was declared dead
while it was only slow cannot overwrite the adopter's state; it learns from the save
that the call was taken (``save`` returns those calls) and lets it go. ``claim``
moves a call from one node to another atomically: of several adopters racing for the
same call exactly one gets its snapshot.

Stores: Redis (``redis_url``; ``voxswitch:call:<id>`` the snapshot and
``voxswitch:owner:<id>`` its node, both with a TTL, and the set
``voxswitch:node:<node id>:calls``), each change one Lua script (atomic); or memory
(the embedded default, which only lives as long as the process). A store that is down
makes the saves fail: the calls go on, ``failures`` counts, the next round saves the
latest state again.
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
OWNER_PREFIX = "voxswitch:owner:"


def node_key(node_id: str) -> str:
    return f"voxswitch:node:{node_id}:calls"


class CheckpointStore(Protocol):
    async def save(self, node_id: str, snapshots: list[Snapshot], ttl_s: int) -> list[str]:
        """Save what this node still owns; the call ids another node has taken."""
        ...

    async def delete(self, node_id: str, call_ids: list[str]) -> None:
        """Drop the checkpoints of ended calls (those this node still owns)."""

    async def owned(self, node_id: str) -> list[str]:
        """The ids of every call checkpointed as this node's."""
        ...

    async def claim(
        self, from_node: str, to_node: str, call_id: str, ttl_s: int
    ) -> Snapshot | None:
        """Make ``from_node``'s call ``to_node``'s; its snapshot, or None when another
        node claimed it first (or it ended, or its checkpoint expired)."""
        ...

    async def close(self) -> None: ...


class MemoryCheckpoints:
    """The embedded default: checkpoints in this process (lost with it)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}
        self.owners: dict[str, str] = {}

    async def save(self, node_id: str, snapshots: list[Snapshot], ttl_s: int) -> list[str]:
        taken = []
        for snapshot in snapshots:
            call_id = snapshot["call_id"]
            if self.owners.setdefault(call_id, node_id) != node_id:
                taken.append(call_id)
                continue
            self.snapshots[call_id] = snapshot
        return taken

    async def delete(self, node_id: str, call_ids: list[str]) -> None:
        for call_id in call_ids:
            if self.owners.get(call_id) == node_id:
                del self.owners[call_id]
                self.snapshots.pop(call_id, None)

    async def owned(self, node_id: str) -> list[str]:
        return [c for c, owner in self.owners.items() if owner == node_id]

    async def claim(
        self, from_node: str, to_node: str, call_id: str, ttl_s: int
    ) -> Snapshot | None:
        if self.owners.get(call_id) != from_node or call_id not in self.snapshots:
            return None
        self.owners[call_id] = to_node
        return self.snapshots[call_id]

    async def close(self) -> None:
        return None


# KEYS: owner, snapshot, the node's set; ARGV: node, snapshot JSON, TTL, call id.
_SAVE = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
"""
# KEYS: owner, snapshot, the node's set; ARGV: node, call id.
_DELETE = """
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1], KEYS[2]) end
return 1
"""
# KEYS: owner, snapshot, the old node's set, the new node's set;
# ARGV: old node, new node, TTL, call id.
_CLAIM = """
redis.call('SREM', KEYS[3], ARGV[4])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local snapshot = redis.call('GET', KEYS[2])
if not snapshot then return false end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[3])
return snapshot
"""


class RedisCheckpoints:
    """Checkpoints as JSON strings with a TTL, an owner key per call, a set per node."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        # Short timeouts: a save round must not hang the manager when Redis is away.
        self.redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._save = self.redis.register_script(_SAVE)
        self._delete = self.redis.register_script(_DELETE)
        self._claim = self.redis.register_script(_CLAIM)

    async def save(self, node_id: str, snapshots: list[Snapshot], ttl_s: int) -> list[str]:
        if not snapshots:
            return []
        pipe = self.redis.pipeline(transaction=False)
        index = node_key(node_id)
        ids = [s["call_id"] for s in snapshots]
        for call_id, snapshot in zip(ids, snapshots, strict=True):
            body = json.dumps(snapshot, separators=(",", ":"))
            keys = [OWNER_PREFIX + call_id, KEY_PREFIX + call_id, index]
            await self._save(keys, [node_id, body, ttl_s, call_id], client=pipe)
        saved = await pipe.execute()
        return [c for c, ok in zip(ids, saved, strict=True) if not ok]

    async def delete(self, node_id: str, call_ids: list[str]) -> None:
        if not call_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        index = node_key(node_id)
        for call_id in call_ids:
            keys = [OWNER_PREFIX + call_id, KEY_PREFIX + call_id, index]
            await self._delete(keys, [node_id, call_id], client=pipe)
        await pipe.execute()

    async def owned(self, node_id: str) -> list[str]:
        members = await self.redis.smembers(node_key(node_id))
        return sorted(c.decode() if isinstance(c, bytes) else c for c in members)

    async def claim(
        self, from_node: str, to_node: str, call_id: str, ttl_s: int
    ) -> Snapshot | None:
        keys = [OWNER_PREFIX + call_id, KEY_PREFIX + call_id, node_key(from_node),
                node_key(to_node)]  # fmt: skip
        found = await self._claim(keys, [from_node, to_node, ttl_s, call_id])
        return json.loads(found) if found else None

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
        on_taken: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl_s = ttl_s
        self._live = snapshots  # call id -> how to snapshot it, for every live call
        # Told the calls another node took over (this node was thought dead): let go.
        self._on_taken = on_taken
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
            taken = await self.store.save(self.node_id, [live[c]() for c in wanted], self.ttl_s)
            await self.store.delete(self.node_id, ended)
        except (OSError, RedisError) as exc:
            self._failed(exc)
            self._ended = ended + self._ended  # delete them next time
        else:
            self.saved += len(wanted) - len(taken)
            if not self.up:
                log.warning("checkpoint store is back")
            self.up = True
            for call_id in taken:
                log.warning("call %s: taken over by another node; letting it go", call_id)
                if self._on_taken is not None:
                    self._on_taken(call_id)

    async def save_all(self) -> None:
        """Every live call's state, now (before this node hands its calls over);
        raises the store's error."""
        live = self._live()
        await self.store.save(self.node_id, [snapshot() for snapshot in live.values()], self.ttl_s)
        self.saved += len(live)

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
