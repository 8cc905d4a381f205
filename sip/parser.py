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
_VERSION_RE = re.compile(r"SIP/([0-9]+)\.([0-9]+)\Z", re.IGNORECASE | re.ASCII)
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]\Z")
_LEADING_CRLF_RE = re.compile(rb"[\r\n]*")


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
    if content_length > available:
        return True
    # Padding after the body (a stray CRLF) is dropped, not made body; and extra
    # octets that carry a start line are a second message.
    extra = data[body_start + content_length :]
    return extra.strip() != b"" and b"SIP/2.0" not in extra


def parse_head(head: bytes) -> Message:
    """Parse a start line and header fields (the part before the blank line)."""
    text = head.decode("utf-8", "surrogateescape")
    if text.count("\n") == text.count("\r\n"):
        lines = text.split("\r\n")
    else:  # some peers end lines with a bare LF
        lines = [line.rstrip("\r") for line in text.split("\n")]
    start_line = lines[0]
    items: list[list[str]] = []
    # A bad header line does not stop the parse: the error is raised once the start
    # line and the other headers are known, so a request can still be answered 400.
    error: str | None = None
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not items:
                error = error or "continuation line before any header"
                continue
            items[-1][2] = (items[-1][2] + " " + line.strip(" \t")).strip(" ")
            continue
        colon = line.find(":")
        if colon <= 0:
            error = error or f"header line without a name and colon: {line[:40]!r}"
            continue
        name = line[:colon].rstrip(" \t")
        if _HEADER_NAME_RE.match(name) is None:
            error = error or f"invalid header name: {name[:40]!r}"
            continue
        items.append([header_key(name), name, line[colon + 1 :].strip(" \t")])
    headers = Headers(items)
    message: Message
    if start_line.startswith("SIP/"):
        message = _parse_status_line(start_line, headers)
    else:
        message = _parse_request_line(start_line, headers)
    if error is not None:
        raise ParseError(error, partial=message)
    return message


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
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise FramingError(f"invalid Content-Length: {value[:20]!r}", partial=message)
    return int(value)


REQUIRED_HEADERS = ("via", "from", "to", "call-id", "cseq")
# RFC 3261 §25.1 callid = word ["@" word]. Tolerant: any visible ASCII (real UAs put
# '#', '=' and more in it), but never empty, blank, a control byte or non-ASCII: the
# Call-ID names the call in file names, logs, events and the API.
_CALL_ID_RE = re.compile(r"[!-~]{1,256}")


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
    call_id = request.headers.get("call-id") or ""
    if _CALL_ID_RE.fullmatch(call_id) is None:
        raise ParseError("malformed Call-ID", partial=request)
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
        self._ping_matched = 0  # octets of a CRLFCRLF ping seen so far, across feeds
        self.keepalives = 0  # CRLF CRLF pings seen (RFC 5626 §3.5.1): answer CRLF
        # When feed() raises, the messages it completed before the error: still the
        # peer's valid requests, the caller may process them before closing.
        self.completed_before_error: list[Message] = []

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes; return the complete messages. Raises on a framing error.

        The result does not depend on how the stream is cut into chunks. When it
        raises, ``completed_before_error`` holds the messages completed before it.
        """
        self._buffer += data
        out: list[Message] = []
        try:
            self._frame(out)
        except RemoteProtocolError:
            self.completed_before_error = out
            raise
        return out

    def _frame(self, out: list[Message]) -> None:
        while True:
            if self._pending is None:
                # Leading CRLFs between messages are keepalives, not messages.
                buf = self._buffer
                crlfs = _LEADING_CRLF_RE.match(buf)
                stripped = crlfs.end() if crlfs is not None else 0
                if stripped:
                    self._count_pings(buf[:stripped])
                    del buf[:stripped]
                if not buf:
                    return  # a ping may continue in the next chunk
                self._ping_matched = 0
                end = buf.find(b"\r\n\r\n")
                # The cap applies to the header section, whatever the chunking: up to
                # 3 octets of an incomplete CRLFCRLF may trail it in the buffer.
                if (end < 0 and len(buf) > self._max_header_bytes + 3) or (
                    end > self._max_header_bytes
                ):
                    raise FramingError("header section too large", status=513)
                if end < 0:
                    return
                message = parse_head(bytes(buf[:end]))
                del buf[: end + 4]
                length = _content_length(message)
                if length is None:
                    raise FramingError("Content-Length is mandatory over TCP", partial=message)
                if length > self._max_body_bytes:
                    raise FramingError("body too large", status=413, partial=message)
                self._pending, self._body_length = message, length
            if len(self._buffer) < self._body_length:
                return
            message = self._pending
            assert message is not None
            message.body = bytes(self._buffer[: self._body_length])
            del self._buffer[: self._body_length]
            self._pending = None
            out.append(message)

    def _count_pings(self, crlfs: bytearray) -> None:
        """Count CRLFCRLF in a run of CR/LF octets, carrying a partial match over."""
        matched = self._ping_matched
        for octet in crlfs:
            if octet == b"\r\n\r\n"[matched]:
                matched += 1
                if matched == 4:
                    self.keepalives += 1
                    matched = 0
            else:
                matched = 1 if octet == 13 else 0
        self._ping_matched = matched
