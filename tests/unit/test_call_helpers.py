"""Small pure pieces of the call actor: the BYE's Reason header, the SDP of a request."""

from __future__ import annotations

import pytest

from actors.call import _sdp_body, reason_header
from sip.message import Request
from sip.parser import parse_message


@pytest.mark.parametrize(
    ("disposition", "cause"),
    [("max_duration", 16), ("agent_hangup", 16), ("media_timeout", 102), ("agent_error", 41)],
)
def test_reason_header_carries_a_q850_cause(disposition: str, cause: int) -> None:
    assert reason_header(disposition, "why") == f'Q.850;cause={cause};text="why"'


def test_reason_text_cannot_break_the_quoted_string() -> None:
    assert reason_header("failed", 'a "quoted" \\ text') == (
        "Q.850;cause=41;text=\"a 'quoted' / text\""
    )


def _invite(content_type: str, body: bytes) -> Request:
    head = (
        "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        "From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
        f"Max-Forwards: 70\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    message = parse_message(head.encode() + body)
    assert isinstance(message, Request)
    return message


def test_sdp_from_a_multipart_body() -> None:
    body = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\ns=-\r\n"
        b"--b1\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b1--\r\n"
    )
    sdp = _sdp_body(_invite('multipart/mixed;boundary="b1"', body))
    assert sdp == b"v=0\r\ns=-\r\n"


def test_no_sdp_in_other_bodies() -> None:
    assert _sdp_body(_invite("text/plain", b"hello")) is None
