"""Live-call takeover: a node adopts the calls of a node that died.

Every ``heartbeat_s`` the node beats (``membership``) and looks for members whose
heartbeat has expired. Each call such a node checkpointed is claimed atomically (one
adopter per call, however many race) and handed to ``adopt`` with its snapshot; the
call manager rebinds it here (a re-INVITE moves the caller's media) or, when that
cannot be done, ends it cleanly. A node that starts takes its own previous run's
calls the same way (a restart after a crash).

Judging others waits until this node has beaten for ``dead_s`` without a failure:
after a Redis outage every heartbeat has expired, and the live nodes need one beat
to show it; a node that judged at once would take everybody's calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from switch.cluster.checkpoints import CheckpointStore, Snapshot
from switch.cluster.membership import Membership

log = logging.getLogger("voxswitch.takeover")


class NodeIdInUse(Exception):
    """Another live process beats for this node id (the message says so, one line)."""


@dataclass(frozen=True)
class TakeoverConfig:
    node_id: str
    heartbeat_s: float = 0.5
    dead_s: float = 1.5  # silent this long: dead
    ttl_s: int = 3720  # a claimed checkpoint's TTL (as the checkpointer's)
    enabled: bool = True  # False: still beat (membership), adopt nobody's calls


class Takeover:
    def __init__(
        self,
        config: TakeoverConfig,
        store: CheckpointStore,
        members: Membership,
        *,
        adopt: Callable[[Snapshot, str], None],
        live_ids: Callable[[], set[str]],
        info: Callable[[], dict[str, Any]],
        accepting: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.members = members
        self.adopt = adopt  # (snapshot, the node it comes from): rebind or end the call
        self.live_ids = live_ids
        self.info = info  # what the heartbeat says (addresses, calls)
        self.accepting = accepting  # False while draining: take nothing
        self.clock = clock
        self.instance = uuid.uuid4().hex
        self.claimed = 0  # calls claimed from dead nodes (and this node's previous run)
        self.last_takeover: dict[str, Any] = {}
        self._healthy_since: float | None = None  # first beat of the current good run
        self.up = True

    async def join(self) -> None:
        """Before the first beat: if a heartbeat for this node id holds, wait until it
        expires (our own previous run, killed) or show it is another live process."""
        held = await self.members.instance_of(self.config.node_id)
        if held is None:
            return
        deadline = self.clock() + self.config.dead_s + self.config.heartbeat_s
        while self.clock() < deadline:
            await asyncio.sleep(self.config.heartbeat_s / 2)
            now_held = await self.members.instance_of(self.config.node_id)
            if now_held is None:
                return
            if now_held != held:
                break
        raise NodeIdInUse(
            f"node id {self.config.node_id!r} is in use by a live node "
            "(set a distinct node_id for each node)"
        )

    async def run(self) -> None:
        """Take this node's previous run's calls, then beat and watch until cancelled."""
        await self._take_own()
        while True:
            started = self.clock()
            await self.step()
            await asyncio.sleep(max(0.0, self.config.heartbeat_s - (self.clock() - started)))

    async def step(self) -> None:
        """One beat, and a look for dead nodes."""
        try:
            await self.members.beat(self.config.node_id, self._heartbeat(), self.config.dead_s)
            if self._healthy_since is None:
                self._healthy_since = self.clock()
            if not self.up:
                log.warning("heartbeat stored again")
            self.up = True
            if (
                self.config.enabled
                and self.accepting()
                and self.clock() - self._healthy_since >= self.config.dead_s
            ):
                for node in await self.members.silent(self.config.node_id):
                    await self._take_from(node)
        except (OSError, RedisError) as exc:
            self._healthy_since = None
            if self.up:
                log.warning("heartbeat not stored (%s: %s); not judging other nodes until it is",
                            type(exc).__name__, exc)  # fmt: skip
            self.up = False

    async def _take_own(self) -> None:
        """Calls this node id's previous run left (none of them is live here)."""
        node = self.config.node_id
        while True:
            try:
                await self._take_from(node)
                return
            except (OSError, RedisError) as exc:
                log.warning("checkpoints unreadable (%s); retrying", exc)
                await asyncio.sleep(max(1.0, self.config.dead_s))

    async def _take_from(self, node: str) -> None:
        me = self.config.node_id
        if node != me and not self.config.enabled:
            return
        calls = await self.store.owned(node)
        live = self.live_ids() if node == me else set()
        calls = [c for c in calls if c not in live]
        if not calls:
            if node != me:
                await self.members.forget(node)
            return
        random.shuffle(calls)  # several adopters race: each gets a share sooner
        began = self.clock()
        taken = 0
        for call_id in calls:
            snapshot = await self.store.claim(node, me, call_id, self.config.ttl_s)
            if snapshot is None:
                continue  # another node was faster, or the call ended
            taken += 1
            self.claimed += 1
            try:
                self.adopt(snapshot, node)
            except Exception:  # one bad snapshot must not stop the others' takeover
                log.exception("call %s: adoption failed", call_id)
        if taken:
            what = "its previous run" if node == me else f"node {node}"
            log.warning("took over %d of %d calls from %s in %.0f ms",
                        taken, len(calls), what, 1000 * (self.clock() - began))  # fmt: skip
            self.last_takeover = {"from": node, "calls": taken, "at": time.time()}

    def _heartbeat(self) -> dict[str, Any]:
        return {"instance": self.instance, "at": time.time(), **self.info()}

    async def peers(self) -> list[str]:
        """The other live nodes of the cluster that are not draining."""
        alive = await self.members.alive()
        return sorted(n for n, info in alive.items()
                      if n != self.config.node_id and not info.get("draining"))  # fmt: skip

    async def leave(self, *, hand_over: bool = False) -> None:
        """Stop being alive (the ``run`` task must be cancelled first). ``hand_over``:
        stay a member, silent at once, so the others adopt this node's checkpointed
        calls within a heartbeat."""
        try:
            await self.members.leave(self.config.node_id, self.instance, hand_over=hand_over)
        except (OSError, RedisError) as exc:
            log.warning("heartbeat not removed (%s); it expires in %.1f s", exc, self.config.dead_s)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.config.enabled,
            "heartbeat_up": self.up,
            "claimed": self.claimed,
            "last": self.last_takeover,
        }
