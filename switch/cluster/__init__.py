"""Several nodes as one switch: call checkpoints with one owner per call, node
heartbeats, and the live-call takeover that adopts a dead node's calls.

With ``redis_url`` the nodes share Redis; without it a node is a cluster of one (its
checkpoints and heartbeat live in its own memory).
"""

from __future__ import annotations

from switch.cluster.checkpoints import CheckpointStore, MemoryCheckpoints, RedisCheckpoints
from switch.cluster.membership import LocalMembership, Membership, RedisMembership


def build_cluster(redis_url: str, cluster: str) -> tuple[CheckpointStore, Membership]:
    """The checkpoint store and the membership of ``cluster``, on one Redis client (or
    in memory)."""
    if not redis_url:
        return MemoryCheckpoints(), LocalMembership()
    store = RedisCheckpoints(redis_url)
    return store, RedisMembership(store.redis, cluster)


__all__ = ["build_cluster"]
