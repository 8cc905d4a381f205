"""The source guard's bans and counts through the real Redis (deploy/local/services.sh):
two nodes' guards, as a cluster sees them. A Redis outage keeps the node's own bans
and tells Redis what it missed once it is back."""

from __future__ import annotations

import time
import uuid

import pytest
from redis.exceptions import RedisError

from switch.guard.shared import SharedGuardStore
from switch.guard.sources import SourceGuard, SourceLimits
from tests.e2e.tcp_proxy import TcpProxy

SCANNER = "192.0.2.66"
FLOODER = "192.0.2.77"
GUESSER = "192.0.2.88"


def _pair(url: str, **limits: object) -> tuple[SharedGuardStore, SharedGuardStore]:
    prefix = f"test:guard:{uuid.uuid4().hex}:"  # nothing shared with other tests' nodes
    stores = []
    for name in ("node-a", "node-b"):
        guard = SourceGuard(SourceLimits(trusted=(), **limits), clock=time.time,  # type: ignore[arg-type]
                            node=name)  # fmt: skip
        stores.append(SharedGuardStore(guard, url, prefix=prefix))
    return stores[0], stores[1]


async def test_a_ban_made_on_one_node_reaches_the_other_and_so_does_its_lifting(
    services: dict[str, str],
) -> None:
    a, b = _pair(services["VOXSWITCH_REDIS_URL"])
    try:
        assert a.guard.request(SCANNER, "friendly-scanner") == "scanner"
        await a.sync()
        await b.sync()
        assert b.guard.banned(SCANNER)
        [ban] = b.guard.active_bans()
        assert (ban.reason, ban.node) == ("scanner", "node-a")
        assert b.guard.lift(SCANNER)
        await b.sync()
        await a.sync()
        assert not a.guard.banned(SCANNER)
    finally:
        await a.close()
        await b.close()


async def test_a_flood_spread_over_two_nodes_is_banned_by_the_clusters_count(
    services: dict[str, str],
) -> None:
    a, b = _pair(services["VOXSWITCH_REDIS_URL"], max_rps=100)
    try:
        for _ in range(60):  # 60 a second on each node: under the limit on each
            assert a.guard.request(FLOODER, None) is None
            assert b.guard.request(FLOODER, None) is None
        await a.sync()
        await b.sync()  # 120 in this second across the cluster: over 100
        assert b.guard.banned(FLOODER)
        await b.sync()
        await a.sync()
        assert a.guard.banned(FLOODER)
    finally:
        await a.close()
        await b.close()


async def test_failed_logins_spread_over_two_nodes_add_up_within_the_window(
    services: dict[str, str],
) -> None:
    """6 wrong passwords on each node: under 10 on each, 12 across the cluster."""
    a, b = _pair(services["VOXSWITCH_REDIS_URL"], max_auth_failures=10, auth_window_s=60.0)
    try:
        for _ in range(6):
            assert not a.guard.auth_failed(GUESSER)
            assert not b.guard.auth_failed(GUESSER)
        await a.sync()
        assert not a.guard.banned(GUESSER)  # 6 so far in Redis
        await b.sync()
        assert b.guard.banned(GUESSER)
        assert [ban.reason for ban in b.guard.active_bans()] == ["auth"]
        await b.sync()
        await a.sync()
        assert a.guard.banned(GUESSER)
    finally:
        await a.close()
        await b.close()
    # Failures older than the window no longer count, across the cluster too.
    a, b = _pair(services["VOXSWITCH_REDIS_URL"], max_auth_failures=10, auth_window_s=1.0)
    try:
        for _ in range(6):
            a.guard.auth_failed(GUESSER)
        await a.sync()
        time.sleep(1.2)
        for _ in range(6):
            b.guard.auth_failed(GUESSER)
        await b.sync()
        assert not b.guard.banned(GUESSER)
    finally:
        await a.close()
        await b.close()


async def test_redis_down_keeps_the_ban_here_and_delivers_it_later(
    services: dict[str, str],
) -> None:
    url = services["VOXSWITCH_REDIS_URL"]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port).up()
    a, b = _pair(url)
    a_down = SharedGuardStore(a.guard, url.replace(f":{port}", f":{proxy.port}"),
                              prefix=a.bans_key.removesuffix("bans"))  # fmt: skip
    try:
        proxy.down()
        a.guard.request(SCANNER, "sipvicious")
        with pytest.raises((RedisError, OSError)):
            await a_down.sync()
        assert a.guard.banned(SCANNER)  # the node's own ban holds meanwhile
        proxy.up()
        await a_down.sync()
        await b.sync()
        assert b.guard.banned(SCANNER)
    finally:
        proxy.down()
        for store in (a, b, a_down):
            await store.close()
