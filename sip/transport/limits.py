"""Bounds on stream (TCP and TLS) connections, sans-I/O: who may connect, and when a
connection has been idle or slow long enough to be closed.

The transport tells a ``ConnectionTable`` what happens (a connection offered, bytes
framed, a connection gone), with ``now`` (monotonic seconds) as an argument, and asks
``expired(now)`` every sweep which connections to close. Nothing here touches a socket
or reads a clock, so a fake clock tests all of it.

The rules, and why:

- **Caps.** At most ``max_connections`` open on a listener, and ``max_per_source``
  opened to us by one IP address (the sources the node exempts, trusted networks,
  proxies and trunks, skip the per-source cap: a proxy speaks for many callers). A new
  connection past a cap is refused at once, before any TLS handshake costs CPU. So is
  one from a banned source. Connections we open to trunks are counted but never refused.
- **Idle.** A connection that delivered no complete message and no RFC 5626 keepalive
  (CRLFCRLF) for ``idle_timeout_s`` is closed, unless a live call's dialog runs on it:
  its BYE must be able to leave on it, and a peer behind NAT cannot be reached on a new
  one. A call's connection counts as active at each sweep; it ages from the call's end.
- **Slow (slowloris).** A message whose first byte came ``message_timeout_s`` ago and
  is still incomplete gets its connection closed; so does a connection a peer opened to
  us and never completed a first message on (counted from the accept). Keepalives do not
  stand in for that first message, or CRLFs alone would hold a connection for ever.
- **Bytes.** What one incomplete message may buffer is capped by the framer the
  transport builds from ``max_message_bytes`` (a larger body gets 413 and a close).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Why a new connection was refused, and why an open one was closed (the counters' keys).
REFUSED_BANNED = "banned"
REFUSED_MAX_CONNECTIONS = "max_connections"
REFUSED_MAX_PER_SOURCE = "max_per_source"
CLOSED_IDLE = "idle"
CLOSED_SLOW = "slow"
CLOSED_BANNED = "banned"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """0 turns a cap or a timeout off."""

    # Per listener. Far above what carriers use (a few connections each), below the
    # process's usual descriptor limit with room for RTP sockets.
    max_connections: int = 2048
    max_per_source: int = 64
    # RFC 5626 §4.4.1 keepalives come every 95-120 s and carriers' OPTIONS pings every
    # 30-60 s: 300 s survives two lost ones, and recycles dead peers' descriptors.
    idle_timeout_s: float = 300.0
    # A SIP message is written at once by any real sender; 10 s covers a congested
    # link and starves a slowloris (every byte of its buffered message wasted).
    message_timeout_s: float = 10.0
    max_message_bytes: int = 65535  # buffered for one message (body; headers 32 KiB)

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_source", "max_message_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be 0 or more")
        for name in ("idle_timeout_s", "message_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number, 0 or more")

    @property
    def sweep_every_s(self) -> float:
        """How often the transport should call ``expired``: a fifth of the shortest
        timeout (a connection is closed at most that late), at most once a second."""
        timeouts = [t for t in (self.idle_timeout_s, self.message_timeout_s) if t > 0]
        return max(0.05, min([1.0, *(t / 5 for t in timeouts)]))


@dataclass(slots=True)
class _State:
    source: str
    inbound: bool  # the peer opened it (ours to trunks are never refused or per-source)
    active_at: float  # last complete message or keepalive
    started_at: float | None  # an incomplete message's first byte (or the accept)
    spoke: bool  # a complete message arrived (an inbound one's first-message deadline)


class ConnectionTable(Generic[K]):
    """The open connections of one listener, keyed by whatever the transport uses."""

    def __init__(
        self,
        limits: StreamLimits,
        *,
        banned: Callable[[str], bool] | None = None,
        unlimited: Callable[[str], bool] | None = None,
    ) -> None:
        self.limits = limits
        self._banned = banned  # source IP -> refuse it (the node's SourceGuard)
        self._unlimited = unlimited  # source IP -> exempt from the per-source cap
        self._states: dict[K, _State] = {}
        self._per_source: Counter[str] = Counter()  # inbound connections by source
        # Oldest first, so a sweep stops at the first one not yet due: O(closed).
        self._by_activity: OrderedDict[K, None] = OrderedDict()
        self._by_start: OrderedDict[K, None] = OrderedDict()  # incomplete messages
        self.opened = 0  # admitted, ever
        self.refused: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()  # by the table's rules (not peers' closes)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def admit(self, key: K, source: str, now: float, *, inbound: bool = True) -> str | None:
        """A new connection: the reason it is refused (counted), or None and it is in."""
        if inbound:
            why = self._refusal(source)
            if why is not None:
                self.refused[why] += 1
                return why
            self._per_source[source] += 1
        # An inbound connection owes us a first message within the message timeout.
        self._states[key] = _State(source, inbound, now, now if inbound else None, not inbound)
        self._by_activity[key] = None
        if inbound:
            self._by_start[key] = None
        self.opened += 1
        return None

    def _refusal(self, source: str) -> str | None:
        if self._banned is not None and self._banned(source):
            return REFUSED_BANNED
        cap = self.limits.max_connections
        if cap and len(self._states) >= cap:
            return REFUSED_MAX_CONNECTIONS
        cap = self.limits.max_per_source
        if (
            cap
            and self._per_source[source] >= cap
            and not (self._unlimited is not None and self._unlimited(source))
        ):
            return REFUSED_MAX_PER_SOURCE
        return None

    def banned(self, key: K) -> bool:
        """Has this connection's source been banned since it connected? Then it is
        forgotten (counted as closed for it) and the transport should close it."""
        state = self._states.get(key)
        if state is None or not state.inbound or self._banned is None:
            return False
        if not self._banned(state.source):
            return False
        self._forget(key, CLOSED_BANNED)
        return True

    def received(
        self, key: K, now: float, *, messages: int, keepalives: int, incomplete: bool
    ) -> None:
        """What one read framed: complete messages, keepalives, and whether a message
        is left incomplete in the buffer."""
        state = self._states.get(key)
        if state is None:
            return
        if messages or keepalives:
            state.active_at = now
            self._by_activity.move_to_end(key)
        if messages:
            state.spoke = True
        if incomplete:
            if messages or state.started_at is None:  # a new message began in this read
                state.started_at = now
                self._by_start[key] = None
                self._by_start.move_to_end(key)
        elif state.spoke:  # (before its first message, the accept's deadline stands)
            state.started_at = None
            self._by_start.pop(key, None)

    def closed_by_peer(self, key: K) -> None:
        """The connection is gone (either side closed it); no-op if already forgotten."""
        self._forget(key, None)

    def expired(
        self, now: float, in_use: Callable[[], Container[object]] | None = None
    ) -> list[tuple[K, str]]:
        """The connections to close now, and why; they are forgotten (and counted).
        ``in_use`` (called at most once, only if an idle one is due) says which carry
        a live call: those are not idle."""
        due: list[tuple[K, str]] = []
        timeout = self.limits.message_timeout_s
        if timeout:
            while self._by_start:
                key = next(iter(self._by_start))
                started = self._states[key].started_at
                if started is None:  # (not kept there, but never close on it)
                    del self._by_start[key]
                    continue
                if now - started < timeout:
                    break
                self._forget(key, CLOSED_SLOW)
                due.append((key, CLOSED_SLOW))
        timeout = self.limits.idle_timeout_s
        busy: Container[object] | None = None
        if timeout:
            while self._by_activity:
                key = next(iter(self._by_activity))
                state = self._states[key]
                if now - state.active_at < timeout:
                    break
                if busy is None:
                    busy = in_use() if in_use is not None else ()
                if key in busy:
                    state.active_at = now  # a call on it: active as of this sweep
                    self._by_activity.move_to_end(key)
                    continue
                self._forget(key, CLOSED_IDLE)
                due.append((key, CLOSED_IDLE))
        return due

    def _forget(self, key: K, why: str | None) -> None:
        state = self._states.pop(key, None)
        if state is None:
            return
        self._by_activity.pop(key, None)
        self._by_start.pop(key, None)
        if state.inbound:
            left = self._per_source[state.source] - 1
            if left > 0:
                self._per_source[state.source] = left
            else:
                del self._per_source[state.source]
        if why is not None:
            self.closed[why] += 1

    def status(self) -> dict[str, object]:
        """For /health: open now, admitted ever, refused and closed by reason."""
        return {
            "open": len(self._states),
            "opened": self.opened,
            "refused": dict(self.refused),
            "closed": dict(self.closed),
        }
