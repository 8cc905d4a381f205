"""SIP timer values (RFC 3261 §17 and Table 4, RFC 6026 Timers L and M).

Transactions take a ``TimerConfig`` so tests (and networks with other round-trip
times) can scale T1/T2/T4; every timer below derives from them as the RFC says.
Durations that are zero on reliable transports (TCP) are returned as 0.0 and the
transactions act on them at once instead of arming a timer.
"""

from __future__ import annotations

from dataclasses import dataclass

T1 = 0.5  # RTT estimate
T2 = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  # maximum duration a message remains in the network

# Timer D: "at least 32 seconds for unreliable transports" (§17.1.1.2).
TIMER_D_UNRELIABLE = 32.0


@dataclass(frozen=True, slots=True)
class TimerConfig:
    t1: float = T1
    t2: float = T2
    t4: float = T4

    @property
    def transaction_timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L, M."""
        return 64 * self.t1

    def timer_d(self, reliable: bool) -> float:
        return 0.0 if reliable else max(TIMER_D_UNRELIABLE, self.transaction_timeout)

    def timer_i(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        return 0.0 if reliable else self.transaction_timeout

    def timer_k(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4


DEFAULT_TIMERS = TimerConfig()
