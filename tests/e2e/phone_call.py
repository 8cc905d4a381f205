"""A baresip phone's call to a node, for the end-to-end tests: dial, wait on the node's
log and records with bounded waits, hang up, and what the phone heard."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from loadtest.baresip import Baresip, FloatArray, read_wav
from loadtest.node import NodeProcess

Record = dict[str, Any]

ESTABLISHED = r"Call established: sip:agent@"
TERMINATED = r"Call with sip:agent@\S+ terminated|session closed"


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
