"""What one source does, counted over a sliding window: a scanner's signature.

A scanner can call itself anything (``svwar -u "Linphone/5.0"``), so, like fail2ban's
and APIBan's SIP rules, we judge a source by what it does:

- **unknown targets**: distinct users/numbers it sent out-of-dialog requests to that
  no inbound route knows or that we refused (svwar walking extensions 100, 101, ...);
- **failures**: error answers we sent it (403, 401, 404, 405, 481, ...: 4xx but 487,
  and 6xx): someone poking at what we refuse.

Sans-I/O: every method takes ``now`` and answers the ban reason, or None. Memory is
bounded: a source's record never holds more than its limit + 1 entries (it is banned
then and forgotten), and at most ``max_sources`` sources are followed (the least
recently active let go first: a flood of spoofed addresses cannot grow it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_SOURCES = 10_000
MAX_TARGET_CHARS = 64  # a target is a user part: longer ones count as their prefix

TARGETS = "targets"  # ban reasons
FAILURES = "failures"


def is_failure(status: int) -> bool:
    """An answer that says 'no' to the peer's request (not 487, the answer to its own
    CANCEL; not 5xx, which is our own trouble)."""
    return (400 <= status < 500 and status != 487) or 600 <= status < 700


@dataclass(frozen=True)
class ConductLimits:
    max_unknown_targets: int = 10  # per window; 0: not counted
    max_failures: int = 30  # per window; 0: not counted
    window_s: float = 60.0


@dataclass(slots=True)
class _Record:
    targets: dict[str, float] = field(default_factory=dict)  # target -> last tried
    failures: deque[float] = field(default_factory=deque)  # when each was sent


class ConductCounter:
    def __init__(self, limits: ConductLimits, *, max_sources: int = MAX_SOURCES) -> None:
        self.limits = limits
        self.max_sources = max_sources
        self._records: dict[str, _Record] = {}  # least recently active first

    @property
    def on(self) -> bool:
        return self.limits.max_unknown_targets > 0 or self.limits.max_failures > 0

    def unknown_target(self, source: str, target: str, now: float) -> str | None:
        """``source`` sent an out-of-dialog request to ``target``, a user or number
        nothing here knows: ``"targets"`` when that is one too many."""
        limit = self.limits.max_unknown_targets
        if limit <= 0 or not target:
            return None
        record = self._record(source, now)
        targets = record.targets
        targets.pop(target[:MAX_TARGET_CHARS], None)  # re-inserted last: newest at the end
        targets[target[:MAX_TARGET_CHARS]] = now
        if len(targets) > limit:
            self.forget(source)
            return TARGETS
        return None

    def failure(self, source: str, status: int, target: str, now: float) -> str | None:
        """We answered ``source`` with ``status``: a failure (``is_failure``) counts,
        and its ``target`` (empty for an in-dialog request) is an unknown one."""
        if not is_failure(status):
            return None
        why = self.unknown_target(source, target, now) if target else None
        limit = self.limits.max_failures
        if why is not None or limit <= 0:
            return why
        failures = self._record(source, now).failures
        failures.append(now)
        if len(failures) > limit:
            self.forget(source)
            return FAILURES
        return None

    def forget(self, source: str) -> None:
        """A source banned, lifted, or that proved who it is (digest accepted): its
        record starts over."""
        self._records.pop(source, None)

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, source: str, now: float) -> _Record:
        records = self._records
        record = records.pop(source, None)
        if record is None:
            record = _Record()
            while len(records) >= self.max_sources:  # the least recently active goes
                del records[next(iter(records))]
        records[source] = record  # most recently active last
        horizon = now - self.limits.window_s
        targets = record.targets
        while targets:  # oldest first: insertion order is the order last tried
            first = next(iter(targets))
            if targets[first] > horizon:
                break
            del targets[first]
        failures = record.failures
        while failures and failures[0] <= horizon:
            failures.popleft()
        return record
