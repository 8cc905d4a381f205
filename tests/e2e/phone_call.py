"""A baresip phone's call to a node, for the end-to-end tests: dial, wait on the node's
log and records with bounded waits, hang up, and what the phone heard."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from loadtest.baresip import RATE, Baresip, FloatArray, read_wav
from loadtest.node import NodeProcess
from media.speech import Pcm

Record = dict[str, Any]

ESTABLISHED = r"Call established: sip:agent@"
TERMINATED = r"Call with sip:agent@\S+ terminated|session closed"


FRAME = RATE // 50  # 20 ms
LOUD_RMS = 300.0  # a 20 ms frame of espeak speech is far above this; silence frames are 0


def frame_rms(x: FloatArray | Pcm) -> FloatArray:
    frames = np.asarray(x, dtype=np.float64)[: x.size // FRAME * FRAME].reshape(-1, FRAME)
    rms: FloatArray = np.sqrt(np.mean(frames**2, axis=1))
    return rms


def loud_regions(x: FloatArray | Pcm, merge_gap_s: float = 0.1) -> list[tuple[float, float]]:
    """(start_s, end_s) of what a phone heard loud, gaps shorter than `merge_gap_s` merged."""
    regions: list[list[int]] = []
    max_gap = round(merge_gap_s / 0.02)
    for i in np.flatnonzero(frame_rms(x) > LOUD_RMS):
        if regions and i - regions[-1][1] < max_gap:
            regions[-1][1] = int(i) + 1
        else:
            regions.append([int(i), int(i) + 1])
    return [(s * 0.02, e * 0.02) for s, e in regions]


def describe_audio(x: FloatArray) -> str:
    text = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in loud_regions(x))
    return f"heard {x.size / RATE:.2f} s; loud (gaps < 0.1 s merged): {text}"


def agent_uri(node: NodeProcess) -> str:
    return f"sip:agent@{node.host}:{node.sip_port}"


class PhoneCall:
    """One phone call to the node, with bounded waits on the node's log and records."""

    def __init__(
        self, node: NodeProcess, phone: Baresip, more_context: Callable[[], str] | None = None
    ) -> None:
        self.node = node
        self.phone = phone
        self.more_context = more_context
        self.log_offset = len(node.stderr_text())
        self.records_before = len(node.records())

    def dial(self) -> float:
        self.phone.dial(agent_uri(self.node))
        established = self.phone.wait_for(ESTABLISHED, timeout_s=5)
        assert established is not None, f"call not established\n{self.context()}"
        return established

    def node_log(self) -> str:
        return self.node.stderr_text()[self.log_offset :]

    def wait_log(self, pattern: str, timeout_s: float) -> re.Match[str] | None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            found = regex.search(self.node_log())
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def hang_up(self) -> None:
        self.phone.command("/hangup")
        ended = self.phone.wait_for(TERMINATED, timeout_s=5)
        assert ended is not None, f"call not terminated after /hangup\n{self.context()}"

    def record(self, timeout_s: float = 10.0) -> Record:
        """The call's record (the node writes it when the call has ended)."""
        deadline = time.monotonic() + timeout_s
        while True:
            new = self.node.records()[self.records_before :]
            if new or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        assert len(new) == 1, f"want one new call record, got {new}\n{self.context()}"
        return new[0]

    def heard(self) -> FloatArray:
        self.phone.quit()
        return read_wav(self.phone.recording("dec"))

    def context(self) -> str:
        tail = "\n".join(self.node_log().splitlines()[-40:])
        more = f"\n{self.more_context()}" if self.more_context else ""
        return f"{self.phone.describe()}\n--- node log (this call) ---\n{tail}{more}"
