"""Bytes → messages: datagrams, stream framing, validation (RFC 3261 §7, §18.3, §25)."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import FramingError, ParseError, RemoteProtocolError
from sip.message import Message, Request, Response
from sip.parser import (
    CONTENT_LENGTH_SLACK,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    StreamFramer,
    parse_message,
    validate_request,
    validate_response,
)
from sip.uri import SipUri

BODY = b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(BODY)
) + BODY

OPTIONS = (
    b"OPTIONS sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bKopt1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:bob@biloxi.example.com>\r\n"
    b"From: <sip:alice@atlanta.example.com>;tag=88\r\n"
    b"Call-ID: opt-1@pc33\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def with_body(head: bytes, body: bytes, content_length: int | None) -> bytes:
    """INVITE's header section with another body and Content-Length (None: omitted)."""
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")]
    if content_length is not None:
        lines.insert(-2, b"Content-Length: %d" % content_length)
    return b"\r\n".join(lines) + body


INVITE_HEAD = INVITE[: INVITE.index(b"\r\n\r\n") + 4]


def error_of(data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        message = parse_message(data)
        if isinstance(message, Request):
            validate_request(message)
        elif isinstance(message, Response):
            validate_response(message)
    return info.value


# ---- datagrams: the basics ------------------------------------------------------------


def test_invite() -> None:
    message = request(INVITE)
    validate_request(message)
    assert (message.method, message.uri, message.version) == (
        "INVITE",
        "sip:bob@biloxi.example.com",
        "SIP/2.0",
    )
    assert message.body == BODY
    assert message.headers.get("max-forwards") == "70"


def test_response() -> None:
    message = parse_message(RESPONSE)
    assert isinstance(message, Response)
    validate_response(message)
    assert (message.status, message.reason) == (180, "Ringing")
    assert message.to.tag == "a6c85cf"


def test_reason_phrase_may_be_empty_or_hold_spaces_and_utf8() -> None:
    empty = parse_message(RESPONSE.replace(b"180 Ringing", b"100 "))
    assert isinstance(empty, Response) and empty.reason == ""
    fancy = parse_message(RESPONSE.replace(b"Ringing", "Ça sonne  fort".encode()))
    assert isinstance(fancy, Response) and fancy.reason == "Ça sonne  fort"


@pytest.mark.parametrize("data", [b"\r\n\r\n", b"\r\n", b"\n", b"\r\n\r\n\r\n"])
def test_crlf_keepalive_is_not_a_message(data: bytes) -> None:
    assert parse_message(data) is None


def test_leading_crlf_before_the_start_line_is_ignored() -> None:
    assert request(b"\r\n\r\n" + INVITE).method == "INVITE"


def test_lf_only_line_ends() -> None:
    message = request(INVITE.replace(b"\r\n", b"\n"))
    validate_request(message)
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


def test_lws_around_the_colon() -> None:
    message = request(INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards \t:   70  "))
    assert message.headers.get("max-forwards") == "70"


def test_compact_headers() -> None:
    data = (
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK1\r\n"
        b"t: <sip:bob@biloxi.example.com>\r\n"
        b"f: <sip:alice@atlanta.example.com>;tag=1\r\n"
        b"i: compact@pc33\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"m: <sip:alice@192.0.2.1>\r\n"
        b"k: 100rel, timer\r\n"
        b"s: lunch\r\n"
        b"c: application/sdp\r\n"
        b"l: 4\r\n"
        b"\r\n"
        b"v=0\n"
    )
    message = request(data)
    validate_request(message)
    assert message.top_via.branch == "z9hG4bK1"
    assert message.to.tag is None
    assert message.from_.tag == "1"
    assert message.call_id == "compact@pc33"
    assert str(message.contacts[0].uri) == "sip:alice@192.0.2.1"
    assert message.headers.values("supported") == ["100rel", "timer"]
    assert message.headers.get("Subject") == "lunch"
    assert message.content_type == "application/sdp"
    assert message.body == b"v=0\n"


def test_comma_separated_via_contact_route() -> None:
    data = INVITE.replace(
        b"Max-Forwards: 70\r\n",
        b"Max-Forwards: 70\r\n"
        b"Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bK2, SIP/2.0/TCP [2001:db8::9]:5070"
        b";branch=z9hG4bK3\r\n"
        b'Contact: "Doe, J" <sip:j@192.0.2.7>;q=0.5, <sip:k@192.0.2.8;x=a,b>\r\n'
        b"Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n"
        b"Route: <sip:p3.example.com;lr>\r\n",
    )
    message = request(data)
    validate_request(message)
    assert [v.branch for v in message.vias] == [
        "z9hG4bK776asdhds",
        "z9hG4bK2",
        "z9hG4bK3",
    ]
    assert message.vias[2].host == "[2001:db8::9]"
    contacts = message.contacts
    assert [c.display_name for c in contacts] == ['"Doe, J"', None, None]
    assert contacts[0].params == {"q": "0.5"}
    assert isinstance(contacts[1].uri, SipUri) and contacts[1].uri.params == {"x": "a,b"}
    assert message.headers.values("route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]


def test_header_folding() -> None:
    data = INVITE.replace(
        b"Max-Forwards: 70\r\n",
        b"Max-Forwards: 70\r\nSubject: I know you're there,\r\n"
        b"    pick up the phone\r\n\t and talk to me!\r\n",
    ).replace(
        b"To: Bob <sip:bob@biloxi.example.com>", b"To:\r\n Bob\r\n <sip:bob@biloxi.example.com>"
    )
    message = request(data)
    validate_request(message)
    assert message.headers.get("subject") == (
        "I know you're there, pick up the phone and talk to me!"
    )
    assert message.to.display_name == "Bob"


def test_folded_via_list() -> None:
    data = INVITE.replace(
        b";branch=z9hG4bK776asdhds\r\n",
        b";branch=z9hG4bK776asdhds,\r\n  SIP/2.0/UDP second.example.com\r\n ;branch=z9hG4bK2\r\n",
    )
    message = request(data)
    assert [v.sent_by for v in message.vias] == [
        "pc33.atlanta.example.com:5060",
        "second.example.com",
    ]
    assert message.vias[1].branch == "z9hG4bK2"


def test_name_addr_and_addr_spec_headers() -> None:
    data = INVITE.replace(
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        b"From: sip:alice@atlanta.example.com;transport=tcp;tag=1928301774",
    ).replace(
        b"To: Bob <sip:bob@biloxi.example.com>",
        b'To: "Bob \\"The Builder\\"" <sip:bob@biloxi.example.com;transport=tcp>',
    )
    message = request(data)
    validate_request(message)
    # addr-spec: the ;params after it are header params, the tag among them.
    assert message.from_.tag == "1928301774"
    assert message.from_.params == {"transport": "tcp", "tag": "1928301774"}
    assert isinstance(message.from_.uri, SipUri) and message.from_.uri.params == {}
    # name-addr: URI params stay in the URI.
    assert message.to.display_name == '"Bob \\"The Builder\\""'
    assert isinstance(message.to.uri, SipUri) and message.to.uri.params == {"transport": "tcp"}
    assert message.to.tag is None


def test_sips_tel_and_ipv6_request_uris() -> None:
    for uri in ("sips:bob@biloxi.example.com", "tel:+1-201-555-0123", "sip:[2001:db8::10]:5070"):
        message = request(INVITE.replace(b"sip:bob@biloxi.example.com SIP", uri.encode() + b" SIP"))
        validate_request(message)
        assert str(message.parsed_uri) == uri


def test_escaped_user_in_request_uri() -> None:
    message = request(INVITE.replace(b"sip:bob@", b"sip:%62ob%20x@"))
    validate_request(message)
    assert isinstance(message.parsed_uri, SipUri)
    assert message.parsed_uri.user == "%62ob%20x"


def test_uri_headers_allowed_in_contact_not_in_request_uri() -> None:
    data = INVITE.replace(
        b"Contact: <sip:alice@pc33.atlanta.example.com>",
        b"Contact: <sip:alice@pc33.atlanta.example.com?Subject=x>",
    )
    message = request(data)
    validate_request(message)
    assert isinstance(message.contacts[0].uri, SipUri)
    assert message.contacts[0].uri.headers == "Subject=x"
    err = error_of(data.replace(b"sip:bob@biloxi.example.com SIP", b"sip:bob@b?Subject=x SIP"))
    assert err.status == 400


# ---- Content-Length over UDP ------------------------------------------------------------------


def test_content_length_missing_on_udp_takes_the_rest_of_the_datagram() -> None:
    message = request(with_body(INVITE_HEAD, BODY, None))
    validate_request(message)
    assert message.body == BODY
    assert message.headers.get("content-length") is None


def test_content_length_zero_without_body() -> None:
    assert request(OPTIONS).body == b""


def test_octets_past_content_length_are_dropped() -> None:
    # RFC 3261 §18.3: extra octets in a datagram are discarded (RFC 4475 dblreq).
    trailing = b"x" * (CONTENT_LENGTH_SLACK + 1)
    message = request(with_body(INVITE_HEAD, BODY + trailing, len(BODY)))
    assert message.body == BODY


def test_a_second_message_after_the_body_is_dropped() -> None:
    message = request(with_body(INVITE_HEAD, BODY, len(BODY)) + OPTIONS)
    assert message.method == "INVITE"
    assert message.body == BODY


def test_trailing_padding_after_the_body_is_dropped() -> None:
    # Regression: the Content-Length tolerance below made a stray CRLF part of the body
    # (an ACK with "Content-Length: 0" then CRLF got the body b"\r\n").
    for padding in (b"\r\n", b"\r\n\r\n", b" \t\r\n"):
        assert request(with_body(INVITE_HEAD, BODY + padding, len(BODY))).body == BODY
        assert request(with_body(INVITE_HEAD, padding, 0)).body == b""


def test_content_length_a_few_octets_off_is_corrected_to_the_datagram() -> None:
    # Documented tolerance: line ends rewritten by hand or a broken stack (RFC 5118 §4.6's
    # own example is 17 octets off). The datagram is one message, so its end is known.
    assert request(with_body(INVITE_HEAD, BODY, len(BODY) + 17)).body == BODY
    assert request(with_body(INVITE_HEAD, BODY, len(BODY) - 8)).body == BODY


def test_content_length_larger_than_the_datagram_is_400() -> None:
    # RFC 4475 §3.1.2.2 clerr: answer 400, with what parsed so the answer can be built.
    data = with_body(INVITE_HEAD, BODY, len(BODY) + CONTENT_LENGTH_SLACK + 1)
    with pytest.raises(FramingError) as info:
        parse_message(data)
    assert info.value.status == 400
    assert isinstance(info.value.partial, Request)
    assert info.value.partial.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


@pytest.mark.parametrize(
    "value",
    [b"-1", b"+4", b"4x", b"0x10", b"", b"1 2", b"9999999999", "²".encode(), "５".encode()],
)
def test_malformed_content_length_is_400(value: bytes) -> None:
    data = INVITE.replace(b"Content-Length: %d" % len(BODY), b"Content-Length: " + value)
    with pytest.raises(FramingError) as info:
        parse_message(data)
    assert info.value.status == 400
    assert isinstance(info.value.partial, Request)


def test_two_content_lengths_are_a_framing_error() -> None:
    data = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nl: 1\r\n")
    with pytest.raises(FramingError) as info:
        parse_message(data)
    assert isinstance(info.value.partial, Request)


def test_binary_body_is_kept_byte_for_byte() -> None:
    body = bytes(range(256)) + b"\r\n\r\n\x00"
    message = request(with_body(INVITE_HEAD, body, len(body)))
    assert message.body == body


# ---- malformed start lines and headers ---------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"INVITE  sip:bob@biloxi.example.com SIP/2.0",  # RFC 4475 §3.1.2.9
        b"INVITE sip:bob@biloxi.example.com SIP/2.0 ",  # §3.1.2.10
        b"INVITE sip:bob@biloxi.example.com",
        b"INVITE sip:bob @biloxi.example.com SIP/2.0",  # §3.1.2.8
        b"INV(ITE sip:bob@biloxi.example.com SIP/2.0",
        b"INVITE sip:bob@biloxi.example.com HTTP/1.1",
        b"INVITE sip:bob@biloxi.example.com SIP/2",
    ],
)
def test_malformed_request_line_is_400_with_partial(line: bytes) -> None:
    data = INVITE.replace(b"INVITE sip:bob@biloxi.example.com SIP/2.0", line)
    err = error_of(data)
    assert err.status == 400
    assert isinstance(err.partial, Request)
    assert err.partial.headers.get("call-id") == "a84b4c76e66710@pc33.atlanta.example.com"


@pytest.mark.parametrize("version", [b"SIP/7.0", b"SIP/2.1", b"SIP/1.0"])
def test_other_versions_are_505(version: bytes) -> None:
    err = error_of(INVITE.replace(b" SIP/2.0\r\n", b" " + version + b"\r\n", 1))
    assert err.status == 505
    assert isinstance(err.partial, Request)


def test_lower_case_version_is_accepted() -> None:
    assert request(INVITE.replace(b" SIP/2.0\r\n", b" sip/2.0\r\n", 1)).version == "sip/2.0"


@pytest.mark.parametrize(
    "line",
    [
        b"SIP/2.0 4294967301 Bad",
        b"SIP/2.0 700 Big",
        b"SIP/2.0 99 Small",
        b"SIP/2.0",
        b"SIP/3.0 200 OK",
        "SIP/2.0 1٠٠ Trying".encode(),
    ],
)
def test_malformed_status_lines(line: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(RESPONSE.replace(b"SIP/2.0 180 Ringing", line))
    assert not isinstance(info.value.partial, Request)  # responses are dropped, never answered


@pytest.mark.parametrize(
    "line",
    [b"This is not a header", b"Bad Name: x", b": no name", b"Na(me: x"],
)
def test_bad_header_line_still_gives_the_request_to_answer(line: bytes) -> None:
    # Regression: the error used to carry no partial, so the request was dropped unanswered.
    err = error_of(
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + line + b"\r\n")
    )
    assert err.status == 400
    assert isinstance(err.partial, Request)
    assert err.partial.top_via.branch == "z9hG4bK776asdhds"
    assert err.partial.cseq.number == 314159


def test_continuation_line_before_any_header_still_gives_the_request() -> None:
    err = error_of(INVITE.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n folded\r\nVia", 1))
    assert isinstance(err.partial, Request)
    assert err.partial.headers.get("call-id") is not None


# ---- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"Via", b"From", b"To", b"Call-ID", b"CSeq"])
def test_missing_required_header_is_400(name: bytes) -> None:
    lines = [line for line in INVITE.split(b"\r\n") if not line.startswith(name + b":")]
    err = error_of(b"\r\n".join(lines))
    assert err.status == 400


@pytest.mark.parametrize(
    "extra", [b"Call-ID: other", b"t: <sip:x@y>", b"CSeq: 1 INVITE", b"Max-Forwards: 1"]
)
def test_duplicate_single_headers_are_400(extra: bytes) -> None:
    err = error_of(
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + extra + b"\r\n")
    )
    assert err.status == 400


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"CSeq: 314159 INVITE", b"CSeq: 4294967296 INVITE"),
        (b"CSeq: 314159 INVITE", b"CSeq: INVITE"),
        (b";branch=z9hG4bK776asdhds", b";;branch=z9hG4bK776asdhds"),
        (b"Bob <sip:bob", b'"Bob <sip:bob'),
        (b"<sip:alice@pc33.atlanta.example.com>", b"<sip:alice@pc33 .atlanta.example.com>"),
        (b"sip:bob@biloxi.example.com SIP", b"<sip:bob@biloxi.example.com> SIP"),
        (b"sip:bob@biloxi.example.com SIP", b"sip:2001:db8::10 SIP"),
    ],
)
def test_malformed_values_are_400(old: bytes, new: bytes) -> None:
    err = error_of(INVITE.replace(old, new, 1))
    assert err.status == 400
    assert isinstance(err.partial, Request)


def test_cseq_method_mismatch() -> None:
    assert error_of(INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 1 OPTIONS")).status == 400
    unknown = INVITE.replace(b"INVITE sip:", b"NEWMETHOD sip:").replace(
        b"CSeq: 314159 INVITE", b"CSeq: 1 OPTIONS"
    )
    assert error_of(unknown).status == 501


def test_unknown_method_with_matching_cseq_is_valid() -> None:
    data = INVITE.replace(b"INVITE sip:", b"NEWMETHOD sip:").replace(
        b"314159 INVITE", b"1 NEWMETHOD"
    )
    validate_request(request(data))


def test_unsupported_request_uri_scheme_is_416() -> None:
    err = error_of(INVITE.replace(b"sip:bob@biloxi.example.com SIP", b"mailto:bob@b SIP"))
    assert err.status == 416


def test_response_missing_headers_fails_validation() -> None:
    message = parse_message(RESPONSE.replace(b"CSeq: 314159 INVITE\r\n", b""))
    assert isinstance(message, Response)
    with pytest.raises(ParseError):
        validate_response(message)


# ---- TCP stream framing ------------------------------------------------------------------------


def summary(messages: list[Message]) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    return [(m.start_line(), list(m.headers), m.body) for m in messages]


def test_framer_one_message() -> None:
    messages = StreamFramer().feed(INVITE)
    assert summary(messages) == summary([request(INVITE)])


def test_framer_two_pipelined_messages_in_one_chunk() -> None:
    messages = StreamFramer().feed(INVITE + OPTIONS)
    assert [m.start_line().split()[0] for m in messages] == ["INVITE", "OPTIONS"]
    assert messages[0].body == BODY
    assert messages[1].body == b""


def test_framer_split_at_every_byte_offset() -> None:
    stream = INVITE + OPTIONS
    expected = summary(StreamFramer().feed(stream))
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        got = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert summary(got) == expected, cut


def test_framer_byte_by_byte() -> None:
    framer = StreamFramer()
    got: list[Message] = []
    for i in range(len(INVITE)):
        got += framer.feed(INVITE[i : i + 1])
    assert summary(got) == summary([request(INVITE)])


def test_framer_keeps_trailing_data_for_the_next_feed() -> None:
    framer = StreamFramer()
    assert len(framer.feed(INVITE + OPTIONS[:30])) == 1
    assert [m.start_line() for m in framer.feed(OPTIONS[30:])] == [
        "OPTIONS sip:bob@biloxi.example.com SIP/2.0"
    ]


def test_framer_crlf_keepalives() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.keepalives == 1
    assert len(framer.feed(b"\r\n\r\n" + OPTIONS + b"\r\n\r\n")) == 1
    assert framer.keepalives == 3


def test_framer_ping_split_across_chunks_is_counted() -> None:
    # Regression: a CRLFCRLF ping cut in two segments was not counted (no pong).
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == []
    assert framer.keepalives == 1


def test_framer_content_length_is_mandatory() -> None:
    with pytest.raises(FramingError) as info:
        StreamFramer().feed(with_body(INVITE_HEAD, b"", None))
    assert isinstance(info.value.partial, Request)


def test_framer_unterminated_header_section_is_513() -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nX-Long: ")
    with pytest.raises(FramingError) as info:
        for _ in range(10):
            framer.feed(b"a" * (MAX_HEADER_BYTES // 8))
    assert info.value.status == 513


def test_framer_header_cap_whatever_the_chunking() -> None:
    # Regression: a header section over the cap was accepted when it came in one chunk.
    cap = 300
    head = OPTIONS[: OPTIONS.index(b"\r\n\r\n")]
    big = head + b"\r\nX-Pad: " + b"a" * (cap - len(head) - 9) + b"\r\n\r\n"
    assert big.index(b"\r\n\r\n") == cap  # exactly at the cap: accepted
    bigger = big.replace(b"X-Pad: ", b"X-Pad: a")  # one over
    for chunk in (1, 7, 100, len(bigger)):
        framer = StreamFramer(max_header_bytes=cap)
        got: list[Message] = []
        for i in range(0, len(big), chunk):
            got += framer.feed(big[i : i + chunk])
        assert len(got) == 1, chunk
        framer = StreamFramer(max_header_bytes=cap)
        with pytest.raises(FramingError) as info:
            for i in range(0, len(bigger), chunk):
                framer.feed(bigger[i : i + chunk])
        assert info.value.status == 513


def test_framer_body_cap_is_413() -> None:
    data = with_body(INVITE_HEAD, b"", MAX_BODY_BYTES + 1)
    with pytest.raises(FramingError) as info:
        StreamFramer().feed(data)
    assert info.value.status == 413
    assert isinstance(info.value.partial, Request)
    small = StreamFramer(max_body_bytes=len(BODY) - 1)
    with pytest.raises(FramingError):
        small.feed(INVITE)
    assert len(StreamFramer(max_body_bytes=len(BODY)).feed(INVITE)) == 1


def test_framer_keeps_the_messages_completed_before_an_error() -> None:
    # Regression: the valid messages before a bad one in the same chunk were lost.
    framer = StreamFramer()
    with pytest.raises(ParseError):
        framer.feed(INVITE + OPTIONS + b"garbage\r\n\r\n")
    assert [m.start_line().split()[0] for m in framer.completed_before_error] == [
        "INVITE",
        "OPTIONS",
    ]


def test_framer_bad_head_is_answerable() -> None:
    with pytest.raises(ParseError) as info:
        StreamFramer().feed(OPTIONS.replace(b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1))
    assert info.value.status == 505
    assert isinstance(info.value.partial, Request)


# ---- properties ------------------------------------------------------------------------


def _parse_and_validate(data: bytes) -> Message | None:
    """parse_message + validation; lets RemoteProtocolError through, nothing else."""
    message = parse_message(data)
    if isinstance(message, Request):
        validate_request(message)
    elif isinstance(message, Response):
        validate_response(message)
    else:
        assert message is None
    return message


def _only_protocol_errors(data: bytes) -> None:
    try:
        message = parse_message(data)
    except RemoteProtocolError as exc:
        assert exc.status in (400, 413, 416, 501, 505, 513)
        if isinstance(exc.partial, Request):
            bytes(exc.partial)  # the endpoint can still build and send its answer
        return
    if message is None:
        assert data.strip(b"\r\n") == b""
        return
    assert isinstance(message, Request | Response)
    with contextlib.suppress(RemoteProtocolError):
        _parse_and_validate(data)
    bytes(message)


_NASTY = b'\r\n \t:;,<>"\\@[]%=?/.0123456789SIP/2.0\x00\xff\x80\xc2\xb2'


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_a_protocol_error(data: bytes) -> None:
    _only_protocol_errors(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_NASTY), max_size=200).map(bytes))
def test_any_sip_flavoured_bytes_parse_or_raise_a_protocol_error(data: bytes) -> None:
    _only_protocol_errors(data)


@st.composite
def mutated_invite(draw: st.DrawFn) -> bytes:
    """INVITE (or 180) with bytes inserted, deleted, replaced; headers folded or split."""
    data = bytearray(draw(st.sampled_from([INVITE, RESPONSE, OPTIONS])))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "fold", "split", "dup"]))
        i = draw(st.integers(0, len(data)))
        if op == "insert":
            data[i:i] = draw(st.lists(st.sampled_from(_NASTY), min_size=1, max_size=4))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "replace" and i < len(data):
            data[i] = draw(st.sampled_from(_NASTY))
        elif op == "fold":  # turn an LWS into a continuation line
            space = data.find(b" ", i)
            if space > 0:
                data[space : space + 1] = draw(st.sampled_from([b"\r\n ", b"\r\n\t", b"\n "]))
        elif op == "split":  # split a line into two header lines
            comma = data.find(b",", i)
            if comma > 0:
                data[comma : comma + 1] = b"\r\nVia: "
            else:
                data[i:i] = b"\r\n"
        else:  # duplicate a line
            start = data.rfind(b"\r\n", 0, i) + 2
            end = data.find(b"\r\n", start)
            if 0 <= start < end:
                data[end:end] = b"\r\n" + data[start:end]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated_invite())
def test_mutated_messages_parse_or_raise_a_protocol_error(data: bytes) -> None:
    _only_protocol_errors(data)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_folding_at_any_space_changes_nothing(data: st.DataObject) -> None:
    original = request(INVITE)
    head_end = INVITE.index(b"\r\n\r\n")
    first_header = INVITE.index(b"\r\n") + 2
    spaces = [
        i
        for i in range(first_header, head_end)
        if INVITE[i : i + 1] == b" " and INVITE[i - 1 : i] != b":"
    ]
    chosen = sorted(data.draw(st.sets(st.sampled_from(spaces), max_size=6)), reverse=True)
    folded = bytearray(INVITE)
    for i in chosen:
        folded[i : i + 1] = data.draw(st.sampled_from([b"\r\n ", b"\r\n\t", b"\r\n   "]))
    message = request(bytes(folded))
    validate_request(message)
    assert list(message.headers) == list(original.headers)
    assert message.body == original.body


@st.composite
def framer_stream(draw: st.DrawFn) -> bytes:
    pieces = st.one_of(
        st.sampled_from([INVITE, OPTIONS, RESPONSE, b"\r\n\r\n", b"\r\n", b"\n"]),
        mutated_invite(),
    )
    return b"".join(draw(st.lists(pieces, min_size=1, max_size=5)))


FramerResult = tuple[list[tuple[str, list[tuple[str, str]], bytes]], int | None, int]


def _frame(stream: bytes, cuts: list[int]) -> FramerResult:
    framer = StreamFramer(max_header_bytes=400, max_body_bytes=100)
    got: list[Message] = []
    status: int | None = None
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(stream)), len(stream)]
    try:
        for start, end in itertools.pairwise(bounds):
            got += framer.feed(stream[start:end])
    except RemoteProtocolError as exc:
        got += framer.completed_before_error
        status = exc.status
    return summary(got), status, framer.keepalives


@settings(max_examples=300, deadline=None)
@given(framer_stream(), st.lists(st.integers(0, 2000), max_size=12))
def test_framer_chunking_never_changes_the_result(stream: bytes, cuts: list[int]) -> None:
    whole = _frame(stream, [])
    assert _frame(stream, cuts) == whole


@settings(max_examples=30, deadline=None)
@given(framer_stream())
def test_framer_byte_by_byte_equals_one_piece(stream: bytes) -> None:
    assert _frame(stream, list(range(len(stream)))) == _frame(stream, [])


# Well-formed requests, built from parts, survive a parse → bytes → parse round trip.

_TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
_HOST = st.sampled_from(
    [
        "a",
        "biloxi.example.com",
        "x-1.y-2.example",
        "192.0.2.1",
        "[2001:db8::10]",
        "[::ffff:192.0.2.2]",
        "[::1]",
    ]
)
_USER = st.tuples(
    st.text("abcXYZ019-_.!~*'()&=+$,", min_size=1, max_size=10),
    st.sampled_from(["", "%20", "%00", "%41"]),
).map("".join)
_PARAM = st.tuples(_TOKEN, st.one_of(st.none(), _TOKEN))
_VALUE = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters=","),
    min_size=1,
    max_size=20,
)


def _params(params: list[tuple[str, str | None]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@st.composite
def well_formed_request(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "MESSAGE", "INFO"]) | _TOKEN)
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    uri = f"sip:{draw(_USER)}@{draw(_HOST)}{'' if port is None else f':{port}'}"
    uri += _params(draw(st.lists(_PARAM, max_size=3)))
    cseq = draw(st.integers(0, 2**32 - 1))
    headers = [
        ("Via", f"SIP/2.0/UDP {draw(_HOST)};branch=z9hG4bK{draw(_TOKEN)}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
        ("From", f"<sip:{draw(_USER)}@{draw(_HOST)}>;tag={draw(_TOKEN)}"),
        ("To", f"<sip:{draw(_USER)}@{draw(_HOST)}>"),
        ("Call-ID", draw(_TOKEN) + "@" + draw(_TOKEN)),
        ("CSeq", f"{cseq} {method}"),
    ]
    names = ["Subject", "X-Extra", "User-Agent", "Supported", "s", "k"]
    for _ in range(draw(st.integers(0, 4))):
        name, value = draw(st.sampled_from(names)), draw(_VALUE)
        headers.insert(draw(st.integers(0, len(headers))), (name, value))
    body = draw(st.binary(max_size=200))
    headers.append(("Content-Length", str(len(body))))
    head = f"{method} {uri} SIP/2.0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    head += "\r\n"
    expected: dict[str, object] = {"method": method, "uri": uri, "headers": headers, "body": body}
    return head.encode("utf-8") + body, expected


@settings(max_examples=300, deadline=None)
@given(well_formed_request())
def test_well_formed_requests_round_trip(case: tuple[bytes, dict[str, object]]) -> None:
    data, expected = case
    first = request(data)
    validate_request(first)
    assert (first.method, first.uri, first.body) == (
        expected["method"],
        expected["uri"],
        expected["body"],
    )
    assert list(first.headers) == expected["headers"]
    assert isinstance(first.parsed_uri, SipUri)
    again = request(bytes(first))
    validate_request(again)
    assert again.start_line() == first.start_line()
    assert list(again.headers) == list(first.headers)
    assert again.body == first.body
    assert again.vias == first.vias
    assert again.from_ == first.from_
    assert again.to == first.to
    assert again.cseq == first.cseq
    assert bytes(again) == bytes(first)
