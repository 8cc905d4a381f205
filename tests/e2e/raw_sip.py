"""Hand-written SIP over a plain UDP socket, for tests that need exact control of
what is sent (a retransmission with the same branch, a replayed Authorization)."""

from __future__ import annotations

import socket
import time
import uuid

from loadtest.node import NodeProcess
from sip.message import Response
from sip.parser import parse_message


class RawUdp:
    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.node.sip_port))

    def responses(self, wait_s: float = 2.0, *, until_final: bool = True) -> list[Response]:
        """What arrives within ``wait_s`` (up to the first final response)."""
        out: list[Response] = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_message(data)
            if isinstance(message, Response):
                out.append(message)
                if until_final and message.status >= 200:
                    break
        return out

    def request(
        self,
        method: str,
        *,
        branch: str | None = None,
        call_id: str | None = None,
        to_tag: str = "",
        extra: str = "",
        cseq: int = 1,
        body: str = "",
    ) -> bytes:
        branch = branch or f"z9hG4bK-{uuid.uuid4().hex[:12]}"
        call_id = call_id or uuid.uuid4().hex
        target = f"sip:agent@{self.node.sip_address}"
        content = "Content-Type: application/sdp\r\n" if body else ""
        return (
            f"{method} {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
            f"From: <sip:tester@127.0.0.1>;tag=raw{self.port}\r\n"
            f"To: <{target}>{';tag=' + to_tag if to_tag else ''}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:tester@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
            f"{extra}{content}Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()


SDP = (
    "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
