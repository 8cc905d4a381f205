"""A quick look at an INVITE or ACK datagram, to shed load without parsing it whole.

Under overload most INVITEs are refused, and what a refusal costs decides how much
of the node is left for the calls it takes. ``quick_request`` reads only what a
stateless answer needs: the method, the top Via (for the transaction key, with the
same ``parse_via`` the full parser uses, so keys match), whether To has a tag, the
User-Agent, and the raw lines a response copies (Via, From, To, Call-ID, CSeq).
``refusal_bytes`` builds the final response from those lines.

Anything unusual — folded lines, a bare LF, a Via it cannot read, a branch without
the RFC 3261 magic cookie, a missing header — gives None, and the full parser
decides as it always does (and answers 400 where that is the answer).
"""

from __future__ import annotations

from dataclasses import dataclass

from sip.errors import UriError
from sip.message import parse_via, reason_phrase
from sip.transaction import MAGIC_COOKIE

_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}
_COPIED = frozenset((b"via", b"from", b"to", b"call-id", b"cseq"))
_METHODS = {b"INVITE": "INVITE", b"ACK": "ACK"}


@dataclass(slots=True)
class QuickRequest:
    method: str  # "INVITE" or "ACK"
    key: tuple[str, str, str]  # the server transaction key (an ACK's is its INVITE's)
    to_tagged: bool
    user_agent: str | None
    top_via: str  # the top Via value, for received/rport
    via_host: str
    via_rport_empty: bool
    lines: list[tuple[bytes, bytes, bytes]]  # (lower name, raw name, raw value), in order


def quick_request(data: bytes) -> QuickRequest | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end]
    if b"\r\n " in head or b"\r\n\t" in head or b"\n" in head.replace(b"\r\n", b""):
        return None  # folding or bare line feeds: the full parser's job
    lines = head.split(b"\r\n")
    start = lines[0].split(b" ")
    if len(start) != 3 or start[2] != b"SIP/2.0":
        return None
    method_bytes, uri, _ = start
    method = _METHODS.get(method_bytes)
    if method is None or not uri.startswith((b"sip:", b"sips:")) or b"?" in uri:
        return None
    copied: list[tuple[bytes, bytes, bytes]] = []
    seen: set[bytes] = set()
    user_agent: bytes | None = None
    content_length: bytes | None = None
    to_value = b""
    first_via = b""
    cseq = b""
    for line in lines[1:]:
        raw_name, colon, value = line.partition(b":")
        if not colon:
            return None
        name = raw_name.strip().lower()
        name = _COMPACT.get(name, name)
        value = value.strip()
        if name in _COPIED:
            if name != b"via" and name in seen:
                return None  # two To headers ...: let validation answer 400
            seen.add(name)
            copied.append((name, raw_name, value))
            if name == b"via" and not first_via:
                first_via = value
            elif name == b"to":
                to_value = value
            elif name == b"cseq":
                cseq = value
            if (name == b"to" or name == b"from") and (value.count(b'"') % 2 or b"\\" in value):
                return None  # quoting the parser must judge
        elif name == b"user-agent":
            user_agent = value
        elif name in (b"content-length", b"l"):
            if content_length is not None:
                return None
            content_length = value
    if len(seen) != len(_COPIED) or b'"' in first_via:
        return None
    number, _, cseq_method = cseq.partition(b" ")
    if not number.isdigit() or cseq_method.strip() != method_bytes:
        return None
    body = len(data) - end - 4
    if content_length is not None and (not content_length.isdigit() or int(content_length) != body):
        return None  # a framing question: the parser's tolerances and its 400s
    top = first_via.split(b",", 1)[0]
    try:
        top_text = top.decode("ascii")
        via = parse_via(top_text)
    except (UnicodeDecodeError, UriError, ValueError):
        return None
    branch = via.branch
    if not branch or not branch.startswith(MAGIC_COOKIE):
        return None
    # A ";tag=" outside the URI's angle brackets (a name-addr) or anywhere after an
    # addr-spec: the To's own parameters.
    params = to_value.rpartition(b">")[2] if b">" in to_value else to_value
    to_tagged = b";tag=" in params.lower().replace(b" ", b"")
    return QuickRequest(
        method=method,
        key=(branch, via.sent_by, "INVITE"),
        to_tagged=to_tagged,
        user_agent=user_agent.decode("utf-8", "replace") if user_agent is not None else None,
        top_via=top_text,
        via_host=via.host_bare,
        via_rport_empty="rport" in via.params and not via.params["rport"],
        lines=copied,
    )


def refusal_bytes(
    request: QuickRequest,
    status: int,
    reason: str | None,
    *,
    to_tag: str,
    source: tuple[str, int],
    headers: tuple[tuple[str, str], ...] = (),
    server: str = "",
) -> bytes:
    """A final response to ``request``: its Via (the top one stamped with ``received``
    and ``rport`` as §18.2.1 and RFC 3581 ask), From, To with our tag, Call-ID, CSeq."""
    out = [f"SIP/2.0 {status} {reason or reason_phrase(status)}\r\n".encode()]
    first_via = True
    for name, raw_name, value in request.lines:
        if name == b"via" and first_via:
            first_via = False
            value = _stamped(request, source) + value[len(request.top_via) :]
        elif name == b"to":
            value = value + b";tag=" + to_tag.encode()
        out.append(raw_name + b": " + value + b"\r\n")
    for name_text, value_text in headers:
        out.append(f"{name_text}: {value_text}\r\n".encode())
    if server:
        out.append(f"Server: {server}\r\n".encode())
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"".join(out)


def _stamped(request: QuickRequest, source: tuple[str, int]) -> bytes:
    top = request.top_via.rstrip()
    host, port = source
    if request.via_rport_empty:
        top = ";".join(
            f"rport={port}" if piece.strip().lower() == "rport" else piece
            for piece in top.split(";")
        )
    if request.via_host != host:
        top += f";received={host}"
    return top.encode()
