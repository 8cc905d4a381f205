"""RTP header pack/parse (RFC 3550 §5.1)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import RtpPacket, looks_like_rtp, pack_rtp, parse_rtp


def test_pack_layout() -> None:
    data = pack_rtp(0, 0x1234, 0xDEADBEEF, 0x01020304, b"\xff" * 160, marker=True)
    assert len(data) == 12 + 160
    assert data[:12] == bytes.fromhex("80 80 1234 deadbeef 01020304")
    assert pack_rtp(8, 1, 2, 3)[:2] == b"\x80\x08"


def test_round_trip_simple() -> None:
    packet = RtpPacket(
        payload_type=8,
        sequence=65535,
        timestamp=4_000_000_000,
        ssrc=7,
        marker=False,
        payload=b"\xd5" * 160,
    )
    assert parse_rtp(packet.pack()) == packet


@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload=st.binary(max_size=400),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    ext=st.none()
    | st.tuples(
        st.integers(0, 0xFFFF), st.binary(max_size=12).map(lambda b: b + b"\x00" * (-len(b) % 4))
    ),
)
def test_round_trip_property(
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    marker: bool,
    payload: bytes,
    csrcs: tuple[int, ...],
    ext: tuple[int, bytes] | None,
) -> None:
    packet = RtpPacket(pt, seq, ts, ssrc, marker, payload, csrcs, ext)
    parsed = parse_rtp(packet.pack())
    if 72 <= pt <= 76:
        assert parsed is None  # reads as RTCP (RFC 5761)
    else:
        assert parsed == packet


def test_sequence_and_timestamp_wrap() -> None:
    parsed = parse_rtp(pack_rtp(0, 0x10000 + 5, 2**32 + 9, 2**32 + 1))
    assert parsed is not None
    assert (parsed.sequence, parsed.timestamp, parsed.ssrc) == (5, 9, 1)


def test_pack_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        pack_rtp(128, 0, 0, 0)
    with pytest.raises(ValueError):
        pack_rtp(0, 0, 0, 0, csrcs=tuple(range(16)))
    with pytest.raises(ValueError):
        pack_rtp(0, 0, 0, 0, extension=(1, b"abc"))


@pytest.mark.parametrize("version", [0, 1, 3])
def test_rejects_other_versions(version: int) -> None:
    data = bytearray(pack_rtp(0, 1, 2, 3, b"x" * 20))
    data[0] = (data[0] & 0x3F) | (version << 6)
    assert parse_rtp(bytes(data)) is None
    assert not looks_like_rtp(bytes(data))


def test_rejects_truncated() -> None:
    data = pack_rtp(0, 1, 2, 3)
    for n in range(12):
        assert parse_rtp(data[:n]) is None
    assert parse_rtp(data) is not None
    assert parse_rtp(b"") is None


def test_csrc_list() -> None:
    data = pack_rtp(0, 1, 2, 3, b"payload", csrcs=(10, 20, 30))
    assert data[0] == 0x83
    parsed = parse_rtp(data)
    assert parsed is not None
    assert parsed.csrcs == (10, 20, 30)
    assert parsed.payload == b"payload"
    # The CSRC count claims more identifiers than the packet holds.
    header = bytes([0x80 | 4]) + pack_rtp(0, 1, 2, 3)[1:12]
    assert parse_rtp(header + struct.pack("!3I", 1, 2, 3)) is None
    assert parse_rtp(header + struct.pack("!4I", 1, 2, 3, 4)) is not None


def test_header_extension() -> None:
    data = pack_rtp(0, 1, 2, 3, b"audio", extension=(0xBEDE, b"\x10\xff\x00\x00"))
    assert data[0] & 0x10
    parsed = parse_rtp(data)
    assert parsed is not None
    assert parsed.extension == (0xBEDE, b"\x10\xff\x00\x00")
    assert parsed.payload == b"audio"
    # An extension header whose length runs past the end of the packet.
    bad = pack_rtp(0, 1, 2, 3)[:12]
    bad = bytes([bad[0] | 0x10]) + bad[1:] + struct.pack("!HH", 0xBEDE, 3) + b"\x00" * 8
    assert parse_rtp(bad) is None
    # The X bit set but not even the 4-byte extension header is there.
    assert parse_rtp(bad[:14]) is None
    # Extension with CSRCs before it.
    both = pack_rtp(0, 1, 2, 3, b"p", csrcs=(9,), extension=(1, b""))
    parsed = parse_rtp(both)
    assert parsed is not None
    assert (parsed.csrcs, parsed.extension, parsed.payload) == ((9,), (1, b""), b"p")


def test_padding() -> None:
    base = pack_rtp(0, 1, 2, 3, b"abcd")
    padded = bytes([base[0] | 0x20]) + base[1:] + b"\x00\x00\x00\x04"
    parsed = parse_rtp(padded)
    assert parsed is not None and parsed.payload == b"abcd"
    # Padding count of zero, or longer than the payload plus itself.
    assert parse_rtp(bytes([base[0] | 0x20]) + base[1:] + b"\x00\x00\x00\x00") is None
    assert parse_rtp(bytes([base[0] | 0x20]) + base[1:] + b"\x00\x00\x00\x09") is None
    # Padding may eat the whole payload.
    only_padding = bytes([base[0] | 0x20]) + base[1:12] + b"\x00\x00\x00\x04"
    parsed = parse_rtp(only_padding)
    assert parsed is not None and parsed.payload == b""


def test_rtcp_is_not_rtp() -> None:
    sender_report = bytes([0x80, 200]) + b"\x00\x06" + b"\x00" * 24
    assert parse_rtp(sender_report) is None
    assert not looks_like_rtp(sender_report)
    assert looks_like_rtp(pack_rtp(0, 1, 2, 3))
    assert looks_like_rtp(pack_rtp(101, 1, 2, 3, marker=True))
