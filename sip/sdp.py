"""SDP (RFC 4566) parse/serialize and the offer/answer model (RFC 3264), sans-I/O.

voxswitch speaks G.711 (PCMU, PCMA) with RFC 4733 telephone-events. The answerer
takes the first codec in the offer's order that we support, mirrors the offer's
telephone-event payload type, rejects every other media line with port 0, and
keeps one ``o=`` line whose version moves only when our SDP changes (§8).

SRTP by SDES (``sip/sdes.py``) follows a policy: ``off`` answers only plain
RTP/AVP; ``optional`` also takes RTP/SAVP, and an RTP/AVP offer carrying a crypto
line (best-effort SRTP, as baresip's ``mediaenc=srtp`` and many SBCs offer it) is
answered encrypted too; ``required`` answers no stream without a key.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field, replace
from typing import Literal

from sip.sdes import SECURE_PROFILES, SUITES, Crypto, first_supported, new_crypto

MAX_SDP_BYTES = 64 * 1024
WARNING_INCOMPATIBLE = '305 voxswitch "Incompatible media format"'
WARNING_TRANSPORT = '302 voxswitch "Incompatible transport protocol"'
SrtpPolicy = Literal["required", "optional", "off"]
SRTP_POLICIES: tuple[SrtpPolicy, ...] = ("required", "optional", "off")

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
# Session-level lines in the order RFC 4566 §5 requires after v/o/s.
_SESSION_ORDER = "iuepcbtrzka"
_MEDIA_ORDER = "icbka"


ANSWERABLE = ("RTP/AVP", "RTP/SAVP")  # no AVPF feedback: those streams get port 0


class SdpError(ValueError):
    """The body is not SDP we can use; the message says why."""


class NoCommonCodec(SdpError):
    """The offer has no audio stream with a codec we support (answer: 488)."""

    warning = WARNING_INCOMPATIBLE


class NoCommonSecurity(NoCommonCodec):
    """A codec would fit, but not the SRTP policy (ours or the peer's): 488 too."""

    warning = WARNING_TRANSPORT


@dataclass(frozen=True)
class Codec:
    name: str  # "PCMU", "PCMA"
    payload_type: int
    clock_rate: int = 8000


# Static payload types (RFC 3551 table 4) that may appear without an rtpmap.
STATIC_CODECS = {0: Codec("PCMU", 0), 8: Codec("PCMA", 8)}
SUPPORTED_CODECS = ("PCMU", "PCMA")


@dataclass(frozen=True)
class Origin:
    username: str
    session_id: str
    version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True)
class Connection:
    nettype: str
    addrtype: str
    address: str  # without any /ttl/count suffix

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


Attribute = tuple[str, str | None]  # a=name[:value]


@dataclass
class MediaDescription:
    media: str  # audio, video, application, ...
    port: int
    proto: str  # RTP/AVP, RTP/SAVP, ...
    formats: list[str]
    port_count: int | None = None
    connection: Connection | None = None
    attributes: list[Attribute] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)  # i=, b=, k=

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return value or ""
        return None

    def attributes_named(self, name: str) -> list[str]:
        return [value or "" for key, value in self.attributes if key == name]

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """Payload type -> (encoding name upper-cased, clock rate)."""
        result: dict[int, tuple[str, int]] = {}
        for key, value in self.attributes:
            if key != "rtpmap" or not value:
                continue
            pt_text, _, encoding = value.partition(" ")
            name, _, rest = encoding.strip().partition("/")
            rate_text = rest.partition("/")[0]
            if pt_text.isdigit() and rate_text.isdigit():
                result[int(pt_text)] = (name.upper(), int(rate_text))
        return result

    def direction(self, session_default: str) -> str:
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return session_default


@dataclass
class SessionDescription:
    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    times: list[str] = field(default_factory=lambda: ["0 0"])
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)  # i u e p b r z k

    @property
    def direction(self) -> str:
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return "sendrecv"

    @classmethod
    def parse(cls, data: bytes) -> SessionDescription:
        if len(data) > MAX_SDP_BYTES:
            raise SdpError("SDP body too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError("SDP is not UTF-8") from exc
        lines = [line.rstrip("\r") for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if not lines or lines[0].strip() != "v=0":
            raise SdpError("SDP must start with v=0")
        origin: Origin | None = None
        session = SessionDescription(origin=Origin("-", "0", 0, "IN", "IP4", "0.0.0.0"))
        session.times = []
        current: MediaDescription | None = None
        name_seen = False
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
                raise SdpError(f"not an SDP line: {line[:40]!r}")
            kind, value = line[0], line[2:]
            if kind == "m":
                current = _parse_media(value)
                session.media.append(current)
            elif kind == "a":
                attr = _parse_attribute(value)
                (current.attributes if current else session.attributes).append(attr)
            elif kind == "c":
                conn = _parse_connection(value)
                if current is None:
                    session.connection = conn
                else:
                    current.connection = conn
            elif current is not None:
                if kind in "ibk":
                    current.other.append((kind, value))
                elif kind in "vostrzuep":
                    raise SdpError(f"{kind}= is not allowed in a media section")
                # Other letters are unknown extensions: ignored (RFC 4566 §5).
            elif kind == "o":
                if origin is not None:
                    raise SdpError("more than one o= line")
                origin = _parse_origin(value)
            elif kind == "s":
                session.session_name = value
                name_seen = True
            elif kind == "t":
                session.times.append(value)
            elif kind == "v":
                raise SdpError("more than one v= line")
            elif kind in "iuepbrzk":
                session.other.append((kind, value))
        if origin is None:
            raise SdpError("SDP without o= line")
        if not name_seen:
            raise SdpError("SDP without s= line")
        session.origin = origin
        session.times = session.times or ["0 0"]
        return session

    def __bytes__(self) -> bytes:
        out = ["v=0", f"o={self.origin}", f"s={self.session_name or '-'}"]
        other = sorted(self.other, key=lambda kv: _SESSION_ORDER.index(kv[0]))
        out += [f"{k}={v}" for k, v in other if k in "iuep"]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"{k}={v}" for k, v in other if k == "b"]
        out += [f"t={t}" for t in self.times]
        out += [f"{k}={v}" for k, v in other if k in "rzk"]
        out += [_attribute_line(a) for a in self.attributes]
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count else str(m.port)
            out.append(f"m={m.media} {port} {m.proto} {' '.join(m.formats)}")
            media_other = sorted(m.other, key=lambda kv: _MEDIA_ORDER.index(kv[0]))
            out += [f"{k}={v}" for k, v in media_other if k == "i"]
            if m.connection is not None:
                out.append(f"c={m.connection}")
            out += [f"{k}={v}" for k, v in media_other if k in "bk"]
            out += [_attribute_line(a) for a in m.attributes]
        return ("\r\n".join(out) + "\r\n").encode()


def _attribute_line(attr: Attribute) -> str:
    name, value = attr
    return f"a={name}" if value is None else f"a={name}:{value}"


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"o= needs 6 fields: {value[:60]!r}")
    version = parts[2]
    if not (version.isascii() and version.isdigit()) or len(version) > 20:
        raise SdpError(f"o= version is not a number: {version[:20]!r}")
    return Origin(parts[0], parts[1], int(version), parts[3], parts[4], parts[5])


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"c= must be 'IN IP4|IP6 address': {value[:60]!r}")
    address = parts[2].split("/")[0]
    if not address:
        raise SdpError("c= without an address")
    return Connection(parts[0], parts[1], address)


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"m= needs media, port, proto and formats: {value[:60]!r}")
    port_text, _, count_text = parts[1].partition("/")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise SdpError(f"m= port is not a port: {parts[1][:20]!r}")
    count = None
    if count_text:
        if not (count_text.isascii() and count_text.isdigit()) or len(count_text) > 5:
            raise SdpError(f"m= port count is not a number: {parts[1][:20]!r}")
        count = int(count_text)
    return MediaDescription(parts[0], int(port_text), parts[2], parts[3:], port_count=count)


def _parse_attribute(value: str) -> Attribute:
    name, sep, rest = value.partition(":")
    if not name:
        raise SdpError("a= without a name")
    return (name, rest if sep else None)


# ---- offer/answer ------------------------------------------------------------------


@dataclass(frozen=True)
class Negotiated:
    """What one offer/answer exchange settled for the audio stream."""

    codec: Codec
    remote_rtp: tuple[str, int]
    telephone_event_pt: int | None
    direction: str  # ours: sendrecv, recvonly (held by the peer), sendonly, inactive
    # SRTP: (our key, which we encrypt with; the peer's), or None for plain RTP.
    crypto: tuple[Crypto, Crypto] | None = None


def _choose_codec(m: MediaDescription) -> Codec | None:
    rtpmap = m.rtpmap()
    for fmt in m.formats:
        if not fmt.isdigit():
            continue
        pt = int(fmt)
        mapped = rtpmap.get(pt)
        if mapped is not None:
            name, rate = mapped
            if name in SUPPORTED_CODECS and rate == 8000:
                return Codec(name, pt)
        elif pt in STATIC_CODECS:
            return STATIC_CODECS[pt]
    return None


def _telephone_event(m: MediaDescription) -> int | None:
    for pt, (name, rate) in m.rtpmap().items():
        if name == "TELEPHONE-EVENT" and rate == 8000 and str(pt) in m.formats:
            return pt
    return None


def _is_hold_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


class SdpAnswerer:
    """Answers offers for one call; remembers its last answer for later exchanges."""

    def __init__(
        self,
        *,
        local_ip: str,
        local_port: int,
        ptime_ms: int = 20,
        srtp: SrtpPolicy = "off",
    ) -> None:
        self.local_ip = local_ip
        self.local_port = local_port
        self.ptime_ms = ptime_ms
        self.srtp = srtp
        self.origin = Origin(
            "voxswitch",
            str(secrets.randbelow(2**62)),
            1,
            "IN",
            _addrtype(local_ip),
            local_ip,
        )
        self.negotiated: Negotiated | None = None
        self._last: SessionDescription | None = None
        self._keys: dict[str, bytes] = {}  # our key per suite, kept across re-offers
        self._offered: list[Crypto] = []  # the crypto lines of our own offer

    def answer(self, offer: SessionDescription) -> SessionDescription:
        """Our answer to ``offer``; raises NoCommonCodec when no audio stream fits
        (NoCommonSecurity when one would, but not with the SRTP policy)."""
        session_direction = offer.direction
        answered: list[MediaDescription] = []
        chosen: Negotiated | None = None
        insecure = False
        for m in offer.media:
            accepted = None
            if chosen is None and m.media == "audio" and m.port != 0 and m.proto in ANSWERABLE:
                fits, crypto = self._security(m)
                if fits:
                    accepted = self._accept(offer, m, session_direction, crypto)
                else:
                    insecure = insecure or _choose_codec(m) is not None
            if accepted is None:
                answered.append(MediaDescription(m.media, 0, m.proto, m.formats[:1]))
                continue
            chosen, media = accepted
            answered.append(media)
        if chosen is None:
            if insecure:
                raise NoCommonSecurity(f"SRTP {self.srtp}: no audio stream fits")
            raise NoCommonCodec("no audio stream with PCMU or PCMA over RTP/AVP")
        sdp = SessionDescription(
            origin=self.origin,
            session_name="voxswitch",
            connection=Connection("IN", _addrtype(self.local_ip), self.local_ip),
            media=answered,
        )
        if self._last is not None and bytes(replace(sdp, origin=self._last.origin)) != bytes(
            self._last
        ):
            self.origin = replace(self.origin, version=self.origin.version + 1)
            sdp.origin = self.origin
        self._last = sdp
        self.negotiated = chosen
        return sdp

    def _security(self, m: MediaDescription) -> tuple[bool, tuple[Crypto, Crypto] | None]:
        """Whether stream ``m`` fits the SRTP policy, and its keys (ours, the peer's)."""
        theirs = None if self.srtp == "off" else first_supported(m.attributes_named("crypto"))
        if theirs is None:
            return m.proto not in SECURE_PROFILES and self.srtp != "required", None
        if theirs.suite not in self._keys:
            self._keys[theirs.suite] = new_crypto(0, theirs.suite).key_salt
        return True, (Crypto(theirs.tag, theirs.suite, self._keys[theirs.suite]), theirs)

    def _accept(
        self,
        offer: SessionDescription,
        m: MediaDescription,
        session_direction: str,
        crypto: tuple[Crypto, Crypto] | None = None,
    ) -> tuple[Negotiated, MediaDescription] | None:
        codec = _choose_codec(m)
        if codec is None:
            return None
        connection = m.connection or offer.connection
        if connection is None:
            raise SdpError("offer has no c= line for its audio stream")
        direction = m.direction(session_direction)
        if _is_hold_address(connection.address) and direction == "sendrecv":
            direction = "sendonly"  # RFC 2543 hold: c=0.0.0.0
        ours = _ANSWER_DIRECTION[direction]
        te = _telephone_event(m)
        formats = [str(codec.payload_type)]
        attributes: list[Attribute] = [("rtpmap", f"{codec.payload_type} {codec.name}/8000")]
        if te is not None:
            formats.append(str(te))
            attributes += [("rtpmap", f"{te} telephone-event/8000"), ("fmtp", f"{te} 0-16")]
        attributes += [("ptime", str(self.ptime_ms)), (ours, None)]
        if crypto is not None:
            attributes.append(("crypto", str(crypto[0])))
        proto = m.proto if crypto is not None else "RTP/AVP"
        media = MediaDescription("audio", self.local_port, proto, formats, attributes=attributes)
        negotiated = Negotiated(codec, (connection.address, m.port), te, ours, crypto)
        return negotiated, media

    def offer(
        self,
        codecs: tuple[str, ...] = SUPPORTED_CODECS,
        telephone_event_pt: int | None = 101,
        srtp: SrtpPolicy = "off",
    ) -> SessionDescription:
        """Our offer for an outbound call; later exchanges build on it like on an answer.
        SRTP ``required`` offers RTP/SAVP, ``optional`` RTP/AVP with crypto lines (a
        peer without SRTP ignores them and answers plain)."""
        self.srtp = srtp
        self._offered = (
            [] if srtp == "off" else [new_crypto(tag, suite) for tag, suite in enumerate(SUITES, 1)]
        )
        sdp = make_offer(
            self.local_ip,
            self.local_port,
            codecs=codecs,
            telephone_event_pt=telephone_event_pt,
            ptime_ms=self.ptime_ms,
            crypto=self._offered,
            proto="RTP/SAVP" if srtp == "required" else "RTP/AVP",
        )
        for crypto in self._offered:
            self._keys[crypto.suite] = crypto.key_salt
        sdp.origin = self.origin
        self._last = sdp
        return sdp

    def accept_answer(self, answer: SessionDescription) -> Negotiated:
        """The peer's answer to our offer: the codec it chose (the first it lists),
        and the SRTP keys when it took one of our crypto lines."""
        for m in answer.media:
            if m.media != "audio" or m.port == 0:
                continue
            crypto = self._answered_crypto(m)
            if crypto is None and (self.srtp == "required" or m.proto in SECURE_PROFILES):
                raise NoCommonSecurity("the answer has no SRTP key for our offer")
            accepted = self._accept(answer, m, answer.direction, crypto)
            if accepted is not None:
                self.negotiated = accepted[0]
                return accepted[0]
        raise NoCommonCodec("the answer accepts no audio stream with PCMU or PCMA")

    def _answered_crypto(self, m: MediaDescription) -> tuple[Crypto, Crypto] | None:
        offered = {(c.tag, c.suite): c for c in self._offered}
        for value in m.attributes_named("crypto"):
            theirs = first_supported([value])
            if theirs is not None and (ours := offered.get((theirs.tag, theirs.suite))):
                return ours, theirs
        return None

    def current_answer_bytes(self) -> bytes:
        """Our SDP as last sent (for an offerless re-INVITE, §14.2)."""
        if self._last is None:
            raise SdpError("no SDP has been sent yet")
        return bytes(self._last)


def make_offer(
    local_ip: str,
    local_port: int,
    *,
    codecs: tuple[str, ...] = SUPPORTED_CODECS,
    telephone_event_pt: int | None = 101,
    ptime_ms: int = 20,
    crypto: list[Crypto] | None = None,
    proto: str = "RTP/AVP",
) -> SessionDescription:
    """An offer for an outbound call: G.711 in our order of preference."""
    by_name = {c.name: c for c in STATIC_CODECS.values()}
    chosen = [by_name[name] for name in codecs]
    formats = [str(c.payload_type) for c in chosen]
    attributes: list[Attribute] = [("rtpmap", f"{c.payload_type} {c.name}/8000") for c in chosen]
    if telephone_event_pt is not None:
        formats.append(str(telephone_event_pt))
        attributes += [
            ("rtpmap", f"{telephone_event_pt} telephone-event/8000"),
            ("fmtp", f"{telephone_event_pt} 0-16"),
        ]
    attributes += [("ptime", str(ptime_ms)), ("sendrecv", None)]
    attributes += [("crypto", str(c)) for c in crypto or ()]
    addrtype = _addrtype(local_ip)
    return SessionDescription(
        origin=Origin("voxswitch", str(secrets.randbelow(2**62)), 1, "IN", addrtype, local_ip),
        session_name="voxswitch",
        connection=Connection("IN", addrtype, local_ip),
        media=[MediaDescription("audio", local_port, proto, formats, attributes=attributes)],
    )


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"
