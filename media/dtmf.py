"""DTMF, sans I/O: RFC 4733 telephone-events over RTP, and SIP INFO bodies.

Telephone-event payload (RFC 4733 §2.3)::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   |     event     |E|R| volume    |          duration             |

All packets of one event carry the same RTP timestamp (the event's start); the
duration grows with each update, and the final packet (E bit set) is sent three
times. ``DtmfReceiver`` turns that stream into one ``DtmfDigit`` per event;
``DtmfSender`` produces it. Time is always a parameter: nothing here sleeps.

SIP INFO carries digits as ``application/dtmf-relay`` (``Signal=5`` /
``Duration=160``) or ``application/dtmf`` (just the digit): see
``parse_dtmf_relay`` and ``parse_dtmf_info``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from media.rtp import RtpPacket

DIGITS = "0123456789*#ABCD"  # RFC 4733 §3.2: event codes 0-15 in this order

_EVENT = struct.Struct("!BBH")  # event, E/R/volume, duration
_END_BIT = 0x80
_VOLUME_MASK = 0x3F
_MAX_DURATION = 0xFFFF  # 16-bit field; longer events need segments (not produced here)
_END_REPEATS = 3  # RFC 4733 §2.5.1.4

DEFAULT_TIMEOUT_S = 0.5  # no packet for this long: the end packets were lost
DEFAULT_FORGET_S = 2.0  # how long a finished event's timestamp is remembered
DEFAULT_GAP_MS = 100  # silence between digits sent back to back
DEFAULT_INFO_DURATION_MS = 100  # INFO bodies without a (valid) Duration

SOURCE_RFC4733 = "rfc4733"
SOURCE_INFO = "info"


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One telephone-event payload as received."""

    event: int
    end: bool
    volume: int
    duration: int  # timestamp units

    @property
    def digit(self) -> str | None:
        """The DTMF digit for events 0-15; ``None`` for other events (flash, tones)."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    digit: str
    duration_ms: int
    source: str  # SOURCE_RFC4733 or SOURCE_INFO


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One telephone-event RTP packet to send ``send_offset_ms`` after the start."""

    payload: bytes
    marker: bool
    timestamp: int
    send_offset_ms: int


def parse_telephone_event(payload: bytes) -> TelephoneEvent | None:
    """The event in an RTP payload, or ``None`` when it is shorter than 4 bytes."""
    if len(payload) < _EVENT.size:
        return None
    event, flags, duration = _EVENT.unpack_from(payload)
    return TelephoneEvent(
        event=event,
        end=bool(flags & _END_BIT),
        volume=flags & _VOLUME_MASK,
        duration=duration,
    )


def pack_telephone_event(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """A 4-byte telephone-event payload (the R bit is always 0)."""
    if not 0 <= event <= 255:
        raise ValueError(f"event code must be 0..255, got {event}")
    if not 0 <= volume <= _VOLUME_MASK:
        raise ValueError(f"volume must be 0..63, got {volume}")
    if not 0 <= duration <= _MAX_DURATION:
        raise ValueError(f"duration must be 0..65535 timestamp units, got {duration}")
    return _EVENT.pack(event, (_END_BIT if end else 0) | volume, duration)


def _ts_newer(a: int, b: int) -> bool:
    """Whether RTP timestamp ``a`` comes after ``b`` (serial arithmetic mod 2**32)."""
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000


class DtmfReceiver:
    """Collapses telephone-event packets into digits, each reported exactly once.

    An event is keyed by its RTP timestamp. It is reported on its first end packet,
    when a newer timestamp starts another event, or from ``tick`` after
    ``timeout_s`` without packets (all end packets lost). Packets for an event that
    was already reported (end retransmissions, late reordered updates) are dropped.
    """

    def __init__(
        self,
        clock_rate: int = 8000,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        forget_s: float = DEFAULT_FORGET_S,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, got {clock_rate}")
        self.clock_rate = clock_rate
        self.timeout_s = timeout_s
        self.forget_s = forget_s
        # The event in progress: timestamp, digit, longest duration seen, last packet time.
        self._active: tuple[int, str, int, float] | None = None
        # The last reported event: timestamp and when it was reported.
        self._done: tuple[int, float] | None = None

    def feed(self, rtp_timestamp: int, payload: bytes, now: float) -> list[DtmfDigit]:
        """Digits completed by this packet (usually none, at most two)."""
        event = parse_telephone_event(payload)
        if event is None or event.digit is None:
            return []
        ts = rtp_timestamp & 0xFFFFFFFF
        if self._is_stale(ts, now):
            return []
        out: list[DtmfDigit] = []
        active = self._active
        if active is not None and active[0] != ts:
            if not _ts_newer(ts, active[0]):
                return []  # a late packet from before the event in progress
            out.append(self._finish(now))
        duration = event.duration
        if self._active is not None:
            duration = max(duration, self._active[2])  # reordered updates never shrink it
        self._active = (ts, event.digit, duration, now)
        if event.end:
            out.append(self._finish(now))
        return out

    def tick(self, now: float) -> list[DtmfDigit]:
        """The event in progress, once nothing has been heard of it for ``timeout_s``."""
        if self._active is not None and now - self._active[3] >= self.timeout_s:
            return [self._finish(now)]
        return []

    @property
    def pending(self) -> bool:
        """Whether an event has started and not yet been reported."""
        return self._active is not None

    def _is_stale(self, ts: int, now: float) -> bool:
        if self._done is None:
            return False
        done_ts, reported_at = self._done
        if now - reported_at >= self.forget_s:
            # Long since: a timestamp "from the past" is more likely a new stream.
            self._done = None
            return False
        # Not refreshed by the stale packets themselves, so a sender that restarted its
        # timestamps is heard again after forget_s at most.
        return ts == done_ts or not _ts_newer(ts, done_ts)

    def _finish(self, now: float) -> DtmfDigit:
        assert self._active is not None
        ts, digit, duration, _ = self._active
        self._active = None
        self._done = (ts, now)
        duration_ms = round(duration * 1000 / self.clock_rate)
        return DtmfDigit(digit, duration_ms, SOURCE_RFC4733)


class DtmfSender:
    """Builds the telephone-event packets for a string of digits (RFC 4733 §2.5.1)."""

    def __init__(self, payload_type: int, clock_rate: int = 8000, volume: int = 10) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"RTP payload type must be 0..127, got {payload_type}")
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, got {clock_rate}")
        if not 0 <= volume <= _VOLUME_MASK:
            raise ValueError(f"volume must be 0..63, got {volume}")
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.volume = volume

    def events(
        self,
        digits: str,
        start_timestamp: int,
        duration_ms: int = 100,
        packet_ms: int = 20,
        gap_ms: int = DEFAULT_GAP_MS,
    ) -> list[OutgoingEvent]:
        """Every packet for ``digits``, in send order.

        Per digit: one packet every ``packet_ms`` with the duration so far (the
        first one marked), the last with the E bit and the full duration, that end
        packet twice more at the same interval. The next digit starts ``gap_ms``
        after the previous tone ends (later if its end packets are still going out),
        its timestamp advanced by the elapsed time.
        """
        codes = [_event_code(d) for d in digits]  # validate everything before building
        if duration_ms <= 0 or packet_ms <= 0:
            raise ValueError("duration_ms and packet_ms must be positive")
        if gap_ms < 0:
            raise ValueError(f"gap_ms must not be negative, got {gap_ms}")
        total = self._units(duration_ms)
        step = self._units(packet_ms)
        if not 0 < step <= total <= _MAX_DURATION:
            raise ValueError(
                f"duration {duration_ms} ms / packet {packet_ms} ms do not fit "
                f"1..65535 timestamp units at {self.clock_rate} Hz"
            )
        updates = -(-total // step)  # packets up to and including the first end packet
        out: list[OutgoingEvent] = []
        start_ms = 0
        for code in codes:
            timestamp = (start_timestamp + self._units(start_ms)) & 0xFFFFFFFF
            offset = start_ms
            for k in range(1, updates + 1):
                end = k == updates
                payload = pack_telephone_event(
                    code, end=end, volume=self.volume, duration=min(k * step, total)
                )
                repeats = _END_REPEATS if end else 1
                for r in range(repeats):
                    out.append(OutgoingEvent(payload, k == 1 and r == 0, timestamp, offset))
                    offset += packet_ms
            last_sent = offset - packet_ms
            start_ms = max(start_ms + duration_ms + gap_ms, last_sent + packet_ms)
        return out

    def to_rtp(self, event: OutgoingEvent, sequence: int, ssrc: int) -> RtpPacket:
        """The RTP packet for ``event``: the caller owns the stream's sequence numbers."""
        return RtpPacket(
            payload_type=self.payload_type,
            sequence=sequence & 0xFFFF,
            timestamp=event.timestamp,
            ssrc=ssrc,
            marker=event.marker,
            payload=event.payload,
        )

    def _units(self, ms: int) -> int:
        return ms * self.clock_rate // 1000


def _event_code(digit: str) -> int:
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r} (expected 0-9, *, #, A-D)")
    return code


def _normalize_signal(value: str) -> str | None:
    """A SIP INFO signal as a digit: ``*``/``#``/0-9/A-D, or event codes 10-15."""
    value = value.strip().upper()
    if len(value) == 1 and value in DIGITS:
        return value
    if len(value) <= 2 and value.isascii() and value.isdigit() and int(value) < len(DIGITS):
        return DIGITS[int(value)]  # "10" is *, "11" is #: the RFC 4733 codes
    return None


def parse_dtmf_relay(body: bytes) -> DtmfDigit | None:
    """The digit in an ``application/dtmf-relay`` body, or ``None`` without a valid one.

    Keys are case-insensitive, lines end in LF or CRLF; a missing or unreadable
    ``Duration`` (milliseconds) falls back to ``DEFAULT_INFO_DURATION_MS``.
    """
    fields: dict[str, str] = {}
    for line in body.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    digit = _normalize_signal(fields.get("signal", ""))
    if digit is None:
        return None
    raw = fields.get("duration", "")
    valid = 0 < len(raw) <= 9 and raw.isascii() and raw.isdigit()
    duration = int(raw) if valid else DEFAULT_INFO_DURATION_MS
    return DtmfDigit(digit, duration, SOURCE_INFO)


def parse_dtmf_info(body: bytes) -> DtmfDigit | None:
    """The digit in an ``application/dtmf`` body (the digit alone), or ``None``."""
    digit = _normalize_signal(body.decode("utf-8", errors="replace"))
    if digit is None:
        return None
    return DtmfDigit(digit, DEFAULT_INFO_DURATION_MS, SOURCE_INFO)
