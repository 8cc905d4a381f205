"""The quick look at INVITEs and ACKs (sip.quick) against the full parser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import RemoteProtocolError
from sip.message import Request, Response
from sip.parser import parse_message, validate_request
from sip.quick import quick_request, refusal_bytes
from sip.transaction import client_key, server_key

INVITE = (
    b"INVITE sip:service@192.0.2.10:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-1-2;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKfar\r\n"
    b"From: sipp <sip:sipp@198.51.100.7:5062>;tag=abc\r\n"
    b"To: service <sip:service@192.0.2.10:5060>\r\n"
    b"Call-ID: 1-2@198.51.100.7\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:sipp@198.51.100.7:5062>\r\n"
    b"User-Agent: friendly-scanner\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\n"
)
SOURCE = ("203.0.113.9", 40000)


def full(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    validate_request(message)
    return message


def test_an_invite_gives_the_same_transaction_key_as_the_full_parser() -> None:
    quick = quick_request(INVITE)
    assert quick is not None
    assert quick.method == "INVITE" and not quick.to_tagged
    assert quick.key == server_key(full(INVITE))
    assert quick.user_agent == "friendly-scanner"


def test_its_ack_has_its_key_and_a_tagged_to() -> None:
    to = b"service@192.0.2.10:5060>"
    ack = (INVITE.replace(b"INVITE sip:", b"ACK sip:").replace(b"1 INVITE", b"1 ACK")
           .replace(to + b"\r\n", to + b";tag=ff\r\n"))  # fmt: skip
    quick = quick_request(ack)
    assert quick is not None and quick.method == "ACK" and quick.to_tagged
    assert quick.key == server_key(full(ack)) == server_key(full(INVITE))


def test_compact_header_names_are_read() -> None:
    data = (INVITE.replace(b"Via:", b"v:").replace(b"From:", b"f:").replace(b"To:", b"t:")
            .replace(b"Call-ID:", b"i:"))  # fmt: skip
    quick = quick_request(data)
    assert quick is not None and quick.key == server_key(full(data))


@pytest.mark.parametrize(
    "data",
    [
        INVITE.replace(b"\r\nFrom", b"\r\n  continued\r\nFrom"),  # folding
        INVITE.replace(b"\r\n", b"\n"),  # bare line feeds
        INVITE.replace(b"CSeq: 1 INVITE\r\n", b""),  # a header missing
        INVITE.replace(b"z9hG4bK-1-2", b"rfc2543-branch"),  # no magic cookie
        INVITE.replace(b"To: service", b"To: service\r\nTo: other"),  # two To
        INVITE.replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia"),
        b"OPTIONS sip:x@y SIP/2.0\r\n\r\n",
        b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP \r\n",  # no end of the head
    ],
)
def test_anything_unusual_is_left_to_the_full_parser(data: bytes) -> None:
    assert quick_request(data) is None


def test_a_refusal_is_a_response_the_full_parser_takes_and_the_caller_matches() -> None:
    quick = quick_request(INVITE)
    assert quick is not None
    data = refusal_bytes(quick, 503, "Overloaded", to_tag="t1", source=SOURCE,
                         headers=(("Retry-After", "5"),), server="voxswitch")  # fmt: skip
    response = parse_message(data)
    assert isinstance(response, Response)
    assert response.status == 503 and response.reason == "Overloaded"
    assert response.headers.get("retry-after") == "5"
    assert response.to.tag == "t1"
    assert response.call_id == "1-2@198.51.100.7"
    # The caller's client transaction matches it; both Vias are back, the top one
    # stamped with where the request came from (§18.2.1, RFC 3581).
    assert client_key(response) == (quick.key[0], "INVITE")
    assert [v.sent_by for v in response.vias] == ["198.51.100.7:5062", "10.0.0.1"]
    assert response.vias[0].params["received"] == "203.0.113.9"
    assert response.vias[0].params["rport"] == "40000"


def _shared() -> Path:
    env = os.environ.get("VOXSWITCH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


TORTURE = sorted((_shared() / "conformance" / "rfc4475").glob("*.dat"))


@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.name)
def test_torture_messages_are_left_alone_or_read_as_the_full_parser_reads_them(
    path: Path,
) -> None:
    data = path.read_bytes()
    quick = quick_request(data)
    if quick is None:
        return
    try:
        request = full(data)
    except RemoteProtocolError:
        pytest.fail(f"{path.name}: the quick look took a request the parser refuses")
    assert quick.key == server_key(request)
    assert quick.to_tagged == (request.to.tag is not None)


def test_the_torture_set_is_there() -> None:
    assert len(TORTURE) >= 40


@settings(max_examples=300)
@given(cut=st.integers(0, len(INVITE)), junk=st.binary(max_size=8))
def test_mutated_invites_never_raise(cut: int, junk: bytes) -> None:
    data = INVITE[:cut] + junk + INVITE[cut:]
    quick = quick_request(data)
    if quick is not None:
        refusal_bytes(quick, 503, None, to_tag="x", source=SOURCE)
