"""RTCP (RFC 3550 §6): packet build/parse and reception statistics (appendix A)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtcp import (
    NTP_EPOCH_OFFSET,
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpSession,
    Sdes,
    SdesChunk,
    SenderReport,
    Unknown,
    build_bye,
    build_receiver_report,
    build_sdes,
    build_sender_report,
    loss_and_jitter_ms,
    ntp_middle32,
    ntp_to_unix,
    parse_rtcp,
    unix_to_ntp,
)

BLOCK = ReportBlock(
    ssrc=0xCAFEBABE,
    fraction_lost=25,
    cumulative_lost=10,
    highest_sequence=0x0001_0005,
    jitter=40,
    lsr=0x12345678,
    dlsr=98304,
)


def stream(stats: ReceptionStats, seqs: list[int], start: float = 0.0) -> None:
    """Packets of 20 ms at 8 kHz arriving exactly on time (sequence n ↔ timestamp 160n)."""
    for seq in seqs:
        stats.update(seq & 0xFFFF, 160 * seq, start + 0.02 * seq)


# --- NTP ------------------------------------------------------------------------------


def test_ntp_conversion() -> None:
    assert unix_to_ntp(0.0) == NTP_EPOCH_OFFSET << 32
    assert unix_to_ntp(1.5) == (NTP_EPOCH_OFFSET + 1) << 32 | 0x8000_0000
    assert ntp_to_unix(unix_to_ntp(1_700_000_000.123456)) == pytest.approx(
        1_700_000_000.123456, abs=1e-6
    )
    assert ntp_middle32(0x0123_4567_89AB_CDEF) == 0x4567_89AB


# --- packets --------------------------------------------------------------------------


def test_sender_report_layout_and_round_trip() -> None:
    data = build_sender_report(0x11223344, 1.5, 0xDEADBEEF, 500, 80_000, [BLOCK])
    assert len(data) == 4 + 24 + 24
    assert data[:4] == bytes([0x81, 200, 0, 12])  # V=2, RC=1; 13 words - 1
    ntp = ((NTP_EPOCH_OFFSET + 1) << 32) | 0x8000_0000
    assert data[8:16] == struct.pack("!Q", ntp)
    [sr] = parse_rtcp(data)
    assert sr == SenderReport(0x11223344, ntp, 0xDEADBEEF, 500, 80_000, (BLOCK,))
    assert isinstance(sr, SenderReport) and sr.ntp_time == 1.5


def test_receiver_report_round_trip() -> None:
    other = ReportBlock(1, 0, -3, 7, 0, 0, 0)  # negative lost (duplicates): sign kept
    data = build_receiver_report(0xFEEDFACE, [BLOCK, other])
    assert data[:4] == bytes([0x82, 201, 0, 13])  # 56 bytes = 14 words
    assert parse_rtcp(data) == [ReceiverReport(0xFEEDFACE, (BLOCK, other))]
    assert parse_rtcp(build_receiver_report(5, [])) == [ReceiverReport(5, ())]


def test_report_block_wire_format() -> None:
    data = build_receiver_report(1, [ReportBlock(2, 0x80, -1, 3, 4, 5, 6)])
    assert data[8:32] == bytes.fromhex("00000002 80ffffff 00000003 00000004 00000005 00000006")


def test_sdes_cname_round_trip_and_padding() -> None:
    for cname in ("", "a", "ab", "abc", "user@host.example", "voxswitch-ü"):
        data = build_sdes(0xA1B2C3D4, cname)
        assert len(data) % 4 == 0
        [sdes] = parse_rtcp(data)
        assert sdes == Sdes((SdesChunk(0xA1B2C3D4, ((1, cname),)),))
        assert isinstance(sdes, Sdes) and sdes.chunks[0].cname == cname
    with pytest.raises(ValueError):
        build_sdes(1, "x" * 256)


def test_bye_round_trip() -> None:
    assert parse_rtcp(build_bye(42, None)) == [Bye((42,), None)]
    assert parse_rtcp(build_bye(42, "call ended")) == [Bye((42,), "call ended")]
    assert parse_rtcp(build_bye(42, "")) == [Bye((42,), "")]
    long_reason = parse_rtcp(build_bye(42, "é" * 200))
    assert long_reason == [Bye((42,), "é" * 127)]  # cut to 255 bytes on a character edge
    assert build_bye(42, None)[:4] == bytes([0x81, 203, 0, 1])


def test_compound_packet() -> None:
    compound = (
        build_sender_report(1, 1000.0, 8000, 10, 1600, [])
        + build_sdes(1, "agent@voxswitch")
        + build_bye(1, "bye")
    )
    packets = parse_rtcp(compound)
    assert [type(p) for p in packets] == [SenderReport, Sdes, Bye]
    rr_compound = build_receiver_report(2, [BLOCK]) + build_sdes(2, "x")
    assert [type(p) for p in parse_rtcp(rr_compound)] == [ReceiverReport, Sdes]


def test_unknown_packet_type_kept() -> None:
    app = bytes([0x80 | 3, 204, 0, 2]) + b"\x00\x00\x00\x07" + b"name"
    assert parse_rtcp(app + build_bye(1, None)) == [
        Unknown(204, 3, b"\x00\x00\x00\x07name"),
        Bye((1,), None),
    ]


def test_padding_is_removed() -> None:
    # An RR with 4 bytes of padding (P bit, last byte = count).
    data = bytes([0xA0, 201, 0, 2]) + struct.pack("!I", 9) + b"\x00\x00\x00\x04"
    assert parse_rtcp(data) == [ReceiverReport(9, ())]


def test_sdes_with_several_chunks_and_items() -> None:
    chunk1 = struct.pack("!I", 1) + bytes([1, 2]) + b"ab" + bytes([2, 1]) + b"N" + b"\x00" * 1
    chunk2 = struct.pack("!I", 2) + bytes([1, 1]) + b"c" + b"\x00"
    body = chunk1 + chunk2
    data = bytes([0x82, 202, 0, len(body) // 4]) + body
    [sdes] = parse_rtcp(data)
    assert sdes == Sdes((SdesChunk(1, ((1, "ab"), (2, "N"))), SdesChunk(2, ((1, "c"),))))
    assert isinstance(sdes, Sdes) and sdes.chunks[0].cname == "ab"
    assert SdesChunk(3, ((2, "N"),)).cname is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x81\xc8",  # shorter than a header
        bytes([0x40, 201, 0, 1]) + b"\x00" * 4,  # version 1
        bytes([0x80, 201, 0, 5]) + b"\x00" * 4,  # length past the data
        bytes([0x81, 201, 0, 1]) + b"\x00" * 4,  # RR claims a block it does not hold
        bytes([0x80, 200, 0, 1]) + b"\x00" * 4,  # SR without sender info
        bytes([0x82, 203, 0, 1]) + b"\x00" * 4,  # BYE claims two sources
        bytes([0x81, 203, 0, 2]) + b"\x00" * 4 + b"\x09abc",  # BYE reason too long
        bytes([0x81, 202, 0, 1]) + b"\x00" * 4,  # SDES chunk without item list end
        bytes([0x81, 202, 0, 2]) + b"\x00" * 4 + b"\x01\x09ab",  # SDES item too long
        bytes([0xA0, 201, 0, 1]) + b"\x00" * 4,  # padding count 0
        bytes([0xA0, 201, 0, 1]) + b"\x00\x00\x00\x09",  # padding longer than the body
        build_bye(1, None) + b"\x81",  # stray bytes after a good packet
        build_bye(1, None) + bytes([0xC1, 203, 0, 1]) + b"\x00" * 4,  # bad second packet
    ],
)
def test_malformed_raises_rtcp_error(data: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_rtcp(data)


def test_rtcp_error_is_value_error() -> None:
    assert issubclass(RtcpError, ValueError)


def _parses_or_rtcp_error(data: bytes) -> None:
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        return
    assert isinstance(packets, list) and packets


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_packets_or_rtcp_error(data: bytes) -> None:
    _parses_or_rtcp_error(data)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 0x3F),  # P and count
            st.sampled_from([200, 201, 202, 203, 204, 205, 0]),
            st.binary(max_size=120),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_well_framed_random_bodies_give_packets_or_rtcp_error(
    parts: list[tuple[int, int, bytes]],
) -> None:
    # Valid version and lengths, so the per-type parsers see the random bodies.
    data = b""
    for flags, packet_type, body in parts:
        body += b"\x00" * (-len(body) % 4)
        data += bytes([0x80 | flags, packet_type]) + struct.pack("!H", len(body) // 4) + body
    _parses_or_rtcp_error(data)


# --- reception statistics -------------------------------------------------------------


def test_in_order_stream_no_loss_no_jitter() -> None:
    stats = ReceptionStats()
    stream(stats, list(range(1000, 1100)))
    block = stats.report_block(7, now_s=10.0, last_sr=None)
    assert block == ReportBlock(7, 0, 0, 1099, 0, 0, 0)
    assert stats.expected == stats.received == 100
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    loss, jitter_ms = loss_and_jitter_ms(stats)
    assert loss == 0.0 and jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_ten_of_hundred_dropped() -> None:
    stats = ReceptionStats()
    dropped = set(range(5, 100, 10))
    stream(stats, [s for s in range(100) if s not in dropped])
    assert stats.cumulative_lost == 10
    block = stats.report_block(1, 2.0, None)
    assert block.cumulative_lost == 10
    assert block.fraction_lost == 25  # 10/100 in 8-bit fixed point: int(25.6)
    assert block.fraction_lost / 256 == pytest.approx(0.1, abs=1 / 256)
    assert loss_and_jitter_ms(stats)[0] == pytest.approx(0.1)
    # The next interval: 50 more, none lost; the fraction is per interval, the count is not.
    stream(stats, list(range(100, 150)))
    block = stats.report_block(1, 3.0, None)
    assert (block.fraction_lost, block.cumulative_lost) == (0, 10)
    # Then 20 expected, 15 received: 5/20 = 64/256.
    stream(stats, [s for s in range(150, 170) if s % 4 != 0])
    block = stats.report_block(1, 4.0, None)
    assert (block.fraction_lost, block.cumulative_lost) == (64, 15)
    # Nothing new at all: fraction 0, not a division by zero.
    assert stats.report_block(1, 5.0, None).fraction_lost == 0


def test_sequence_wrap() -> None:
    stats = ReceptionStats()
    seqs = list(range(65500, 65600))  # passes 65535 → 0
    stream(stats, seqs)
    block = stats.report_block(1, 1.0, None)
    assert block.highest_sequence == 65599 == (1 << 16) | 63
    assert block.cumulative_lost == 0 and block.fraction_lost == 0
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_wrap_with_loss_across_it() -> None:
    stats = ReceptionStats()
    stream(stats, [65530, 65531, 65534, 65536 + 1, 65536 + 2])
    assert stats.extended_highest_sequence == 65536 + 2
    assert stats.cumulative_lost == 9 - 5


def test_late_and_duplicate_packets() -> None:
    stats = ReceptionStats()
    stream(stats, [0, 1, 3, 2, 4])  # 2 late: not lost, highest stays 4
    assert stats.extended_highest_sequence == 4 and stats.cumulative_lost == 0
    stream(stats, [4])  # a duplicate: received exceeds expected
    assert stats.cumulative_lost == -1
    assert stats.report_block(1, 1.0, None).cumulative_lost == -1
    assert loss_and_jitter_ms(stats)[0] == 0.0


def test_big_jump_discarded_then_restart() -> None:
    stats = ReceptionStats()
    stream(stats, list(range(10)))
    assert stats.update(30_000, 0, 1.0) is False  # one stray packet: ignored
    assert stats.extended_highest_sequence == 9 and stats.received == 10
    assert stats.update(40_000, 0, 1.0) is False
    assert stats.update(40_001, 160, 1.02) is True  # follows on: the source restarted
    assert stats.extended_highest_sequence == 40_001
    # As in A.1, the packet that confirms the restart is the new source's first.
    assert stats.expected == stats.received == 1


def test_cumulative_lost_clamped_to_24_bits() -> None:
    stats = ReceptionStats()
    seq = 0
    for i in range(2900):  # each step loses 2998 packets: ~8.7 million in all
        stats.update(seq & 0xFFFF, 160 * i, 0.02 * i)
        seq += 2999
    assert stats.cumulative_lost > 0x7FFFFF
    block = stats.report_block(1, 100.0, None)
    assert block.cumulative_lost == 0x7FFFFF
    assert block.fraction_lost == 255  # 2998/2999 rounds down under 1.0
    [rr] = parse_rtcp(build_receiver_report(9, [block]))
    assert isinstance(rr, ReceiverReport) and rr.blocks == (block,)


def test_jitter_converges_to_rfc_value_with_alternating_delay() -> None:
    # Every other packet 5 ms late: |D| is 5 ms = 40 units on every step after the first.
    packets = 300
    arrivals = [0.02 * i + (0.005 if i % 2 else 0.0) for i in range(packets)]
    stats = ReceptionStats()
    for i, arrival in enumerate(arrivals):
        stats.update(i, 160 * i, arrival)
    # RFC 3550 §6.4.1 by hand: transit = arrival (units) - timestamp, J += (|D| - J)/16.
    expected = 0.0
    for i in range(1, packets):
        d = (arrivals[i] * 8000 - 160 * i) - (arrivals[i - 1] * 8000 - 160 * (i - 1))
        expected += (abs(d) - expected) / 16
    closed_form = 40 * (1 - (15 / 16) ** (packets - 1))
    assert expected == pytest.approx(closed_form, rel=1e-6)
    assert stats.jitter == pytest.approx(expected, rel=1e-6)
    assert stats.jitter == pytest.approx(40.0, abs=1e-3)  # converged
    assert stats.report_block(1, 10.0, None).jitter == 39  # truncated to an integer
    assert loss_and_jitter_ms(stats)[1] == pytest.approx(5.0, abs=1e-3)


def test_jitter_after_few_packets_matches_recurrence() -> None:
    stats = ReceptionStats()
    stats.update(0, 0, 0.0)
    stats.update(1, 160, 0.025)  # 5 ms late: D = 40 → J = 2.5
    assert stats.jitter == pytest.approx(2.5)
    stats.update(2, 320, 0.040)  # back on time: D = -40 → J = 2.5 + 37.5/16
    assert stats.jitter == pytest.approx(2.5 + 37.5 / 16)


def test_jitter_across_timestamp_wrap() -> None:
    stats = ReceptionStats()
    base = 0xFFFFFFFF - 800
    for i in range(20):
        stats.update(i, (base + 160 * i) & 0xFFFFFFFF, 0.02 * i)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_jitter_scales_with_clock_rate() -> None:
    stats = ReceptionStats()
    for i in range(300):
        # 16 kHz, 20 ms packets = 320 units; every other one 5 ms (80 units) late.
        stats.update(i, 320 * i, 0.02 * i + (0.005 if i % 2 else 0.0), clock_rate=16000)
    assert stats.jitter == pytest.approx(80.0, abs=1e-2)
    assert loss_and_jitter_ms(stats)[1] == pytest.approx(5.0, abs=1e-3)


def test_lsr_and_dlsr() -> None:
    sender_time = 1_700_000_000.25
    [sr] = parse_rtcp(build_sender_report(0xAA, sender_time, 0, 0, 0, []))
    assert isinstance(sr, SenderReport)
    seconds = 1_700_000_000 + NTP_EPOCH_OFFSET
    expected_lsr = ((seconds & 0xFFFF) << 16) | 0x4000  # .25 s = 0x4000/65536
    stats = ReceptionStats()
    stream(stats, list(range(10)))
    block = stats.report_block(0xAA, now_s=101.5, last_sr=(sr.ntp_timestamp, 100.0))
    assert block.lsr == expected_lsr
    assert block.dlsr == 98304  # 1.5 s in 1/65536 s

    # The sender's round-trip time from the RR it gets back (RFC 3550 §6.4.1):
    # the RR arrives 1.5 s of receiver hold plus 2 × 50 ms of network after the SR left.
    arrival = ntp_middle32(unix_to_ntp(sender_time + 1.5 + 0.1))
    rtt = ((arrival - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536
    assert rtt == pytest.approx(0.1, abs=1e-4)


def test_no_sr_yet_means_zero_lsr_dlsr() -> None:
    stats = ReceptionStats()
    stats.update(0, 0, 0.0)
    block = stats.report_block(1, 5.0, None)
    assert (block.lsr, block.dlsr) == (0, 0)


def test_empty_stats() -> None:
    stats = ReceptionStats()
    assert stats.report_block(1, 0.0, None) == ReportBlock(1, 0, 0, 0, 0, 0, 0)
    assert loss_and_jitter_ms(stats) == (0.0, 0.0)


# ---- RtcpSession ---------------------------------------------------------------------


def test_session_reports_what_it_heard_with_lsr_and_dlsr() -> None:
    session = RtcpSession(0x1111, "voxswitch@test")
    for seq in range(50):
        if seq != 7:
            session.on_rtp(0x2222, seq, seq * 160, 10.0 + seq * 0.02)
    peer_sr = build_sender_report(0x2222, 1_800_000_000.25, 999, 50, 8000, [])
    session.on_rtcp(peer_sr, 11.0)
    data = session.compound(12.5, 1_800_000_002.0, 4242, 75, 12000)
    sr, sdes = parse_rtcp(data)
    assert isinstance(sr, SenderReport) and isinstance(sdes, Sdes)
    assert (sr.ssrc, sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (0x1111, 4242, 75, 12000)
    (block,) = sr.blocks
    assert block.ssrc == 0x2222
    assert block.cumulative_lost == 1
    assert block.lsr == ntp_middle32(unix_to_ntp(1_800_000_000.25))
    assert block.dlsr == int(1.5 * 65536)
    assert sdes.chunks[0].cname == "voxswitch@test"


def test_session_without_sending_sends_a_receiver_report() -> None:
    session = RtcpSession(0x1111, "c")
    first = parse_rtcp(session.compound(1.0, 1e9, 0, 0, 0))[0]
    assert isinstance(first, ReceiverReport) and first.blocks == ()


def test_session_keeps_the_peers_view_of_our_stream_and_counts_garbage() -> None:
    session = RtcpSession(0x1111, "c")
    theirs = ReportBlock(0x1111, 64, 12, 500, 160, 0, 0)
    other = ReportBlock(0x9999, 200, 99, 1, 1, 0, 0)
    session.on_rtcp(build_receiver_report(0x2222, [other, theirs]), 1.0)
    session.on_rtcp(b"\x00garbage", 1.0)
    summary = session.summary()
    assert summary["peer_loss_pct"] == 25.0
    assert summary["peer_jitter_ms"] == 20.0
    assert summary["rtcp_received"] == 1
    assert session.errors == 1


def test_a_new_source_starts_its_own_statistics() -> None:
    session = RtcpSession(1, "c")
    for seq in range(10):
        session.on_rtp(0xA, seq, seq * 160, seq * 0.02)
    for seq in range(5000, 5010):
        session.on_rtp(0xB, seq, seq * 160, 1 + seq * 0.02)
    assert session.reception.received == 10
    assert session.reception.cumulative_lost == 0
