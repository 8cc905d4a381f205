"""RTP fixed header (RFC 3550 §5.1), sans I/O: bytes in, ``RtpPacket`` out, and back.

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   |V=2|P|X|  CC   |M|     PT      |       sequence number         |
   |                           timestamp                           |
   |           synchronization source (SSRC) identifier            |
   |            contributing source (CSRC) identifiers (CC × 32)   |
   | [extension: profile (16), length in words (16), data ...]     |
   | payload ...                          [padding, last byte = count]

``parse_rtp`` returns ``None`` for anything that is not a well-formed RTP packet:
version other than 2, shorter than its header, CSRC list or extension running past
the end, a padding count of 0 or longer than what is left, and RTCP multiplexed on
the port (RFC 5761: packet types 200-204 read as marker + payload type 72-76).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
HEADER_SIZE = 12

HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
_EXT_HEADER = struct.Struct("!HH")  # profile-defined, length in 32-bit words

_RTCP_PT = range(72, 77)  # RTCP SR..APP (200-204) with the top bit read as the marker


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    payload: bytes = b""
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None  # (profile-defined 16 bits, data)

    def pack(self) -> bytes:
        return pack_rtp(
            self.payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
            self.payload,
            marker=self.marker,
            csrcs=self.csrcs,
            extension=self.extension,
        )


def pack_rtp(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes = b"",
    *,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension: tuple[int, bytes] | None = None,
) -> bytes:
    """One RTP packet; sequence and timestamp wrap (mod 2**16, 2**32). No padding."""
    if not 0 <= payload_type <= 127:
        raise ValueError(f"RTP payload type must be 0..127, got {payload_type}")
    if len(csrcs) > 15:
        raise ValueError(f"at most 15 CSRCs, got {len(csrcs)}")
    first = (RTP_VERSION << 6) | len(csrcs)
    parts = []
    if extension is not None:
        first |= 0x10
        profile, data = extension
        if len(data) % 4:
            raise ValueError("RTP header extension data must be a multiple of 4 bytes")
        parts.append(_EXT_HEADER.pack(profile & 0xFFFF, len(data) // 4) + data)
    header = HEADER.pack(
        first,
        (0x80 if marker else 0) | payload_type,
        sequence & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    )
    if csrcs:
        header += struct.pack(f"!{len(csrcs)}I", *(c & 0xFFFFFFFF for c in csrcs))
    return b"".join([header, *parts, payload])


def parse_rtp(data: bytes) -> RtpPacket | None:
    """The packet in ``data``, or ``None`` when it is not valid RTP version 2."""
    size = len(data)
    if size < HEADER_SIZE:
        return None
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        return None
    payload_type = second & 0x7F
    if payload_type in _RTCP_PT:
        return None
    offset = HEADER_SIZE
    count = first & 0x0F
    csrcs: tuple[int, ...] = ()
    if count:
        end = offset + 4 * count
        if end > size:
            return None
        csrcs = struct.unpack_from(f"!{count}I", data, offset)
        offset = end
    extension: tuple[int, bytes] | None = None
    if first & 0x10:
        if offset + _EXT_HEADER.size > size:
            return None
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        start = offset + _EXT_HEADER.size
        end = start + 4 * words
        if end > size:
            return None
        extension = (profile, bytes(data[start:end]))
        offset = end
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or padding > size - offset:
            return None
        end -= padding
    return RtpPacket(
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=bool(second & 0x80),
        payload=bytes(data[offset:end]),
        csrcs=csrcs,
        extension=extension,
    )


def looks_like_rtp(data: bytes) -> bool:
    """A cheap check for the receive path: long enough, version 2, not muxed RTCP."""
    return (
        len(data) >= HEADER_SIZE
        and data[0] >> 6 == RTP_VERSION
        and (data[1] & 0x7F) not in _RTCP_PT
    )
