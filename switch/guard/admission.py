"""Admission by measured load: how many new calls per second the node takes now.

Past its capacity a node that accepts every INVITE falls behind: its answers come
late, the callers retransmit, the retransmissions are more work, and goodput
collapses (measured: 6,540 of 10,000 calls completed when offered 1,000/s against a
700/s capacity). So new INVITEs pass a token bucket whose rate is

- at most ``max_cps`` when that is set (a configured ceiling), and
- an adaptive limit that follows the node's load: every control period the load
  monitor reports how busy the event loop's thread was (its CPU time over the wall
  time), how late the loop ran, and how late the media ticks left. Both the busy
  share and the admitted rate are smoothed (about a second). While the smoothed
  share is past ``engage × busy_high``, the limit is the rate the node is admitting
  scaled to the share it may use: ``rate × busy_high / busy`` (a node admitting 500/s
  at 95 % may take 474/s; at 60 % it may take 750/s). Below that share there is no
  adaptive limit at all. Congestion — INVITEs waiting in the socket's queue past
  ``queue_high_s``, a lagging loop, late media ticks, for two periods in a row or
  one far past its threshold — cuts the limit to
  ``backoff ×`` the admitted rate at once (then not again for ``hold_periods``, so
  the queue can drain before the next cut is judged).

And while the node is overloaded (busy past ``busy_high``, or congested), an INVITE
that waited in the socket's queue longer than ``sojourn_max_s`` is refused whatever
the limit says: the queue drains while refusals are all it holds. (A queue or lag
while the loop's thread is not busy is another process taking the CPU, not this
node's overload: it refuses nothing.)

A refused INVITE gets ``503`` with ``Retry-After`` statelessly in the SIP endpoint,
before a transaction, a call actor, an RTP port or any greeting work exists.

Why the SIP queue and the thread's CPU share and not only the loop's lag: a UDP
backlog waits in the kernel and in the transport's own queue, where a timer never
sees it (the transport processes a bounded amount per turn of the loop, so timers
stay on time while the queue in front of them grows). The transport keeps the
kernel's receive time of every datagram; the longest wait until processing in the
period is the queue signal ("the socket's queue" below means both). The CPU share
tells how close the node is to that point before any queue forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SEVERE = 4.0  # a period this many times past a congestion threshold counts at once
REFUSING_S = 1.0  # a node that refused a call this recently is still shedding


@dataclass(frozen=True)
class AdmissionConfig:
    max_cps: float = 0.0  # 0: no configured ceiling
    busy_high: float = 0.85  # the loop thread's CPU share past which the node is overloaded
    lag_high_s: float = 0.050
    queue_high_s: float = 0.030  # a datagram waited this long in the socket's queue
    sojourn_max_s: float = 0.020  # an INVITE that waited longer is refused at once
    media_late_high_s: float = 0.020  # media ticks this late (p90 of the period)
    retry_after_s: int = 5
    period_s: float = 0.1  # how often the load monitor reports
    engage: float = 0.85  # the adaptive limit applies from engage × busy_high on
    smoothing: float = 0.25  # EWMA weight of each period's sample
    backoff: float = 0.8  # congestion: limit = backoff × the admitted rate
    hold_periods: int = 3  # after a cut, periods before congestion may cut again
    floor_cps: float = 5.0  # the adaptive limit never goes below this


@dataclass(frozen=True)
class LoadSample:
    busy: float  # share of the period the loop's thread ran on a CPU (0..1)
    lag_s: float  # how late the loop ran the monitor's timer
    media_late_s: float = 0.0  # p90 lateness of the media ticks in the period
    queue_s: float = 0.0  # the longest a datagram waited in the SIP socket's queue


class AdmissionControl:
    """Sans-I/O: ``admit(now)`` per new INVITE, ``update(now, sample)`` per period."""

    def __init__(self, config: AdmissionConfig, now: float) -> None:
        self.config = config
        self.adaptive_cps = math.inf  # no limit until the node has been overloaded
        self.overloaded = False
        self.last_sample = LoadSample(0.0, 0.0)
        self.admitted = 0
        self.refused = 0
        self.last_reason = ""  # why the last refusal: sojourn, max_cps or overload
        self._refused_at = -math.inf
        self._tokens = self._burst(self.rate_cps)
        self._filled_at = now
        self._admitted_in_period = 0
        self.busy = 0.0  # smoothed
        self.admitted_cps = 0.0  # smoothed
        self._hold = 0
        self._late_before = False
        self._loaded = False  # the loop's thread is past engage × busy_high

    @property
    def rate_cps(self) -> float:
        """The current admission rate (inf: unlimited)."""
        ceiling = self.config.max_cps or math.inf
        return min(ceiling, self.adaptive_cps)

    def admit(self, now: float, waited_s: float = 0.0, *, outbound: bool = False) -> bool:
        """May a new INVITE (that waited ``waited_s`` in the socket's queue) be a call?
        ``outbound``: a call of ours (API, campaign) takes a token at the measured limit
        too, but only while the bucket holds more than half a burst: callers, who
        cannot be paced, come first, and a campaign gets what they leave. ``max_cps``
        (a ceiling on what callers send us) is not applied to our own calls."""
        if outbound:
            rate = self.adaptive_cps
            return self._take(now, rate, reserve=self._burst(rate) / 2)
        if waited_s > self.config.sojourn_max_s and self.overloaded:
            # A queue has formed: taking more work now would only lengthen it. Refusing
            # is cheap, so the queue drains at once (CoDel's idea: judge by sojourn).
            self._refuse(now, "sojourn")
            return False
        if self._take(now, self.rate_cps):
            return True
        ceiling = self.config.max_cps or math.inf
        self.last_reason = "max_cps" if ceiling <= self.adaptive_cps else "overload"
        return False

    def _take(self, now: float, rate: float, reserve: float = 0.0) -> bool:
        """A token from the bucket refilled at ``rate`` (inf: always one), leaving at
        least ``reserve`` in it."""
        if rate == math.inf:
            self._admit()
            return True
        self._tokens = min(self._burst(rate), self._tokens + (now - self._filled_at) * rate)
        self._filled_at = now
        if self._tokens >= 1.0 + reserve:
            self._tokens -= 1.0
            self._admit()
            return True
        self._refuse(now, "overload")
        return False

    def refusing(self, now: float) -> bool:
        """Has a call been refused in the last second? Then more refusals are likely,
        and a quick look at each INVITE (sip.quick) is worth its cost; otherwise it is
        only a second look at calls that are all admitted."""
        return now - self._refused_at < REFUSING_S

    def _refuse(self, now: float, why: str) -> None:
        self.refused += 1
        self.last_reason = why
        self._refused_at = now

    def status(self) -> dict[str, object]:
        """The control's view for /health and /metrics."""
        rate, sample = self.rate_cps, self.last_sample
        return {
            "limit_cps": None if rate == math.inf else round(rate, 1),
            "overloaded": self.overloaded,
            "loop_busy": round(sample.busy, 3),
            "loop_lag_ms": round(sample.lag_s * 1000, 2),
            "media_late_ms": round(sample.media_late_s * 1000, 2),
            "sip_queue_ms": round(sample.queue_s * 1000, 2),
            "admitted": self.admitted,
            "refused": self.refused,
        }

    def update(self, now: float, sample: LoadSample) -> None:
        cfg = self.config
        self.last_sample = sample
        w = cfg.smoothing
        self.busy += w * (sample.busy - self.busy)
        self.admitted_cps += w * (self._admitted_in_period / cfg.period_s - self.admitted_cps)
        self._admitted_in_period = 0
        # One late period is a hiccup (a collection of the young generation, a burst);
        # two in a row, or one far past the threshold, is a queue that grows.
        # The loop's own queue and lag count only while the loop itself is busy: late
        # because another process took the CPU is not this node's overload.
        self._loaded = self.busy > cfg.engage * cfg.busy_high
        level = sample.media_late_s / cfg.media_late_high_s
        if self._loaded:
            level = max(level, sample.queue_s / cfg.queue_high_s, sample.lag_s / cfg.lag_high_s)
        congested = level > SEVERE or (level > 1.0 and self._late_before)
        self._late_before = level > 1.0
        self.overloaded = congested or self.busy > cfg.busy_high
        if self._hold:
            self._hold -= 1
        if congested and not self._hold:
            limit = cfg.backoff * min(self.admitted_cps, self.adaptive_cps)
            self._hold = cfg.hold_periods
        elif congested or self._hold:
            limit = min(self.adaptive_cps, self.admitted_cps * cfg.busy_high / max(self.busy, 0.01))
        elif self._loaded:
            limit = self.admitted_cps * cfg.busy_high / self.busy
        else:
            limit = math.inf
        self.adaptive_cps = max(cfg.floor_cps, limit)
        self._tokens = min(self._tokens, self._burst(self.rate_cps))

    def _admit(self) -> None:
        self.admitted += 1
        self._admitted_in_period += 1

    def _burst(self, rate: float) -> float:
        # A tenth of a second of calls at once, at least a few: load generators and
        # carriers send in clumps. (A cut of the limit also cuts the bucket.)
        return 5.0 if rate == math.inf else max(5.0, rate * 0.1)
