"""SIP message model: requests, responses, headers (RFC 3261 §7, §20).

Header values are kept as raw text: a response copies Via/From/To/Call-ID/CSeq
from its request byte for byte, and typed views (``vias``, ``cseq``, ``from_``...)
are parsed on first use and cached. Serialization always writes a correct
Content-Length.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sip.errors import UriError
from sip.uri import Address, Params, Uri, parse_address, parse_params, parse_uri, split_hostport
from sip.uri import split_outside_quotes as _split

SIP_VERSION = "SIP/2.0"

# RFC 3261 §7.3.3 and later RFCs' compact forms.
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Spellings that plain title case gets wrong.
_DISPLAY_NAMES = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1).
LIST_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "in-reply-to",
        "warning",
    }
)

# Headers that may appear once only; two copies make a request malformed (RFC 4475 §3.3.8).
SINGLE_HEADERS = ("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type")

_CSEQ_RE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*\Z")
_VIA_RE = re.compile(
    r"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+"
    r"(\[[^\]]*\]|[^ \t;:]+)(?:[ \t]*:[ \t]*([0-9]+))?[ \t]*(;.*)?\Z",
    re.DOTALL,
)
MAX_CSEQ = 2**32 - 1


if TYPE_CHECKING:
    from functools import cached_property
else:

    class cached_property:  # a drop-in for functools.cached_property
        """functools.cached_property without its per-access lock (Python 3.11 takes an
        RLock on every first access): messages are never shared between threads, and
        this sits on the per-request hot path."""

        def __init__(self, func):
            self.func = func
            self.name = func.__name__
            self.__doc__ = func.__doc__

        def __set_name__(self, owner, name):
            self.name = name

        def __get__(self, obj, owner=None):
            if obj is None:
                return self
            value = obj.__dict__[self.name] = self.func(obj)
            return value


_KEY_CACHE: dict[str, str] = {}


def header_key(name: str) -> str:
    """Lower-case long form of a header name: the key used for lookups."""
    key = _KEY_CACHE.get(name)
    if key is None:
        key = name.lower()
        if len(key) == 1:
            key = COMPACT_FORMS.get(key, key)
        if len(_KEY_CACHE) < 4096:  # bounded: header names come from the network
            _KEY_CACHE[name] = key
    return key


def display_name(key: str) -> str:
    known = _DISPLAY_NAMES.get(key)
    if known:
        return known
    return "-".join(part.capitalize() for part in key.split("-"))


class Headers:
    """Ordered header fields as ``[key, name-as-written, value]`` triples."""

    __slots__ = ("_items",)

    def __init__(self, items: list[list[str]] | None = None) -> None:
        self._items: list[list[str]] = items if items is not None else []

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._items:
            yield name, value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: str) -> bool:
        key = header_key(name)
        return any(item[0] == key for item in self._items)

    def get(self, name: str) -> str | None:
        key = header_key(name)
        for item in self._items:
            if item[0] == key:
                return item[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every header line with this name, not split at commas."""
        key = header_key(name)
        return [item[2] for item in self._items if item[0] == key]

    def count(self, name: str) -> int:
        key = header_key(name)
        return sum(1 for item in self._items if item[0] == key)

    def key_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self._items:
            key = item[0]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def values(self, name: str) -> list[str]:
        """All values of a list header, split at commas outside quotes and <>."""
        out: list[str] = []
        for line in self.get_all(name):
            if "," in line:
                out.extend(part.strip(" \t") for part in _split(line, ","))
            else:
                out.append(line)
        return out

    def add(self, name: str, value: str) -> None:
        key = header_key(name)
        self._items.append([key, display_name(key) if len(name) == 1 else name, value])

    def set(self, name: str, value: str) -> None:
        """Replace every line of this header by one line (or add it)."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._items = [item for item in self._items if item[0] != key]

    def replace_first(self, name: str, value: str) -> None:
        key = header_key(name)
        for item in self._items:
            if item[0] == key:
                item[2] = value
                return
        self.add(name, value)

    def copy(self) -> Headers:
        return Headers([list(item) for item in self._items])

    def encode_into(self, out: list[str]) -> None:
        for key, name, value in self._items:
            if key != "content-length":
                out.append(f"{name}: {value}\r\n")


@dataclass(slots=True)
class Via:
    """One Via header value (RFC 3261 §20.42)."""

    transport: str
    host: str
    port: int | None
    params: Params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def host_bare(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host


def parse_via(text: str) -> Via:
    m = _VIA_RE.match(text)
    if m is None:
        raise UriError(f"malformed Via: {text.strip()!r}")
    transport, host, port, ptext = m.groups()
    host, _ = split_hostport(host)
    if port is not None and (len(port) > 5 or int(port) > 65535):
        raise UriError(f"invalid Via port: {port}")
    return Via(
        transport.upper(),
        host,
        int(port) if port is not None else None,
        parse_params(ptext) if ptext else {},
    )


@dataclass(slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    m = _CSEQ_RE.match(text)
    if m is None:
        raise UriError(f"malformed CSeq: {text!r}")
    number = int(m.group(1))
    if number > MAX_CSEQ:
        raise UriError(f"CSeq number out of range: {number}")
    return CSeq(number, m.group(2))


class Message:
    """Common part of requests and responses."""

    headers: Headers
    body: bytes

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        out = [self.start_line(), "\r\n"]
        self.headers.encode_into(out)
        out.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        head = "".join(out).encode("utf-8", "surrogateescape")
        return head + self.body if self.body else head

    # Typed views, parsed once. They raise UriError on malformed values; the
    # endpoint validates a message before handing it on, so later use is safe.

    @cached_property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if not value:
            raise UriError("missing Call-ID")
        return value

    @cached_property
    def cseq(self) -> CSeq:
        value = self.headers.get("cseq")
        if value is None:
            raise UriError("missing CSeq")
        return parse_cseq(value)

    @cached_property
    def vias(self) -> list[Via]:
        values = self.headers.values("via")
        if not values:
            raise UriError("missing Via")
        return [parse_via(v) for v in values]

    @property
    def top_via(self) -> Via:
        return self.vias[0]

    @cached_property
    def from_(self) -> Address:
        value = self.headers.get("from")
        if value is None:
            raise UriError("missing From")
        return parse_address(value)

    @cached_property
    def to(self) -> Address:
        value = self.headers.get("to")
        if value is None:
            raise UriError("missing To")
        return parse_address(value)

    @cached_property
    def contacts(self) -> list[Address]:
        return [parse_address(v) for v in self.headers.values("contact") if v.strip() != "*"]

    @cached_property
    def record_routes(self) -> list[Address]:
        return [parse_address(v) for v in self.headers.values("record-route")]

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()


class Request(Message):
    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self.version = version

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    @cached_property
    def parsed_uri(self) -> Uri:
        return parse_uri(self.uri)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# RFC 3261 §21 reason phrases for the codes we send.
REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}


def clean_text(value: Any) -> Any:
    """``value`` (text, or lists and dicts of it) as valid Unicode: the parser keeps a
    peer's non-UTF-8 bytes as lone surrogates (to send them back byte for byte), which
    JSON, file names and databases above us cannot take; each becomes U+FFFD."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # a surrogate no byte decoding made
            return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_text(v) for v in value]
    return value


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status, "Unknown")


# Headers a response copies from its request (RFC 3261 §8.2.6.2).
_COPIED = ("via", "from", "to", "call-id", "cseq")
_COPIED_DIALOG = (*_COPIED, "record-route")


def _has_tag(request: Request) -> bool:
    try:
        return request.to.tag is not None
    except UriError:  # a malformed To gets no tag added: we are rejecting it anyway
        return True


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """Build a response to ``request``: copies Via/From/To/Call-ID/CSeq raw.

    ``to_tag`` is added to To unless the request's To already carries a tag. A
    response that makes a dialog (1xx with a tag, 2xx, to INVITE) also gets the
    request's Record-Route, in order (§12.1.1).
    """
    copied: tuple[str, ...] = _COPIED
    if 100 < status < 300 and request.method == "INVITE":
        copied = _COPIED_DIALOG
    out: list[list[str]] = []
    for key, name, value in request.headers._items:
        if key in copied:
            if key == "to" and to_tag is not None and not _has_tag(request):
                value = f"{value};tag={to_tag}"
            out.append([key, name, value])
    response = Response(status, reason or reason_phrase(status), Headers(out), body)
    if headers:
        for name, value in headers:
            response.headers.add(name, value)
    return response
