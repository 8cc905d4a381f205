"""DTMF: RFC 4733 telephone-events (receive and send) and SIP INFO bodies."""

from __future__ import annotations

import struct

import pytest

from media.dtmf import (
    DtmfDigit,
    DtmfReceiver,
    DtmfSender,
    OutgoingEvent,
    TelephoneEvent,
    parse_dtmf_info,
    parse_dtmf_relay,
    parse_telephone_event,
)
from media.rtp import parse_rtp


def event(code: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    """A telephone-event payload built by hand, independent of the module."""
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def feed_event(
    receiver: DtmfReceiver, ts: int, code: int, total: int, start: float, step: int = 160
) -> list[DtmfDigit]:
    """A complete event as a phone sends it: updates every 20 ms, then 3 end packets."""
    out: list[DtmfDigit] = []
    now = start
    for duration in range(step, total, step):
        out += receiver.feed(ts, event(code, duration), now)
        now += 0.02
    for _ in range(3):
        out += receiver.feed(ts, event(code, total, end=True), now)
        now += 0.02
    return out


# --- payload parsing ----------------------------------------------------------------


def test_parse_telephone_event_fields() -> None:
    parsed = parse_telephone_event(bytes.fromhex("0b 8a 0320"))
    assert parsed == TelephoneEvent(event=11, end=True, volume=10, duration=800)
    assert parsed is not None and parsed.digit == "#"
    assert parse_telephone_event(bytes([5, 0x3F, 0, 160])) == TelephoneEvent(5, False, 63, 160)


def test_parse_telephone_event_digits_and_others() -> None:
    digits = [parse_telephone_event(event(code, 0)) for code in range(16)]
    assert "".join(d.digit or "?" for d in digits if d is not None) == "0123456789*#ABCD"
    flash = parse_telephone_event(event(16, 0))
    assert flash is not None and flash.digit is None


def test_parse_telephone_event_too_short() -> None:
    assert parse_telephone_event(b"") is None
    assert parse_telephone_event(b"\x01\x8a\x00") is None
    # Trailing bytes (e.g. a second event) do not prevent reading the first.
    assert parse_telephone_event(event(1, 80) + b"\x00\x00") == TelephoneEvent(1, False, 10, 80)


# --- receiving ----------------------------------------------------------------------


def test_one_event_reported_once_on_first_end_packet() -> None:
    receiver = DtmfReceiver()
    ts = 48_000
    # Start (the marker packet), updates, then the end packet three times.
    assert receiver.feed(ts, event(5, 160), 10.00) == []
    assert receiver.feed(ts, event(5, 320), 10.02) == []
    assert receiver.feed(ts, event(5, 480), 10.04) == []
    assert receiver.feed(ts, event(5, 640), 10.06) == []
    assert receiver.feed(ts, event(5, 800, end=True), 10.08) == [DtmfDigit("5", 100, "rfc4733")]
    assert receiver.feed(ts, event(5, 800, end=True), 10.10) == []
    assert receiver.feed(ts, event(5, 800, end=True), 10.12) == []
    assert not receiver.pending
    assert receiver.tick(20.0) == []


def test_two_digits_back_to_back() -> None:
    receiver = DtmfReceiver()
    first = feed_event(receiver, 1000, 1, 800, start=0.0)
    second = feed_event(receiver, 1000 + 1600, 12, 1280, start=0.2)
    assert first == [DtmfDigit("1", 100, "rfc4733")]
    assert second == [DtmfDigit("A", 160, "rfc4733")]


def test_same_digit_twice_is_two_events() -> None:
    receiver = DtmfReceiver()
    digits = feed_event(receiver, 0, 9, 800, 0.0) + feed_event(receiver, 1600, 9, 800, 0.2)
    assert [d.digit for d in digits] == ["9", "9"]


def test_missing_end_reported_by_tick_after_timeout() -> None:
    receiver = DtmfReceiver()
    for i, duration in enumerate((160, 320, 480)):
        assert receiver.feed(7, event(3, duration), 1.0 + i * 0.02) == []
    last = 1.04
    assert receiver.pending
    assert receiver.tick(last + 0.2) == []
    assert receiver.tick(last + 0.49) == []
    assert receiver.tick(last + 0.5) == [DtmfDigit("3", 60, "rfc4733")]
    assert receiver.tick(last + 5.0) == []
    # The lost end packets turning up late do not report the digit again.
    assert receiver.feed(7, event(3, 800, end=True), last + 0.6) == []


def test_new_timestamp_reports_unfinished_event_first() -> None:
    receiver = DtmfReceiver()
    receiver.feed(100, event(2, 160), 0.0)
    receiver.feed(100, event(2, 320), 0.02)
    out = receiver.feed(2000, event(4, 800, end=True), 0.2)
    assert out == [DtmfDigit("2", 40, "rfc4733"), DtmfDigit("4", 100, "rfc4733")]
    # A late packet from the first event is not a new digit.
    assert receiver.feed(100, event(2, 480), 0.21) == []
    assert receiver.tick(10.0) == []


def test_reordered_update_does_not_shrink_duration() -> None:
    receiver = DtmfReceiver()
    receiver.feed(5, event(0, 320), 0.0)
    receiver.feed(5, event(0, 160), 0.01)
    assert receiver.tick(1.0) == [DtmfDigit("0", 40, "rfc4733")]


def test_only_end_packets_received() -> None:
    receiver = DtmfReceiver()
    assert receiver.feed(9, event(10, 640, end=True), 0.0) == [DtmfDigit("*", 80, "rfc4733")]


def test_timestamp_wrap_between_events() -> None:
    receiver = DtmfReceiver()
    first = feed_event(receiver, 0xFFFFFF00, 6, 800, 0.0)
    second = feed_event(receiver, 0x00000400, 7, 800, 0.2)
    assert [d.digit for d in first + second] == ["6", "7"]


def test_old_timestamp_after_long_silence_is_a_new_event() -> None:
    # A sender restarting its timestamps (new stream) must not be ignored forever.
    receiver = DtmfReceiver()
    feed_event(receiver, 50_000, 1, 800, 0.0)
    assert feed_event(receiver, 10, 2, 800, 30.0) == [DtmfDigit("2", 100, "rfc4733")]


def test_restarted_timestamps_heard_after_forget_window_despite_traffic() -> None:
    receiver = DtmfReceiver(forget_s=2.0)
    feed_event(receiver, 50_000, 1, 800, 0.0)  # reported at 0.08
    # The sender restarts at a lower timestamp and keeps sending updates.
    digits: list[DtmfDigit] = []
    for i in range(150):
        digits += receiver.feed(10, event(2, min(160 * (i + 1), 0xFFFF)), 0.2 + 0.02 * i)
    assert digits == [] and receiver.pending  # ignored until 2 s after the report
    assert receiver.feed(10, event(2, 0xFFFF, end=True), 3.2) == [DtmfDigit("2", 8192, "rfc4733")]


def test_ignores_short_payloads_and_non_digit_events() -> None:
    receiver = DtmfReceiver()
    assert receiver.feed(1, b"\x01", 0.0) == []
    assert receiver.feed(1, event(16, 800, end=True), 0.0) == []
    assert not receiver.pending


def test_clock_rate_scales_duration() -> None:
    receiver = DtmfReceiver(clock_rate=16000)
    assert receiver.feed(1, event(8, 1600, end=True), 0.0) == [DtmfDigit("8", 100, "rfc4733")]


# --- sending ------------------------------------------------------------------------


def test_sender_single_digit_packets() -> None:
    packets = DtmfSender(101).events("7", start_timestamp=1000, duration_ms=100, packet_ms=20)
    assert [p.send_offset_ms for p in packets] == [0, 20, 40, 60, 80, 100, 120]
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp for p in packets} == {1000}
    parsed = [parse_telephone_event(p.payload) for p in packets]
    assert [e.duration for e in parsed if e] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in parsed if e] == [False] * 4 + [True] * 3
    assert {(e.event, e.volume) for e in parsed if e} == {(7, 10)}


def test_sender_duration_not_a_multiple_of_packet() -> None:
    packets = DtmfSender(101).events("1", 0, duration_ms=50, packet_ms=20)
    parsed = [parse_telephone_event(p.payload) for p in packets]
    assert [(e.duration, e.end) for e in parsed if e] == [
        (160, False),
        (320, False),
        (400, True),
        (400, True),
        (400, True),
    ]


def test_sender_digits_in_order_with_gap_and_advancing_timestamps() -> None:
    packets = DtmfSender(96, volume=7).events("12#", start_timestamp=0xFFFFFF00, gap_ms=100)
    starts = [p for p in packets if p.marker]
    assert len(packets) == 3 * 7 and len(starts) == 3
    # 100 ms tone + 100 ms gap between starts: 200 ms = 1600 units, mod 2**32.
    assert [p.send_offset_ms for p in starts] == [0, 200, 400]
    assert [p.timestamp for p in starts] == [0xFFFFFF00, 1600 - 0x100, 3200 - 0x100]
    codes = [e.event for p in packets if (e := parse_telephone_event(p.payload))]
    assert codes == [1] * 7 + [2] * 7 + [11] * 7
    offsets = [p.send_offset_ms for p in packets]
    assert offsets == sorted(offsets)
    volumes = {e.volume for p in packets if (e := parse_telephone_event(p.payload))}
    assert volumes == {7}


def test_sender_short_gap_never_overlaps_end_retransmissions() -> None:
    packets = DtmfSender(101).events("55", 0, duration_ms=100, packet_ms=20, gap_ms=0)
    offsets = [p.send_offset_ms for p in packets]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


def test_sender_output_round_trips_through_receiver() -> None:
    sender = DtmfSender(101)
    packets = sender.events("159*#0ABCD", start_timestamp=123_456, duration_ms=120)
    receiver = DtmfReceiver()
    got: list[DtmfDigit] = []
    for seq, out in enumerate(packets):
        rtp = parse_rtp(sender.to_rtp(out, 40_000 + seq, 0xABCDEF).pack())
        assert rtp is not None and rtp.payload_type == 101 and rtp.marker == out.marker
        got += receiver.feed(rtp.timestamp, rtp.payload, 50.0 + out.send_offset_ms / 1000)
    got += receiver.tick(1000.0)
    assert got == [DtmfDigit(d, 120, "rfc4733") for d in "159*#0ABCD"]


def test_sender_round_trip_when_all_end_packets_lost() -> None:
    packets = DtmfSender(101).events("42", 0, duration_ms=100)
    receiver = DtmfReceiver()
    got: list[DtmfDigit] = []
    for out in packets:
        parsed = parse_telephone_event(out.payload)
        if parsed is not None and not parsed.end:
            got += receiver.feed(out.timestamp, out.payload, out.send_offset_ms / 1000)
    got += receiver.tick(10.0)
    assert got == [DtmfDigit("4", 80, "rfc4733"), DtmfDigit("2", 80, "rfc4733")]


def test_sender_accepts_lowercase_letters() -> None:
    packets = DtmfSender(101).events("d", 0)
    first = parse_telephone_event(packets[0].payload)
    assert first is not None and first.digit == "D"


@pytest.mark.parametrize("digits, bad", [("12x", "'x'"), ("E", "'E'"), ("1 2", "' '")])
def test_sender_rejects_bad_digits(digits: str, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        DtmfSender(101).events(digits, 0)


def test_sender_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        DtmfSender(128)
    with pytest.raises(ValueError):
        DtmfSender(101, volume=64)
    sender = DtmfSender(101)
    with pytest.raises(ValueError):
        sender.events("1", 0, duration_ms=0)
    with pytest.raises(ValueError):
        sender.events("1", 0, duration_ms=9000)  # 72000 units: beyond the 16-bit field
    assert sender.events("", 0) == []


def test_outgoing_event_fields() -> None:
    out = DtmfSender(101).events("0", 0, duration_ms=20)[0]
    assert out == OutgoingEvent(event(0, 160, end=True), True, 0, 0)


# --- SIP INFO -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"Signal=5\r\nDuration=160\r\n", DtmfDigit("5", 160, "info")),
        (b"Signal=5\nDuration=160\n", DtmfDigit("5", 160, "info")),
        (b"signal=*\r\nduration=250", DtmfDigit("*", 250, "info")),
        (b"SIGNAL = # \r\nDURATION = 100\r\n", DtmfDigit("#", 100, "info")),
        (b"Signal=10\r\nDuration=200\r\n", DtmfDigit("*", 200, "info")),
        (b"Signal=11\r\nDuration=200\r\n", DtmfDigit("#", 200, "info")),
        (b"Signal=d\r\nDuration=90\r\n", DtmfDigit("D", 90, "info")),
        (b"Signal=0\r\n", DtmfDigit("0", 100, "info")),  # no Duration: the default
        (b"Signal=9\r\nDuration=abc\r\n", DtmfDigit("9", 100, "info")),
        (b"Duration=160\r\nSignal=B\r\n", DtmfDigit("B", 160, "info")),
    ],
)
def test_parse_dtmf_relay(body: bytes, expected: DtmfDigit) -> None:
    assert parse_dtmf_relay(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"Duration=160\r\n", b"Signal=\r\n", b"Signal=E\r\n", b"Signal=16\r\n", b"garbage"],
)
def test_parse_dtmf_relay_rejects(body: bytes) -> None:
    assert parse_dtmf_relay(body) is None


@pytest.mark.parametrize(
    "body, digit",
    [(b"5", "5"), (b"#\r\n", "#"), (b" *\n", "*"), (b"a", "A"), (b"11", "#")],
)
def test_parse_dtmf_info(body: bytes, digit: str) -> None:
    parsed = parse_dtmf_info(body)
    assert parsed is not None and parsed.digit == digit and parsed.source == "info"


@pytest.mark.parametrize("body", [b"", b"x", b"55x", b"Signal=5", b"\xff"])
def test_parse_dtmf_info_rejects(body: bytes) -> None:
    assert parse_dtmf_info(body) is None
