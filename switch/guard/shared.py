"""The source guard's counts and bans in Redis, shared by every node.

Every ``SYNC_S`` one pipeline (one round trip) tells Redis what this node saw and
takes what every node decided:

- ``voxswitch:guard:rate:<ip>:<second>``: requests per source, ``INCRBY`` by each
  node for the second it synced in (expire 10 s). A source over ``max_rps`` across
  the cluster is banned, though no one node saw enough of it.
- ``voxswitch:guard:auth:<ip>``: sorted set of the source's failed digest
  authentications (member node/time/n, score the time), trimmed to the last
  ``auth_window_s``: more than ``max_auth_failures`` across the cluster bans it, so a
  brute force spread over the nodes behind a balancer gets no more guesses.
- ``voxswitch:guard:targets:<ip>``: sorted set of the distinct unknown targets the
  source tried (member the target, score when last tried), trimmed to ``ban_window_s``;
  ``voxswitch:guard:failures:<ip>``: its error answers, like ``auth``. Past
  ``ban_max_unknown_targets``/``ban_max_failures`` across the cluster it is banned: a
  sweep spread over the nodes behind a balancer is judged as a whole.
- ``voxswitch:guard:bans``: sorted set, member the address, score the ban's end
  (wall clock); ``voxswitch:guard:ban-info``: hash, address → the ban as JSON.
  Bans made here are added, lifted ones removed, expired ones trimmed, and the rest
  replace this node's view.

Redis down: the node goes on with its own counts and bans (what was not sent yet is
kept and sent when Redis is back), and ``status()`` says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from switch.guard.sources import Ban, SourceGuard

log = logging.getLogger("voxswitch.guard")

SYNC_S = 1.0
PREFIX = "voxswitch:guard:"
RATE_TTL_S = 10


class SharedGuardStore:
    def __init__(self, guard: SourceGuard, redis_url: str, *, prefix: str = PREFIX) -> None:
        self.guard = guard
        guard.shared = True  # keep what Redis has not been told yet
        self.bans_key = prefix + "bans"
        self.info_key = prefix + "ban-info"
        self.rate_prefix = prefix + "rate:"
        self.auth_prefix = prefix + "auth:"
        self.targets_prefix = prefix + "targets:"
        self.failures_prefix = prefix + "failures:"
        self._member = 0  # makes each failure's member unique
        self.redis: Redis = Redis.from_url(redis_url, socket_timeout=2.0,
                                           socket_connect_timeout=2.0)  # fmt: skip
        self.up = False
        self.failures = 0
        self.last_error = ""

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
                if not self.up:
                    log.info("guard: bans shared through Redis")
                self.up = True
            except (RedisError, OSError) as exc:
                if self.up or not self.failures:
                    log.warning("guard: Redis unreachable (%s); bans stay local until it is back",
                                exc)  # fmt: skip
                self.up = False
                self.failures += 1
                self.last_error = str(exc)[:200]
            await asyncio.sleep(SYNC_S)

    async def sync(self) -> None:
        guard = self.guard
        now = guard.clock()
        new, guard.new_bans = guard.new_bans, []
        lifted, guard.lifted = guard.lifted, []
        counts, guard.unsynced_requests = guard.unsynced_requests, Counter()
        failures, guard.unsynced_auth_failures = guard.unsynced_auth_failures, []
        targets, guard.unsynced_targets = guard.unsynced_targets, []
        answers, guard.unsynced_failures = guard.unsynced_failures, []
        forgiven, guard.unsynced_forgiven = guard.unsynced_forgiven, []
        second = int(now)
        window = guard.limits.auth_window_s
        conduct = guard.limits.conduct
        try:
            pipe = self.redis.pipeline(transaction=False)
            for ip in lifted:
                pipe.zrem(self.bans_key, ip)
                pipe.hdel(self.info_key, ip)
            for ban in new:
                pipe.zadd(self.bans_key, {ban.ip: ban.until})
                pipe.hset(self.info_key, ban.ip, json.dumps(ban.view()))
            # Each read's place in the results, so they can be picked out after.
            rate_at: dict[str, int] = {}
            for ip in counts:
                key = f"{self.rate_prefix}{ip}:{second}"
                rate_at[ip] = len(pipe)
                pipe.incrby(key, counts[ip])
                pipe.expire(key, RATE_TTL_S)
            for ip, when in failures:
                pipe.zadd(self.auth_prefix + ip, {self._event(when): when})
            auth_at = _counts(pipe, self.auth_prefix, [ip for ip, _ in failures], now, window)
            for ip, target, when in targets:  # a target again only moves its score
                pipe.zadd(self.targets_prefix + ip, {target: when})
            targets_at = _counts(pipe, self.targets_prefix, [ip for ip, _, _ in targets],
                                 now, conduct.window_s)  # fmt: skip
            for ip, when in answers:
                pipe.zadd(self.failures_prefix + ip, {self._event(when): when})
            answers_at = _counts(pipe, self.failures_prefix, [ip for ip, _ in answers],
                                 now, conduct.window_s)  # fmt: skip
            for ip in dict.fromkeys(forgiven):  # banned, lifted or authenticated: start over
                pipe.delete(self.targets_prefix + ip, self.failures_prefix + ip)
            pipe.zrangebyscore(self.bans_key, "-inf", now)
            pipe.zremrangebyscore(self.bans_key, "-inf", now)
            pipe.zrangebyscore(self.bans_key, now, "+inf", withscores=True)
            pipe.hgetall(self.info_key)
            results = await pipe.execute()
        except BaseException:
            # Not told: keep it for the next round (newer decisions win on merge).
            guard.new_bans[:0] = new
            guard.lifted[:0] = lifted
            guard.unsynced_requests.update(counts)
            guard.unsynced_auth_failures[:0] = failures
            guard.unsynced_targets[:0] = targets
            guard.unsynced_failures[:0] = answers
            guard.unsynced_forgiven[:0] = forgiven
            raise
        expired, active, info = results[-4], results[-2], results[-1]
        if expired:
            await self.redis.hdel(self.info_key, *expired)
        shared = [_ban(member, until, info) for member, until in active]
        guard.adopt_bans(shared)
        max_rps = guard.limits.max_rps
        for ip, at in rate_at.items():
            total = int(results[at])
            if max_rps > 0 and total > max_rps * SYNC_S and ip not in guard.bans:
                log.info("guard: %s sent %s requests in a second across the cluster: banned",
                         ip, total)  # fmt: skip
                guard.ban(ip, "rate")
        for ip, at in auth_at.items():
            total = int(results[at])
            if total > guard.limits.max_auth_failures and ip not in guard.bans:
                log.info("guard: %s failed %d digest authentications across the cluster: "
                         "banned", ip, total)  # fmt: skip
                guard.ban(ip, "auth")
        for reason, where, limit in (("targets", targets_at, conduct.max_unknown_targets),
                                     ("failures", answers_at, conduct.max_failures)):  # fmt: skip
            for ip, index in where.items():
                total = int(results[index])
                if total > limit and ip not in guard.bans:
                    log.info("guard: %s: %d %s across the cluster: banned", ip, total, reason)
                    guard.ban(ip, reason)
                    guard.conduct.forget(ip)

    def _event(self, when: float) -> str:
        """A sorted-set member unique to this node and event (members are a set)."""
        self._member += 1
        return f"{self.guard.node}:{when}:{self._member}"

    def status(self) -> dict[str, Any]:
        return {"shared": True, "up": self.up, "failures": self.failures,
                "last_error": self.last_error}  # fmt: skip

    async def close(self) -> None:
        await self.redis.aclose()


def _counts(pipe: Any, prefix: str, ips: list[str], now: float, window_s: float) -> dict[str, int]:
    """Trim each source's sorted set to the window and count it: where each count
    will be in the pipeline's results."""
    at: dict[str, int] = {}
    for ip in dict.fromkeys(ips):
        key = prefix + ip
        pipe.zremrangebyscore(key, "-inf", now - window_s)
        at[ip] = len(pipe)
        pipe.zcard(key)
        pipe.expire(key, int(window_s) + 1)
    return at


def _ban(member: bytes | str, until: float, info: dict[Any, Any]) -> Ban:
    ip = member.decode() if isinstance(member, bytes) else member
    raw = info.get(member) or info.get(ip.encode()) or info.get(ip)
    details: dict[str, Any] = {}
    if raw:
        try:
            details = json.loads(raw)
        except ValueError:
            details = {}
    return Ban(ip, str(details.get("reason", "shared")), float(until),
               float(details.get("since", until)), str(details.get("node", "")))  # fmt: skip
