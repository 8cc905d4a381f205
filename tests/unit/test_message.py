"""Message model: headers, typed views, serialization, make_response (RFC 3261 §7, §20)."""

from __future__ import annotations

import pytest

from sip.errors import UriError
from sip.message import (
    Headers,
    Request,
    Response,
    display_name,
    header_key,
    make_response,
    parse_cseq,
    parse_via,
)
from sip.parser import parse_message

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n"
    b"Via: SIP/2.0/UDP bigbox3.site3.atlanta.example.com;branch=z9hG4bK77ef4c2312983.1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def invite(data: bytes = INVITE) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


# ---- header names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compact", "key"),
    [
        ("i", "call-id"),
        ("f", "from"),
        ("t", "to"),
        ("v", "via"),
        ("m", "contact"),
        ("l", "content-length"),
        ("c", "content-type"),
        ("k", "supported"),
        ("s", "subject"),
        ("I", "call-id"),
        ("V", "via"),
    ],
)
def test_compact_header_names(compact: str, key: str) -> None:
    assert header_key(compact) == key


def test_header_keys_are_case_insensitive() -> None:
    assert header_key("CALL-ID") == header_key("call-id") == header_key("Call-Id") == "call-id"
    assert header_key("q") == "q"  # unknown one-letter names stay as they are


def test_display_names() -> None:
    assert display_name("call-id") == "Call-ID"
    assert display_name("cseq") == "CSeq"
    assert display_name("www-authenticate") == "WWW-Authenticate"
    assert display_name("content-type") == "Content-Type"
    assert display_name("x-custom-thing") == "X-Custom-Thing"


# ---- Headers -------------------------------------------------------------------------


def test_headers_lookup_by_any_spelling() -> None:
    headers = Headers()
    headers.add("i", "abc")
    headers.add("X-Thing", "1")
    assert headers.get("Call-ID") == "abc"
    assert "call-id" in headers and "I" in headers
    assert headers.get("x-thing") == "1"
    assert headers.get("missing") is None
    assert list(headers) == [("Call-ID", "abc"), ("X-Thing", "1")]  # compact names expanded


def test_headers_keep_the_name_as_written() -> None:
    headers = Headers()
    headers.add("cALL-iD", "abc")
    assert list(headers) == [("cALL-iD", "abc")]


def test_headers_get_all_and_values_split_outside_quotes_and_angles() -> None:
    headers = Headers()
    headers.add("Contact", '<sip:a@h;x=1,2>, "Doe, John" <sip:j@h>')
    headers.add("m", "sip:b@h")
    assert headers.get_all("contact") == ['<sip:a@h;x=1,2>, "Doe, John" <sip:j@h>', "sip:b@h"]
    assert headers.values("contact") == ["<sip:a@h;x=1,2>", '"Doe, John" <sip:j@h>', "sip:b@h"]
    assert headers.count("contact") == 2


def test_headers_set_remove_replace_first_copy() -> None:
    headers = Headers()
    headers.add("Via", "a")
    headers.add("Via", "b")
    copy = headers.copy()
    headers.replace_first("via", "A")
    assert headers.get_all("via") == ["A", "b"]
    assert copy.get_all("via") == ["a", "b"]
    headers.set("v", "only")
    assert headers.get_all("via") == ["only"]
    headers.remove("VIA")
    assert len(headers) == 0
    headers.replace_first("Subject", "added")
    assert headers.get("s") == "added"


def test_key_counts() -> None:
    message = invite()
    counts = message.headers.key_counts()
    assert counts["via"] == 2
    assert counts["call-id"] == 1


# ---- typed views ------------------------------------------------------------------------


def test_typed_views() -> None:
    message = invite()
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (message.cseq.number, message.cseq.method) == (314159, "INVITE")
    assert [v.branch for v in message.vias] == ["z9hG4bKnashds8", "z9hG4bK77ef4c2312983.1"]
    assert message.top_via.host == "pc33.atlanta.example.com"
    assert message.from_.tag == "1928301774"
    assert message.to.tag is None
    assert message.to.display_name == "Bob"
    assert [str(c.uri) for c in message.contacts] == ["sip:alice@pc33.atlanta.example.com"]
    assert [str(r.uri) for r in message.record_routes] == ["sip:p1.example.com;lr"]
    assert message.content_type == "application/sdp"
    assert str(message.parsed_uri) == "sip:bob@biloxi.example.com"


def test_comma_separated_vias_in_one_line() -> None:
    data = INVITE.replace(
        b"Via: SIP/2.0/UDP pc33",
        b"Via: SIP/2.0/UDP first.example.com;branch=z9hG4bK0 ,SIP/2.0/TCP [::1]:5070"
        b";branch=z9hG4bKv6,\r\n SIP/2.0/UDP pc33",
    )
    message = invite(data)
    vias = message.vias
    assert [v.sent_by for v in vias] == [
        "first.example.com",
        "[::1]:5070",
        "pc33.atlanta.example.com",
        "bigbox3.site3.atlanta.example.com",
    ]
    assert vias[1].transport == "TCP"
    assert vias[1].host_bare == "::1"


def test_star_contact_is_not_an_address() -> None:
    message = invite(INVITE.replace(b"Contact: <sip:alice@pc33.atlanta.example.com>", b"m: *"))
    assert message.contacts == []


def test_missing_headers_raise_uri_error() -> None:
    message = Request("OPTIONS", "sip:a@b")
    for view in ("call_id", "cseq", "vias", "from_", "to"):
        with pytest.raises(UriError):
            getattr(message, view)
    assert message.contacts == []
    assert message.content_type is None


def test_parse_via() -> None:
    via = parse_via("SIP / 2.0 / udp  host.example.com : 5060 ;branch=z9hG4bK1;received=[::1]")
    assert via.transport == "UDP"
    assert (via.host, via.port) == ("host.example.com", 5060)
    assert via.params == {"branch": "z9hG4bK1", "received": "[::1]"}
    assert via.sent_by == "host.example.com:5060"


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDP host:70000",
        "SIP/2.0/UDP host:٥٠",  # DIGIT is ASCII only
        "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP host;;branch=x",
        "SIP/2.0/UDP [::1",
    ],
)
def test_malformed_via(text: str) -> None:
    with pytest.raises(UriError):
        parse_via(text)


def test_parse_cseq() -> None:
    cseq = parse_cseq(" 4294967295  INVITE ")
    assert (cseq.number, cseq.method) == (2**32 - 1, "INVITE")
    assert str(cseq) == "4294967295 INVITE"


@pytest.mark.parametrize(
    "text", ["4294967296 INVITE", "1", "INVITE", "-1 INVITE", "1 IN VITE", "١ INVITE", "1.5 INVITE"]
)
def test_malformed_cseq(text: str) -> None:
    with pytest.raises(UriError):
        parse_cseq(text)


# ---- serialization --------------------------------------------------------------------------


def test_serialization_writes_one_correct_content_length_last() -> None:
    message = invite()
    message.body = b"v=0\r\no=x\r\n"
    data = bytes(message)
    assert data.count(b"Content-Length") == 1
    assert data.endswith(b"\r\nContent-Length: 10\r\n\r\nv=0\r\no=x\r\n")
    assert data.startswith(b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: ")


def test_serialization_of_a_built_request() -> None:
    request = Request("OPTIONS", "sip:a@b")
    request.headers.add("v", "SIP/2.0/UDP h;branch=z9hG4bK1")
    request.headers.add("Call-ID", "x")
    assert bytes(request) == (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"Call-ID: x\r\nContent-Length: 0\r\n\r\n"
    )


def test_serialization_keeps_undecodable_octets() -> None:
    data = INVITE.replace(b"Bob <", b"B\xffb <")
    message = invite(data)
    assert bytes(message) == data.replace(b"Content-Length: 4\r\n", b"").replace(
        b"\r\n\r\n", b"\r\nContent-Length: 4\r\n\r\n"
    )


def test_response_start_line() -> None:
    assert Response(180, "Ringing").start_line() == "SIP/2.0 180 Ringing"
    assert bytes(Response(100, "")).startswith(b"SIP/2.0 100 \r\n")


# ---- make_response ------------------------------------------------------------------------------


def test_make_response_copies_the_headers_raw_and_in_order() -> None:
    request = invite()
    response = make_response(request, 180)
    assert (response.status, response.reason) == (180, "Ringing")
    assert list(response.headers) == [
        (name, value)
        for name, value in request.headers
        if name.lower() in ("via", "from", "to", "call-id", "cseq", "record-route")
    ]
    assert response.body == b""


def test_make_response_adds_a_to_tag_when_asked() -> None:
    response = make_response(invite(), 200, to_tag="a6c85cf")
    assert response.headers.get("to") == "Bob <sip:bob@biloxi.example.com>;tag=a6c85cf"
    assert response.to.tag == "a6c85cf"
    assert make_response(invite(), 200).to.tag is None


def test_make_response_keeps_an_existing_to_tag() -> None:
    request = invite(INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"t: <sip:b@h>;tag=x"))
    response = make_response(request, 200, to_tag="other")
    assert response.headers.get("to") == "<sip:b@h>;tag=x"
    assert list(response.headers)[2] == ("t", "<sip:b@h>;tag=x")  # compact name kept as sent


def test_make_response_does_not_tag_a_malformed_to() -> None:
    request = invite(INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: <broken"))
    response = make_response(request, 400, to_tag="t")
    assert response.headers.get("to") == "<broken"


def test_make_response_extra_headers_body_and_reason() -> None:
    response = make_response(invite(), 405, "Nope", headers=[("Allow", "INVITE, ACK")], body=b"x")
    assert response.reason == "Nope"
    assert response.headers.get("allow") == "INVITE, ACK"
    data = bytes(response)
    assert data.startswith(b"SIP/2.0 405 Nope\r\n")
    assert data.endswith(b"Content-Length: 1\r\n\r\nx")


def test_make_response_unknown_status_reason() -> None:
    assert make_response(invite(), 299).reason == "Unknown"
    assert make_response(invite(), 513).reason == "Message Too Large"


def test_response_to_request_parses_back() -> None:
    request = invite()
    response = parse_message(bytes(make_response(request, 200, to_tag="t1")))
    assert isinstance(response, Response)
    assert response.call_id == request.call_id
    assert response.cseq == request.cseq
    assert [v.branch for v in response.vias] == [v.branch for v in request.vias]
    assert response.from_ == request.from_
    assert response.to.tag == "t1"


def test_dialog_making_responses_mirror_record_route_in_order() -> None:
    rr = b"Record-Route: <sip:p2.example.com;lr>\r\n"
    request = invite(INVITE.replace(b"Call-ID:", rr + b"Call-ID:", 1))
    for status in (180, 200):
        routes = make_response(request, status, to_tag="t").headers.values("record-route")
        assert routes == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"], status
    for status in (100, 486):
        assert make_response(request, status).headers.values("record-route") == [], status
