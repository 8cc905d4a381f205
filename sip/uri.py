"""URIs (RFC 3261 §19.1, RFC 3966), header parameters and name-addr/addr-spec.

Everything here parses text that has already been unfolded by the message parser.
Values keep their raw (escaped) spelling so a message we echo stays byte-exact;
``unescape`` gives the decoded form for comparisons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from sip.errors import UriError

# RFC 3261 §25.1 token characters.
TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9\-.]+\Z")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
# Characters that may never appear unescaped in a SIP URI (whitespace, controls, <>").
_URI_FORBIDDEN_RE = re.compile(r'[\x00-\x20\x7f<>"]')

Params = dict[str, str | None]
"""Parameters by lower-cased name; ``None`` for a parameter without a value."""


def is_token(text: str) -> bool:
    return TOKEN_RE.match(text) is not None


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §19.1.2); a '%' that is not an escape stays."""
    return unquote(text, errors="surrogateescape") if "%" in text else text


@dataclass(slots=True)
class SipUri:
    """``sip:`` or ``sips:`` URI."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Params = field(default_factory=dict)
    headers: str | None = None  # the raw text after '?', if any

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def host_bare(self) -> str:
        """Host without IPv6 brackets, as a socket API wants it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(format_params(self.params))
        if self.headers is not None:
            out += ["?", self.headers]
        return "".join(out)


@dataclass(slots=True)
class TelUri:
    """``tel:`` URI (RFC 3966): a number plus parameters."""

    number: str
    params: Params = field(default_factory=dict)

    scheme = "tel"

    def __str__(self) -> str:
        return f"tel:{self.number}{format_params(self.params)}"


@dataclass(slots=True)
class AbsoluteUri:
    """Any other scheme: kept opaque (RFC 3261 lets such URIs appear in headers)."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a URI; raise UriError when it does not follow the grammar."""
    colon = text.find(":")
    if colon <= 0:
        raise UriError(f"URI without scheme: {text!r}")
    scheme = text[:colon].lower()
    if _SCHEME_RE.match(scheme) is None:
        raise UriError(f"invalid URI scheme: {text[:colon]!r}")
    rest = text[colon + 1 :]
    if scheme in ("sip", "sips"):
        return _parse_sip_uri(scheme, rest)
    if _URI_FORBIDDEN_RE.search(rest) or not rest:
        raise UriError(f"invalid characters in URI: {text!r}")
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise UriError("tel URI without a number")
        return TelUri(number, parse_params(";" + ptext) if ptext else {})
    return AbsoluteUri(scheme, rest)


# The common shape, matched in one step: user (no ';' '?' ':'), host, port, params
# without quotes. Anything else takes the general path below.
_SIMPLE_SIP_RE = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,%]+)@)?([A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::([0-9]{1,5}))?((?:;[A-Za-z0-9\-_.!~*'()%+]+(?:=[A-Za-z0-9\-_.!~*'()%+:\[\]]+)?)*)\Z"
)


def _parse_sip_uri(scheme: str, rest: str) -> SipUri:
    m = _SIMPLE_SIP_RE.match(rest)
    if m is not None:
        user, host, port, ptext = m.groups()
        if port is None or int(port) <= 65535:
            params: Params = {}
            if ptext:
                for piece in ptext[1:].split(";"):
                    name, eq, value = piece.partition("=")
                    params[name.lower()] = value if eq else None
            return SipUri(scheme, user, None, host, int(port) if port else None, params)
    if _URI_FORBIDDEN_RE.search(rest):
        raise UriError(f"invalid characters in SIP URI: {rest!r}")
    user = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not userinfo:
            raise UriError("empty user part before '@'")
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
    headers: str | None = None
    q = rest.find("?")
    if q >= 0:
        rest, headers = rest[:q], rest[q + 1 :]
    hostport, sep, ptext = rest.partition(";")
    params = parse_params(";" + ptext) if sep else {}
    host, port = split_hostport(hostport)
    return SipUri(scheme, user, password, host, port, params, headers)


def split_hostport(hostport: str) -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 references in brackets (RFC 5118)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UriError(f"unterminated IPv6 reference: {hostport!r}")
        host, tail = hostport[: end + 1], hostport[end + 1 :]
        if _IPV6_RE.match(host) is None:
            raise UriError(f"invalid IPv6 reference: {host!r}")
        if not tail:
            return host, None
        if tail[0] != ":":
            raise UriError(f"garbage after IPv6 reference: {hostport!r}")
        return host, parse_port(tail[1:])
    host, sep, port_text = hostport.partition(":")
    if not host or _HOSTNAME_RE.match(host) is None:
        raise UriError(f"invalid host: {hostport!r}")
    return host, parse_port(port_text) if sep else None


def parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise UriError(f"invalid port: {text!r}")
    return int(text)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def parse_params(text: str) -> Params:
    """Parse ``;name[=value]`` pairs, tolerating LWS around ';' and '=' (RFC 3261 §25.1).

    Values may be quoted strings (kept with their quotes). An empty parameter
    (``;;``) is a syntax error.
    """
    params: Params = {}
    if not text.strip():
        return params
    stripped = text.lstrip(" \t")
    if not stripped.startswith(";"):
        raise UriError(f"parameters must start with ';': {text!r}")
    for piece in split_outside_quotes(stripped[1:], ";"):
        name, eq, value = piece.partition("=")
        name = name.strip(" \t")
        if not is_token(name):
            raise UriError(f"invalid parameter name: {piece.strip()!r}")
        if eq:
            value = value.strip(" \t")
            if not value:
                raise UriError(f"parameter {name!r} has '=' but no value")
            if value.startswith('"'):
                end = scan_quoted(value, 0)
                if end != len(value):
                    raise UriError(f"garbage after quoted value of {name!r}")
            elif any(c in value for c in " \t\""):
                raise UriError(f"invalid value for parameter {name!r}: {value!r}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def scan_quoted(text: str, start: int) -> int:
    """Index just past the quoted string starting at ``text[start] == '"'``."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise UriError("unterminated quoted string")


def split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not inside a quoted string or <...>."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = scan_quoted(text, i)
            continue
        if c == "<":
            end = text.find(">", i)
            if end < 0:
                raise UriError("unterminated '<'")
            i = end + 1
            continue
        if c == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


@dataclass(slots=True)
class Address:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...)."""

    uri: Uri
    display_name: str | None = None  # as written, quotes included
    params: Params = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        name = f"{self.display_name} " if self.display_name else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"


# name-addr in its common shape: optional token/quoted display name, <URI>, simple params.
_SIMPLE_ADDRESS_RE = re.compile(
    r'[ \t]*((?:"[^"\\]*"|[A-Za-z0-9\-.!%*_+`\'~ ]*?))[ \t]*<([^<> \t"]+)>'
    r"((?:[ \t]*;[ \t]*[A-Za-z0-9\-.!%*_+`'~]+(?:=[A-Za-z0-9\-.!%*_+`'~]+)?)*)[ \t]*\Z"
)


def parse_address(text: str) -> Address:
    """Parse name-addr / addr-spec (RFC 3261 §20.10, §25.1)."""
    m = _SIMPLE_ADDRESS_RE.match(text)
    if m is not None:
        display, uri_text, ptext = m.groups()
        params: Params = {}
        if ptext:
            for piece in ptext.split(";")[1:]:
                name, eq, value = piece.partition("=")
                params[name.strip(" \t").lower()] = value.strip(" \t") if eq else None
        return Address(parse_uri(uri_text), display or None, params)
    s = text.strip(" \t")
    if not s:
        raise UriError("empty address")
    display = None
    if s[0] == '"':
        end = scan_quoted(s, 0)
        display = s[:end]
        s = s[end:].lstrip(" \t")
        if not s.startswith("<"):
            raise UriError("quoted display name not followed by <URI>")
    lt = s.find("<")
    if lt >= 0:
        if lt > 0:
            name = s[:lt].strip(" \t")
            # Unquoted display names are tokens separated by LWS.
            if not all(is_token(word) for word in name.split()):
                raise UriError(f"display name must be tokens or quoted: {name!r}")
            display = name
        gt = s.find(">", lt)
        if gt < 0:
            raise UriError("'<' without '>'")
        uri_text = s[lt + 1 : gt]
        if uri_text != uri_text.strip(" \t"):
            raise UriError("whitespace inside <URI>")
        rest = s[gt + 1 :]
        return Address(parse_uri(uri_text), display, parse_params(rest))
    # addr-spec: the URI may not hold ',', '?' or ';' (they would be ambiguous), so
    # everything after the first ';' belongs to the header (RFC 3261 §20.10).
    uri_text, sep, ptext = s.partition(";")
    uri_text = uri_text.rstrip(" \t")
    if "," in uri_text or "?" in uri_text:
        raise UriError("addr-spec with ',' or '?' must be enclosed in <>")
    if " " in uri_text or "\t" in uri_text:
        raise UriError(f"whitespace inside addr-spec: {uri_text!r}")
    return Address(parse_uri(uri_text), None, parse_params(";" + ptext) if sep else {})
