"""RTCP (RFC 3550 §6), sans I/O: reception statistics, and SR/RR/SDES/BYE packets.

Every RTCP packet starts with the same 4 bytes::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   |V=2|P|   RC    |      PT       |   length (32-bit words - 1)   |

A compound packet is several of these back to back (build them separately and
concatenate). ``ReceptionStats`` follows RFC 3550 appendix A.1 (sequence
tracking), A.3 (loss) and A.8 (jitter) for one remote source; time is a parameter.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

RTCP_VERSION = 2
PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203

SDES_CNAME = 1

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)

_HEADER = struct.Struct("!BBH")  # V/P/count, packet type, length in words - 1
_SENDER_INFO = struct.Struct("!IIIIII")  # SSRC, NTP msw, NTP lsw, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction+lost, ext seq, jitter, LSR, DLSR
_SSRC = struct.Struct("!I")
_MAX_COUNT = 31  # 5-bit count field

_SEQ_MOD = 1 << 16
_MAX_DROPOUT = 3000  # A.1: jumps ahead up to this are losses, not a restart
_MAX_MISORDER = 100  # A.1: this far behind is a late packet, not a restart

_LOST_MAX = 0x7FFFFF  # cumulative lost is 24-bit signed
_LOST_MIN = -0x800000


class RtcpError(ValueError):
    """Data that is not a well-formed (compound) RTCP packet."""


# --- NTP time -------------------------------------------------------------------------


def unix_to_ntp(unix_s: float) -> int:
    """Unix seconds as a 64-bit NTP timestamp (32.32 fixed point since 1900)."""
    # Whole and fractional seconds apart: a double cannot hold all 64 bits at once.
    seconds = math.floor(unix_s)
    fraction = round((unix_s - seconds) * (1 << 32))
    return (((seconds + NTP_EPOCH_OFFSET) << 32) + fraction) & 0xFFFFFFFFFFFFFFFF


def ntp_to_unix(ntp: int) -> float:
    """A 64-bit NTP timestamp as Unix seconds."""
    return ntp / (1 << 32) - NTP_EPOCH_OFFSET


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field of a report block."""
    return (ntp >> 16) & 0xFFFFFFFF


# --- reception statistics -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int  # the source this block reports on
    fraction_lost: int  # since the previous report, 8-bit fixed point (x/256)
    cumulative_lost: int  # 24-bit signed: duplicates can make it negative
    highest_sequence: int  # extended: cycles << 16 | highest sequence number
    jitter: int  # timestamp units
    lsr: int  # middle 32 bits of the last SR's NTP timestamp, 0 if none
    dlsr: int  # delay since that SR in 1/65536 s, 0 if none


class ReceptionStats:
    """Sequence, loss and jitter bookkeeping for one remote SSRC (RFC 3550 A.1/A.3/A.8).

    Probation is simplified: the first packet initializes the source. A jump of
    more than ``_MAX_DROPOUT`` ahead is discarded unless the next packet follows
    it, in which case the sender is taken to have restarted (A.1's ``bad_seq``).
    """

    def __init__(self) -> None:
        self.clock_rate = 8000  # of the latest update; for converting jitter to time
        self._started = False
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0  # sequence wraps, times 2**16
        self._bad_seq = _SEQ_MOD + 1  # no candidate restart
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._last_arrival = 0.0  # seconds
        self._last_timestamp = 0
        self._jitter = 0.0  # timestamp units

    def update(
        self, sequence: int, rtp_timestamp: int, arrival_s: float, clock_rate: int = 8000
    ) -> bool:
        """Account for one packet; ``False`` when it was discarded as a sequence jump."""
        seq = sequence & 0xFFFF
        self.clock_rate = clock_rate
        if not self._started:
            self._start(seq)
        else:
            delta = (seq - self._max_seq) & 0xFFFF
            if delta < _MAX_DROPOUT:
                if seq < self._max_seq:
                    self._cycles += _SEQ_MOD  # in order, with a small gap, and wrapped
                self._max_seq = seq
            elif delta <= _SEQ_MOD - _MAX_MISORDER:
                if seq != self._bad_seq:
                    self._bad_seq = (seq + 1) & 0xFFFF
                    return False
                self._start(seq)  # two in a row after a big jump: the sender restarted
            # else: a duplicate or a late packet; counted, max_seq unchanged
        self.received += 1
        self._update_jitter(rtp_timestamp & 0xFFFFFFFF, arrival_s, clock_rate)
        return True

    @property
    def extended_highest_sequence(self) -> int:
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        return self.extended_highest_sequence - self._base_seq + 1 if self._started else 0

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received; negative when duplicates arrived. Not clamped."""
        return self.expected - self.received

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate in timestamp units."""
        return self._jitter

    def report_block(
        self, ssrc: int, now_s: float, last_sr: tuple[int, float] | None
    ) -> ReportBlock:
        """The report block for this source; starts a new fraction-lost interval.

        ``last_sr`` is the NTP timestamp of the latest SR from ``ssrc`` and when it
        arrived (on the same clock as ``now_s``), or ``None`` if none came yet.
        """
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lsr = dlsr = 0
        if last_sr is not None:
            ntp, received_at = last_sr
            lsr = ntp_middle32(ntp)
            dlsr = min(0xFFFFFFFF, max(0, int((now_s - received_at) * 65536)))
        return ReportBlock(
            ssrc=ssrc & 0xFFFFFFFF,
            fraction_lost=fraction,
            cumulative_lost=max(_LOST_MIN, min(_LOST_MAX, self.cumulative_lost)),
            highest_sequence=self.extended_highest_sequence & 0xFFFFFFFF,
            jitter=min(0xFFFFFFFF, int(self._jitter)),
            lsr=lsr,
            dlsr=dlsr,
        )

    def _start(self, seq: int) -> None:
        self._started = True
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = _SEQ_MOD + 1
        self._cycles = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0

    def _update_jitter(self, timestamp: int, arrival_s: float, clock_rate: int) -> None:
        if self.received > 1:
            # D(i-1, i) from differences, so a timestamp wrap is just a small step.
            ts_delta = (timestamp - self._last_timestamp) & 0xFFFFFFFF
            if ts_delta >= 0x80000000:
                ts_delta -= 1 << 32
            d = (arrival_s - self._last_arrival) * clock_rate - ts_delta
            self._jitter += (abs(d) - self._jitter) / 16
        self._last_arrival = arrival_s
        self._last_timestamp = timestamp


def loss_and_jitter_ms(stats: ReceptionStats) -> tuple[float, float]:
    """Cumulative loss fraction (0..1) and jitter in ms; does not touch report intervals."""
    expected = stats.expected
    loss = max(0, stats.cumulative_lost) / expected if expected > 0 else 0.0
    return loss, stats.jitter * 1000 / stats.clock_rate


# --- packets --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    blocks: tuple[ReportBlock, ...] = ()

    @property
    def ntp_time(self) -> float:
        """The NTP timestamp as Unix seconds."""
        return ntp_to_unix(self.ntp_timestamp)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    blocks: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SdesChunk:
    ssrc: int
    items: tuple[tuple[int, str], ...]  # (item type, text)

    @property
    def cname(self) -> str | None:
        return next((text for kind, text in self.items if kind == SDES_CNAME), None)


@dataclass(frozen=True, slots=True)
class Sdes:
    chunks: tuple[SdesChunk, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A packet type this module does not decode (APP, feedback, XR...)."""

    packet_type: int
    count: int  # the 5-bit field after V and P
    body: bytes  # after the 4-byte header, padding removed


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | Unknown


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    if not 0 <= count <= _MAX_COUNT:
        raise ValueError(f"at most {_MAX_COUNT} report blocks/sources/chunks, got {count}")
    body += b"\x00" * (-len(body) % 4)
    words = len(body) // 4  # header word included, minus one
    if words > 0xFFFF:
        raise ValueError("RTCP packet too long")
    return _HEADER.pack((RTCP_VERSION << 6) | count, packet_type, words) + body


def _pack_block(block: ReportBlock) -> bytes:
    lost = max(_LOST_MIN, min(_LOST_MAX, block.cumulative_lost)) & 0xFFFFFF
    return _BLOCK.pack(
        block.ssrc & 0xFFFFFFFF,
        (block.fraction_lost & 0xFF) << 24 | lost,
        block.highest_sequence & 0xFFFFFFFF,
        block.jitter & 0xFFFFFFFF,
        block.lsr & 0xFFFFFFFF,
        block.dlsr & 0xFFFFFFFF,
    )


def build_sender_report(
    ssrc: int,
    ntp_time: float,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    blocks: list[ReportBlock],
) -> bytes:
    """An SR (PT 200); ``ntp_time`` is Unix seconds, converted to NTP here."""
    ntp = unix_to_ntp(ntp_time)
    info = _SENDER_INFO.pack(
        ssrc & 0xFFFFFFFF,
        ntp >> 32,
        ntp & 0xFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,  # both counts wrap, per RFC 3550 §6.4.1
    )
    return _packet(PT_SR, len(blocks), info + b"".join(_pack_block(b) for b in blocks))


def build_receiver_report(ssrc: int, blocks: list[ReportBlock]) -> bytes:
    """An RR (PT 201); with no blocks it is the empty RR that starts a compound."""
    body = _SSRC.pack(ssrc & 0xFFFFFFFF) + b"".join(_pack_block(b) for b in blocks)
    return _packet(PT_RR, len(blocks), body)


def build_sdes(ssrc: int, cname: str) -> bytes:
    """An SDES (PT 202) with one chunk holding the CNAME (required in every compound)."""
    text = cname.encode()
    if len(text) > 255:
        raise ValueError(f"CNAME is {len(text)} bytes, at most 255 fit")
    # Item list ends with a zero byte, then the chunk pads to 32 bits (_packet does it).
    chunk = _SSRC.pack(ssrc & 0xFFFFFFFF) + bytes([SDES_CNAME, len(text)]) + text + b"\x00"
    return _packet(PT_SDES, 1, chunk)


def build_bye(ssrc: int, reason: str | None = None) -> bytes:
    """A BYE (PT 203) for one source; the reason is cut to 255 bytes."""
    body = _SSRC.pack(ssrc & 0xFFFFFFFF)
    if reason is not None:
        text = reason.encode()[:255].decode(errors="ignore").encode()  # whole characters
        body += bytes([len(text)]) + text
    return _packet(PT_BYE, 1, body)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Every packet in a compound RTCP packet; ``RtcpError`` if any is malformed."""
    if not data:
        raise RtcpError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise RtcpError(f"{len(data) - offset} stray bytes after the last RTCP packet")
        first, packet_type, words = _HEADER.unpack_from(data, offset)
        if first >> 6 != RTCP_VERSION:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 * (words + 1)
        if end > len(data):
            raise RtcpError(f"RTCP length {4 * (words + 1)} runs past the {len(data)} bytes")
        body = bytes(data[offset + _HEADER.size : end])
        if first & 0x20:
            padding = body[-1] if body else 0
            if padding == 0 or padding > len(body):
                raise RtcpError(f"bad RTCP padding count {padding}")
            body = body[:-padding]
        packets.append(_parse_one(packet_type, first & 0x1F, body))
        offset = end
    return packets


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == PT_SR:
        if len(body) < _SENDER_INFO.size + count * _BLOCK.size:
            raise RtcpError(f"SR with {count} blocks does not fit {len(body)} bytes")
        ssrc, msw, lsw, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
        blocks = _parse_blocks(body, _SENDER_INFO.size, count)
        return SenderReport(ssrc, msw << 32 | lsw, rtp_ts, packets, octets, blocks)
    if packet_type == PT_RR:
        if len(body) < _SSRC.size + count * _BLOCK.size:
            raise RtcpError(f"RR with {count} blocks does not fit {len(body)} bytes")
        (ssrc,) = _SSRC.unpack_from(body)
        return ReceiverReport(ssrc, _parse_blocks(body, _SSRC.size, count))
    if packet_type == PT_SDES:
        return _parse_sdes(body, count)
    if packet_type == PT_BYE:
        return _parse_bye(body, count)
    return Unknown(packet_type, count, body)


def _parse_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for i in range(count):
        ssrc, lost_word, seq, jitter, lsr, dlsr = _BLOCK.unpack_from(body, offset + i * 24)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24  # sign-extend the 24-bit field
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, seq, jitter, lsr, dlsr))
    return tuple(blocks)


def _parse_sdes(body: bytes, count: int) -> Sdes:
    chunks = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise RtcpError("SDES chunk runs past the packet")
        (ssrc,) = _SSRC.unpack_from(body, offset)
        offset += 4
        items: list[tuple[int, str]] = []
        while True:
            if offset >= len(body):
                raise RtcpError("SDES item list not terminated")
            kind = body[offset]
            if kind == 0:
                offset += 1
                offset += -offset % 4  # null octets up to the next 32-bit boundary
                break
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtcpError("SDES item runs past the packet")
            size = body[offset + 1]
            text = body[offset + 2 : offset + 2 + size].decode(errors="replace")
            items.append((kind, text))
            offset += 2 + size
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return Sdes(tuple(chunks))


def _parse_bye(body: bytes, count: int) -> Bye:
    end = 4 * count
    if end > len(body):
        raise RtcpError(f"BYE with {count} sources does not fit {len(body)} bytes")
    ssrcs = struct.unpack_from(f"!{count}I", body)
    reason = None
    if end < len(body):
        size = body[end]
        if end + 1 + size > len(body):
            raise RtcpError("BYE reason runs past the packet")
        reason = body[end + 1 : end + 1 + size].decode(errors="replace")
    return Bye(tuple(ssrcs), reason)


class RtcpSession:
    """One RTP session's RTCP, sans-I/O: what we hear, what the peer says it hears.

    ``on_rtp`` for every RTP packet received, ``on_rtcp`` for every RTCP datagram,
    ``compound`` when a report is due (an SR while we send, with one report block
    for the peer's stream, and our SDES CNAME, as RFC 3550 §6.1 wants every compound
    packet to carry). Times: ``now`` on one monotonic clock, ``wall`` Unix seconds.
    """

    def __init__(self, ssrc: int, cname: str) -> None:
        self.ssrc = ssrc & 0xFFFFFFFF
        self.cname = cname
        self.reception = ReceptionStats()
        self.remote_ssrc: int | None = None
        self.remote_view: ReportBlock | None = None  # the peer's report on our stream
        self.reports_received = 0
        self.errors = 0
        self._last_sr: tuple[int, float] | None = None  # (NTP of the peer's SR, arrival)

    def on_rtp(self, ssrc: int, sequence: int, timestamp: int, now: float) -> None:
        if ssrc != self.remote_ssrc:
            self.remote_ssrc = ssrc
            self.reception = ReceptionStats()  # a new source: its own numbering
        self.reception.update(sequence, timestamp, now)

    def on_rtcp(self, data: bytes, now: float) -> None:
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self.errors += 1
            return
        for packet in packets:
            if isinstance(packet, SenderReport):
                self._last_sr = (packet.ntp_timestamp, now)
            if isinstance(packet, SenderReport | ReceiverReport):
                self.reports_received += 1
                for block in packet.blocks:
                    if block.ssrc == self.ssrc:
                        self.remote_view = block

    def compound(
        self, now: float, wall: float, rtp_timestamp: int, packets_sent: int, octets_sent: int
    ) -> bytes:
        blocks = []
        if self.remote_ssrc is not None and self.reception.received:
            blocks.append(self.reception.report_block(self.remote_ssrc, now, self._last_sr))
        if packets_sent:
            report = build_sender_report(
                self.ssrc, wall, rtp_timestamp, packets_sent, octets_sent, blocks
            )
        else:
            report = build_receiver_report(self.ssrc, blocks)
        return report + build_sdes(self.ssrc, self.cname)

    def bye(self, reason: str | None = None) -> bytes:
        return build_receiver_report(self.ssrc, []) + build_bye(self.ssrc, reason)

    def summary(self) -> dict[str, float | int | None]:
        """Loss and jitter both ways, for the call record and metrics."""
        loss, jitter_ms = loss_and_jitter_ms(self.reception)
        remote = self.remote_view
        return {
            "rx_loss_pct": round(100 * loss, 2),
            "rx_jitter_ms": round(jitter_ms, 2),
            "peer_loss_pct": round(100 * remote.fraction_lost / 256, 2) if remote else None,
            "peer_jitter_ms": round(1000 * remote.jitter / 8000, 2) if remote else None,
            "rtcp_received": self.reports_received,
        }
