"""Bytes → messages: datagram parsing, stream framing and validation.

The tolerances real peers need live here, each with its own test: header folding
(RFC 3261 §7.3.1), compact names, LWS around ':' , LF-only line ends, a missing
Content-Length over UDP (§18.3), extra octets after the body in a datagram (§18.3),
CRLF keepalives (RFC 5626 §3.5.1). Everything else that is malformed raises a
``RemoteProtocolError`` carrying the status a UAS answers with.
"""

from __future__ import annotations

import re

from sip.errors import FramingError, ParseError, RemoteProtocolError, UriError
from sip.message import SINGLE_HEADERS, Headers, Message, Request, Response, header_key
from sip.uri import AbsoluteUri, SipUri

MAX_DATAGRAM_BYTES = 65535
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 1024 * 1024

_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_METHOD_RE = _HEADER_NAME_RE
_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)\Z", re.IGNORECASE)
_STATUS_RE = re.compile(r"[1-6]\d\d\Z")


def parse_message(data: bytes) -> Message | None:
    """Parse one UDP datagram. Returns None for a keepalive (only CR/LF)."""
    start = 0
    n = len(data)
    while start < n and data[start] in b"\r\n":
        start += 1
    if start == n:
        return None
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        head, body_start = data[start:end], end + 4
    else:
        end = data.find(b"\n\n", start)
        if end >= 0:
            head, body_start = data[start:end], end + 2
        else:
            # No blank line at all: take the datagram as headers without a body,
            # then let validation judge the headers (RFC 4475 §3.1.2.15 baddn).
            head, body_start = data[start:].rstrip(b"\r\n"), n
    message = parse_head(head)
    content_length = _content_length(message)
    available = n - body_start
    if content_length is None:
        content_length = available  # §18.3: UDP may omit it; the body is the rest
    elif content_length != available and _slightly_wrong(content_length, data, body_start):
        # A datagram is one message: a Content-Length a few octets off (line ends
        # rewritten by hand or by a broken stack; RFC 5118 §4.6's own example) is
        # corrected to the datagram. A larger excess is a framing error (RFC 4475
        # §3.1.2.2), and a shorter length with a message behind it is dblreq.
        content_length = available
    elif content_length > available:
        raise FramingError(
            f"Content-Length {content_length} exceeds the {available} octets received",
            partial=message,
        )
    # Octets past Content-Length are discarded (§18.3, RFC 4475 §3.1.1.8).
    message.body = data[body_start : body_start + content_length]
    return message


# How far a datagram's Content-Length may be off before it is a framing error.
CONTENT_LENGTH_SLACK = 32


def _slightly_wrong(content_length: int, data: bytes, body_start: int) -> bool:
    available = len(data) - body_start
    if abs(content_length - available) > CONTENT_LENGTH_SLACK:
        return False
    # Extra octets that carry a start line are a second message, not body.
    return content_length > available or b"SIP/2.0" not in data[body_start + content_length :]


def parse_head(head: bytes) -> Message:
    """Parse a start line and header fields (the part before the blank line)."""
    text = head.decode("utf-8", "surrogateescape")
    if text.count("\n") == text.count("\r\n"):
        lines = text.split("\r\n")
    else:  # some peers end lines with a bare LF
        lines = [line.rstrip("\r") for line in text.split("\n")]
    start_line = lines[0]
    items: list[list[str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not items:
                raise ParseError("continuation line before any header")
            items[-1][2] = (items[-1][2] + " " + line.strip(" \t")).strip(" ")
            continue
        colon = line.find(":")
        if colon <= 0:
            raise ParseError(f"header line without a name and colon: {line[:40]!r}")
        name = line[:colon].rstrip(" \t")
        if _HEADER_NAME_RE.match(name) is None:
            raise ParseError(f"invalid header name: {name[:40]!r}")
        items.append([header_key(name), name, line[colon + 1 :].strip(" \t")])
    headers = Headers(items)
    if start_line.startswith("SIP/"):
        return _parse_status_line(start_line, headers)
    return _parse_request_line(start_line, headers)


def _parse_status_line(line: str, headers: Headers) -> Response:
    parts = line.split(" ", 2)
    if len(parts) < 2:
        raise ParseError(f"malformed status line: {line[:60]!r}")
    version, code = parts[0], parts[1]
    if version.upper() != "SIP/2.0":
        raise ParseError(f"unsupported version in status line: {version!r}")
    if _STATUS_RE.match(code) is None:
        raise ParseError(f"status code out of range: {code[:12]!r}")
    return Response(int(code), parts[2] if len(parts) == 3 else "", headers, b"", version)


def _parse_request_line(line: str, headers: Headers) -> Request:
    parts = line.split(" ")
    # Exactly one SP between the three elements (RFC 3261 §25.1; RFC 4475 §3.1.2.9/10).
    if len(parts) != 3 or not all(parts):
        partial = Request("UNKNOWN", "sip:invalid", headers)
        raise ParseError("malformed Request-Line", partial=partial)
    method, uri, version = parts
    request = Request(method, uri, headers, b"", version)
    if _METHOD_RE.match(method) is None:
        raise ParseError(f"invalid method: {method[:20]!r}", partial=request)
    m = _VERSION_RE.match(version)
    if m is None:
        raise ParseError(f"malformed SIP version: {version[:20]!r}", partial=request)
    if (m.group(1), m.group(2)) != ("2", "0"):
        raise ParseError(f"version {version} not supported", status=505, partial=request)
    return request


def _content_length(message: Message) -> int | None:
    values = message.headers.get_all("content-length")
    if not values:
        return None
    if len(values) > 1:
        raise FramingError("more than one Content-Length", partial=message)
    value = values[0]
    if not value.isdigit() or len(value) > 9:
        raise FramingError(f"invalid Content-Length: {value[:20]!r}", partial=message)
    return int(value)


REQUIRED_HEADERS = ("via", "from", "to", "call-id", "cseq")


def validate_request(request: Request) -> None:
    """Check what a UAS needs to process a request; raise with the status to answer.

    The order matters: a request we cannot even answer properly (missing or broken
    Via/From/To/Call-ID/CSeq) gets 400 before the method or URI is judged.
    """
    counts = request.headers.key_counts()
    for name in REQUIRED_HEADERS:
        if name not in counts:
            raise ParseError(f"missing {name} header", partial=request)
    for name in SINGLE_HEADERS:
        if counts.get(name, 0) > 1:
            raise ParseError(f"more than one {name} header", partial=request)
    try:
        request.vias  # noqa: B018 - parse to validate
        request.from_  # noqa: B018
        request.to  # noqa: B018
        cseq = request.cseq
        request.contacts  # noqa: B018
        request.record_routes  # noqa: B018
    except UriError as exc:
        raise ParseError(str(exc), partial=request) from exc
    if cseq.method != request.method:
        if request.method not in KNOWN_METHODS:
            raise RemoteProtocolError("unknown method", status=501, partial=request)
        raise ParseError("CSeq method does not match the Request-Line", partial=request)
    try:
        uri = request.parsed_uri
    except UriError as exc:
        raise ParseError(f"malformed Request-URI: {exc}", partial=request) from exc
    if isinstance(uri, AbsoluteUri):
        raise RemoteProtocolError(
            f"URI scheme {uri.scheme!r} not supported", status=416, partial=request
        )
    if isinstance(uri, SipUri) and uri.headers is not None:
        raise ParseError("headers are not allowed in a Request-URI", partial=request)


def validate_response(response: Response) -> None:
    """A response that fails here is dropped (RFC 3261 §18.1.2, RFC 4475 §3.1.2.5)."""
    counts = response.headers.key_counts()
    for name in REQUIRED_HEADERS:
        if name not in counts:
            raise ParseError(f"response without {name}", partial=response)
    try:
        response.vias  # noqa: B018
        response.cseq  # noqa: B018
        response.from_  # noqa: B018
        response.to  # noqa: B018
    except UriError as exc:
        raise ParseError(str(exc), partial=response) from exc


KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "INFO",
        "UPDATE",
        "PRACK",
        "REFER",
        "NOTIFY",
        "SUBSCRIBE",
        "PUBLISH",
        "MESSAGE",
    }
)


class StreamFramer:
    """Splits a TCP byte stream into messages by Content-Length (RFC 3261 §18.3).

    Incomplete input is capped: a peer that never ends its headers, or announces a
    huge body, gets a ``FramingError`` and the connection should close.
    """

    def __init__(
        self, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self._buffer = bytearray()
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._pending: Message | None = None  # headers parsed, waiting for body
        self._body_length = 0
        self.keepalives = 0  # CRLF CRLF pings seen (RFC 5626 §3.5.1): answer CRLF

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes; return the complete messages. Raises on a framing error."""
        self._buffer += data
        out: list[Message] = []
        while True:
            if self._pending is None:
                # Leading CRLFs between messages are keepalives, not messages.
                stripped = 0
                buf = self._buffer
                while stripped < len(buf) and buf[stripped] in b"\r\n":
                    stripped += 1
                if stripped:
                    if buf[:stripped].count(b"\r\n\r\n"):
                        self.keepalives += 1
                    del buf[:stripped]
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self._max_header_bytes:
                        raise FramingError("header section too large", status=513)
                    return out
                message = parse_head(bytes(buf[:end]))
                del buf[: end + 4]
                length = _content_length(message)
                if length is None:
                    raise FramingError("Content-Length is mandatory over TCP", partial=message)
                if length > self._max_body_bytes:
                    raise FramingError("body too large", status=413, partial=message)
                self._pending, self._body_length = message, length
            if len(self._buffer) < self._body_length:
                return out
            message = self._pending
            assert message is not None
            message.body = bytes(self._buffer[: self._body_length])
            del self._buffer[: self._body_length]
            self._pending = None
            out.append(message)
