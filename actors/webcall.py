"""A call from the web console's test phone: WebRTC, no SIP dialog.

The browser's peer connection is the line (its media leg runs the same sans-I/O
``MediaSession`` as an RTP leg: VAD, jitter buffer, playout); the conversation, the
barge-in, the record and the events are a SIP call's. It is answered as soon as it
exists (the browser's offer was answered before the actor started) and ends when the
page hangs up, the connection drops, or the agent or the API ends it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from actors.call import CallActor, CallState
from sip.message import Headers, Request


@dataclass(eq=False)
class WebCallActor(CallActor):
    async def _run(self) -> None:
        self.state = CallState.CONFIRMED
        self.record.answered_at = time.time()
        self._milestone("answered")
        self._start_conversation()
        await self._talk()


class WebFlow:
    """Where a web call's signalling would go: nowhere (no SIP; the page talks HTTP)."""

    transport = "WEBRTC"
    reliable = True

    def __init__(self, remote: tuple[str, int]) -> None:
        self.remote = remote  # the browser's address, for the record and logs

    def send(self, data: bytes) -> None:
        raise RuntimeError("a web call has no SIP peer to send to")


def web_invite(caller: str, agent: str) -> Request:
    """The call's identity in the form every call has (Call-ID, From, To)."""
    headers = Headers()
    headers.add("From", f"<sip:{caller}@web.console>;tag={uuid.uuid4().hex[:8]}")
    headers.add("To", f"<sip:{agent}@web.console>")
    headers.add("Call-ID", f"web-{uuid.uuid4().hex}")
    headers.add("CSeq", "1 INVITE")
    return Request("INVITE", f"sip:{agent}@web.console", headers)
