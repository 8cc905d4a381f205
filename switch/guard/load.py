"""The load monitor: every period, how busy and how late the node's event loop is.

It runs on the loop it measures. ``time.thread_time()`` is the loop thread's own CPU
time (the speech engines' threads and processes are not in it); its share of the
wall time since the last sample is the loop's business. The timer's lateness is the
loop's lag. Both go to the admission control and to whoever else listens (the lag
histogram of /metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from switch.guard.admission import AdmissionControl, LoadSample


class LoadMonitor:
    def __init__(
        self,
        admission: AdmissionControl,
        *,
        media_lateness: Callable[[], float] | None = None,
        queue_delay: Callable[[], float] | None = None,
        on_sample: Callable[[LoadSample], None] | None = None,
    ) -> None:
        self.admission = admission
        self.media_lateness = media_lateness  # p90 of the media ticks since the last call
        self.queue_delay = queue_delay  # the SIP socket's longest wait since the last call
        self.on_sample = on_sample

    async def run(self) -> None:
        period = self.admission.config.period_s
        loop = asyncio.get_running_loop()
        cpu, wall = time.thread_time(), loop.time()
        while True:
            due = wall + period
            await asyncio.sleep(max(0.0, due - loop.time()))
            now_cpu, now = time.thread_time(), loop.time()
            busy = (now_cpu - cpu) / (now - wall) if now > wall else 0.0
            sample = LoadSample(
                busy=min(1.0, busy),
                lag_s=max(0.0, now - due),
                media_late_s=self.media_lateness() if self.media_lateness else 0.0,
                queue_s=self.queue_delay() if self.queue_delay else 0.0,
            )
            cpu, wall = now_cpu, now
            self.admission.update(now, sample)
            if self.on_sample is not None:
                self.on_sample(sample)
