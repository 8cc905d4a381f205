"""Throttling abusive sources: per-IP request rates, failed authentications, bans.

Sans-I/O (the clock is a parameter). A source is banned for ``ban_s`` when it

- sends more than ``max_rps`` requests in a second (``max_rps`` 0: no limit),
- fails digest authentication more than ``max_auth_failures`` times within
  ``auth_window_s`` (a brute force slowed to a handful of guesses per ban), or
- names a known scanner in its User-Agent (sipvicious' ``friendly-scanner`` ...), or
- behaves like one, whatever it calls itself (``switch.guard.conduct``): too many
  distinct targets nothing here knows, or too many error answers, in a window.

A banned source's packets are dropped before they are parsed: a scanner learns
nothing and costs a set lookup. Trusted sources (``trusted`` networks, and the
trunks' addresses by the ``is_trunk`` callback) are never counted or banned.

Behind a SIP proxy (Kamailio) every packet comes from the proxy. A request from one
of the ``trusted_proxies`` names its real source in an ``X-Source-IP`` header
(``source_of``); from anyone else that header is ignored (it would be a spoof). The
proxy itself is never counted or banned; its callers are, by their real address,
and since their packets cannot be dropped before that header is read, the screen
answers a banned caller's requests 403 (silence would make the proxy think the node
dead and fail over).

With Redis (``switch.guard.shared``) the counts and bans are the cluster's: each
node adds what it saw every second and takes the bans every node made.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from switch.guard.conduct import MAX_TARGET_CHARS, ConductCounter, ConductLimits, is_failure

SCANNER_AGENTS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sundayddr",
    "iwar",
    "sip-scan",
    "sivus",
    "smap",
    "pplsip",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SOURCE_HEADER = "X-Source-IP"  # what a trusted proxy adds: the request's real source
MAX_TRACKED = 10_000  # sources remembered per table before the quiet ones are let go


@dataclass(frozen=True)
class SourceLimits:
    max_rps: int = 200
    max_auth_failures: int = 10
    auth_window_s: float = 60.0
    ban_s: float = 600.0
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS
    trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    trusted_proxies: tuple[str, ...] = ()  # whose X-Source-IP we believe
    conduct: ConductLimits = field(default_factory=ConductLimits)


@dataclass
class Ban:
    ip: str
    reason: str  # "rate", "auth", "scanner", "targets", "failures", "api"
    until: float  # wall-clock seconds (shared between nodes)
    since: float
    node: str = ""

    def view(self) -> dict[str, object]:
        return {"ip": self.ip, "reason": self.reason, "since": self.since,
                "until": self.until, "node": self.node}  # fmt: skip


@dataclass
class GuardStats:
    bans: Counter[str] = field(default_factory=Counter)  # bans made, by reason
    scanner_requests: int = 0


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDRs; ValueError names the bad one."""
    nets = []
    for entry in entries:
        entry = entry.strip()
        if entry:
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise ValueError(f"not an address or network: {entry!r}") from exc
    return tuple(nets)


class SourceGuard:
    def __init__(
        self,
        limits: SourceLimits,
        *,
        clock: Callable[[], float],
        node: str = "",
        is_trunk: Callable[[str], bool] | None = None,
    ) -> None:
        self.limits = limits
        self.clock = clock  # wall clock: bans are shared between nodes
        self.node = node
        self.is_trunk = is_trunk
        self.trusted = parse_networks(limits.trusted)
        self.proxies = parse_networks(limits.trusted_proxies)
        self.conduct = ConductCounter(limits.conduct)
        self.agents = tuple(a.lower() for a in limits.scanner_agents if a)
        self.bans: dict[str, Ban] = {}
        self.stats = GuardStats()
        self._second = 0
        self._requests: Counter[str] = Counter()  # this second, per source
        self._auth_failures: dict[str, list[float]] = {}
        self._trust_cache: dict[str, bool] = {}
        self._proxy_cache: dict[str, bool] = {}
        # What the shared store has not been told yet (drained by switch.guard.shared,
        # which sets ``shared``; without it nothing is kept for it).
        self.shared = False
        self.store_status: Callable[[], dict[str, object]] | None = None
        self.new_bans: list[Ban] = []
        self.lifted: list[str] = []
        self.unsynced_requests: Counter[str] = Counter()
        self.unsynced_auth_failures: list[tuple[str, float]] = []  # (source, when)
        self.unsynced_targets: list[tuple[str, str, float]] = []  # (source, target, when)
        self.unsynced_failures: list[tuple[str, float]] = []  # (source, when)
        self.unsynced_forgiven: list[str] = []  # sources whose conduct counts start over

    # ---- per packet / per request ---------------------------------------------------

    def banned(self, ip: str) -> bool:
        """Drop this source's packets unread? (Called for every datagram.)"""
        if not self.bans:
            return False
        ban = self.bans.get(ip)
        if ban is None:
            return False
        if ban.until <= self.clock():
            del self.bans[ip]
            return False
        return not self._trusted(ip)  # a trusted source is never cut off, whoever banned it

    def source_of(self, ip: str, claimed: str | None) -> str:
        """The real source of a request that came from network address ``ip`` and
        carried ``claimed`` in its X-Source-IP header (the last one: a proxy appends
        its own after the caller's): believed only from a trusted proxy."""
        if claimed is None or not self.proxies or not self.is_proxy(ip):
            return ip
        try:
            address = ipaddress.ip_address(claimed.strip().strip("[]"))
        except ValueError:
            return ip  # a proxy that says nothing usable: its own request
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return str(mapped or address)

    def is_proxy(self, ip: str) -> bool:
        if not self.proxies:
            return False
        cached = self._proxy_cache.get(ip)
        if cached is None:
            cached = _within(ip, self.proxies)
            if len(self._proxy_cache) > MAX_TRACKED:
                self._proxy_cache.clear()
            self._proxy_cache[ip] = cached
        return cached

    def exempt(self, ip: str) -> bool:
        """Never counted or banned: a trusted network, a trusted proxy, a trunk."""
        return self._trusted(ip)

    def request(self, ip: str, user_agent: str | None) -> str | None:
        """A new request from ``ip``: the reason it is refused (and the source banned),
        or None to go on. ``"banned"``: banned already (a proxied source, whose packets
        could not be dropped unread, or one banned since its packet was read)."""
        if self._trusted(ip):
            return None
        if self.bans and self.banned(ip):
            return "banned"
        if user_agent and self.agents:
            agent = user_agent.lower()
            if any(name in agent for name in self.agents):
                self.stats.scanner_requests += 1
                self.ban(ip, "scanner")
                return "scanner"
        max_rps = self.limits.max_rps
        if max_rps <= 0:
            return None
        second = int(self.clock())
        if second != self._second:
            self._second = second
            self._requests.clear()
        self._requests[ip] += 1
        if self.shared:
            self.unsynced_requests[ip] += 1
        if self._requests[ip] > max_rps:
            self.ban(ip, "rate")
            return "rate"
        return None

    def auth_failed(self, ip: str) -> bool:
        """Digest credentials from ``ip`` were wrong: True when that bans it."""
        if self._trusted(ip):
            return False
        now = self.clock()
        window = self.limits.auth_window_s
        times = [t for t in self._auth_failures.get(ip, ()) if now - t < window]
        times.append(now)
        if self.shared:
            self.unsynced_auth_failures.append((ip, now))
        failures = self._auth_failures
        failures[ip] = times
        if len(failures) > MAX_TRACKED:  # many sources: forget those quiet for a window
            for other in [k for k, v in failures.items() if now - v[-1] >= window]:
                del failures[other]
        if len(times) > self.limits.max_auth_failures:
            del self._auth_failures[ip]
            self.ban(ip, "auth")
            return True
        return False

    def unknown_target(self, ip: str, target: str) -> str | None:
        """``ip`` sent an out-of-dialog request to ``target``, a user or number no
        inbound route or trunk knows: the ban reason when that was one too many."""
        if self._trusted(ip) or ip in self.bans:
            return None
        now = self.clock()
        self._share(ip, target, False, now)
        why = self.conduct.unknown_target(ip, target, now)
        if why is not None:
            self.ban(ip, why)
        return why

    def answered(self, ip: str, status: int, target: str) -> str | None:
        """We answered a request from ``ip`` with ``status`` (``target``: its user or
        number, empty in a dialog): the ban reason when an error answer was one too
        many."""
        if self._trusted(ip) or ip in self.bans:
            return None
        now = self.clock()
        if is_failure(status):
            self._share(ip, target, True, now)
        why = self.conduct.failure(ip, status, target, now)
        if why is not None:
            self.ban(ip, why)
        return why

    def _share(self, ip: str, target: str, failed: bool, now: float) -> None:
        """Keep a target tried (and a failure) for the shared store, so a sweep spread
        over the nodes behind a balancer adds up. Past MAX_TRACKED unsent (Redis down
        long): our own count only."""
        if not self.shared:
            return
        limits = self.limits.conduct
        targets, failures = self.unsynced_targets, self.unsynced_failures
        if target and limits.max_unknown_targets > 0 and len(targets) < MAX_TRACKED:
            targets.append((ip, target[:MAX_TARGET_CHARS], now))
        if failed and limits.max_failures > 0 and len(failures) < MAX_TRACKED:
            failures.append((ip, now))

    def authenticated(self, ip: str) -> None:
        """``ip`` proved a password (digest accepted): the challenges it was answered
        (401) on the way do not count against it."""
        self._forget(ip)

    def _forget(self, ip: str) -> None:
        self.conduct.forget(ip)
        if self.shared and len(self.unsynced_forgiven) < MAX_TRACKED:
            self.unsynced_forgiven.append(ip)

    # ---- bans -------------------------------------------------------------------------

    def ban(self, ip: str, reason: str, duration_s: float | None = None) -> Ban:
        now = self.clock()
        ban = Ban(ip, reason, now + (duration_s or self.limits.ban_s), now, self.node)
        self.bans[ip] = ban
        self.stats.bans[reason] += 1
        self._forget(ip)  # its conduct is judged; a new count starts when the ban ends
        if self.shared:
            self.new_bans.append(ban)
        return ban

    def lift(self, ip: str) -> bool:
        found = self.bans.pop(ip, None) is not None
        self._auth_failures.pop(ip, None)
        self._forget(ip)
        if self.shared:
            self.lifted.append(ip)
        return found

    def active_bans(self) -> list[Ban]:
        now = self.clock()
        for ip in [ip for ip, ban in self.bans.items() if ban.until <= now]:
            del self.bans[ip]
        return sorted(self.bans.values(), key=lambda b: b.since)

    def adopt_bans(self, shared: Iterable[Ban]) -> None:
        """The cluster's bans (from the shared store) replace ours, except those we
        have made or lifted since and not yet told it."""
        merged = {ban.ip: ban for ban in shared}
        for ban in self.new_bans:
            merged[ban.ip] = ban
        for ip in self.lifted:
            merged.pop(ip, None)
        self.bans = merged

    def status(self) -> dict[str, object]:
        """The guard's view for /health and /metrics."""
        store = self.store_status() if self.store_status is not None else {"shared": False}
        return {"bans_active": len(self.active_bans()), "bans_made": dict(self.stats.bans),
                "scanner_requests": self.stats.scanner_requests, "store": store}  # fmt: skip

    def _trusted(self, ip: str) -> bool:
        cached = self._trust_cache.get(ip)
        if cached is None:
            cached = _within(ip, self.trusted) or _within(ip, self.proxies)
            if len(self._trust_cache) > MAX_TRACKED:
                self._trust_cache.clear()
            self._trust_cache[ip] = cached
        return cached or (self.is_trunk is not None and self.is_trunk(ip))


def _within(ip: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)
