"""The RTP media plant: port pool, one UDP socket per call, one shared 20 ms ticker.

``MediaPlant.new_leg(call_id)`` binds an even port from the pool and the odd port
above it for RTCP, and returns the call actor's ``MediaLeg``: an ``RtpLeg`` here, or
with ``workers=N`` a ``RemoteLeg`` whose ``RtpLeg`` runs in one of N media worker
processes (``switch.mediaplant.worker``, the same code on another core). An ``RtpLeg``
reads its socket with ``loop.add_reader`` (no task per call) and, once playing, is
sent one G.711 frame per tick by the plant's single ticker: the greeting then
silence, or its conversation's playout.

The ticker runs on an absolute grid (``start + n × 20 ms`` with ``loop.call_at``),
so timer lateness does not accumulate; when a tick is a whole frame late or more
it skips to the next grid point instead of bursting, and the RTP timestamp jumps
by the skipped frames (the sequence number does not: nothing was lost).

Symmetric RTP: the first valid RTP packet received latches the leg's send target
to its source address (NAT traversal); until then, packets go to the SDP address.
A different source takes over only once the latched one has been quiet for
``RELATCH_AFTER_S``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from media.dtmf import DtmfSender, OutgoingEvent
from media.g711 import codec_name, encode, silence_byte
from media.recording import CallRecorder
from media.rtcp import RtcpSession
from media.rtp import HEADER, RTP_VERSION, looks_like_rtp, parse_rtp
from media.session import MediaEvent, MediaSession, VadConfig
from media.srtp import SrtpContext, SrtpError, SrtpKeys
from media.tones import PcmArray, greeting_pcm
from switch.mediaplant import MediaUnavailable
from switch.mediaplant.remote import MediaWorker, RemoteLeg

log = logging.getLogger("voxswitch.media")

FRAME_S = 0.020
SAMPLES_PER_FRAME = 160  # 20 ms at 8 kHz, one byte per sample in G.711
RELATCH_AFTER_S = 2.0
MAX_BIND_ATTEMPTS = 64  # per new leg, when other processes hold ports of our range
RECV_SIZE = 2048
LATENESS_WINDOW = 3000  # ticks: the last minute
RTCP_INTERVAL_S = 5.0  # RFC 3550's minimum: a call's bandwidth share would allow less

_RTP_FIRST_BYTE = RTP_VERSION << 6  # V=2, no padding, no extension, no CSRC
_SEQ_TS_SSRC = struct.Struct("!HII")


class RtpLeg:
    """One call's RTP session: a bound UDP socket, a send target, counters."""

    __slots__ = (
        "_bridge",
        "_closed",
        "_dtmf_base",
        "_dtmf_out",
        "_fd",
        "_frame_index",
        "_frames",
        "_held_session",
        "_last_rx",
        "_latched",
        "_latched_rx",
        "_marker",
        "_octets",
        "_on_event",
        "_payload_type",
        "_plant",
        "_play_started",
        "_playing",
        "_port",
        "_ready",
        "_received",
        "_remote",
        "_rtcp",
        "_rtcp_due",
        "_rtcp_fd",
        "_rtcp_sock",
        "_rtcp_target",
        "_send_errors",
        "_sent",
        "_seq",
        "_session",
        "_silence",
        "_sock",
        "_srtp",
        "_ssrc",
        "_telephone_event_pt",
        "_ts",
        "call_id",
        "codec",
    )

    def __init__(
        self,
        plant: MediaPlant,
        call_id: str,
        sock: socket.socket,
        port: int,
        rtcp_sock: socket.socket,
        ssrc: int | None = None,
    ) -> None:
        self._plant = plant
        self.call_id = call_id
        self._sock = sock
        self._fd = sock.fileno()
        self._port = port
        self._rtcp_sock = rtcp_sock
        self._rtcp_fd = rtcp_sock.fileno()
        self._rtcp_target: tuple[str, int] | None = None  # latched from the peer's RTCP
        self._rtcp_due = float("inf")
        self._octets = 0
        self.codec = ""
        self._payload_type = 0
        self._remote: tuple[str, int] | None = None
        self._latched: tuple[str, int] | None = None
        self._latched_rx = 0.0
        self._frames: list[bytes] = []
        self._silence = b""
        self._frame_index = 0
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._ssrc = random.getrandbits(32) if ssrc is None else ssrc
        self._rtcp = RtcpSession(self._ssrc, f"voxswitch@{plant.bind_host}")
        self._marker = 0x80  # on the first packet sent
        self._playing = False
        self._play_started: float | None = None
        self._last_rx: float | None = None
        self._sent = 0
        self._received = 0
        self._send_errors = 0
        self._closed = False
        self._telephone_event_pt: int | None = None
        self._session: MediaSession | None = None
        self._on_event: Callable[[MediaEvent, float], None] | None = None
        self._dtmf_out: deque[OutgoingEvent] = deque()
        self._dtmf_base: int | None = None
        self._ready: list[bytes] = []  # the packets of the coming slot, made a tick ahead
        self._bridge: int | None = None  # the local port of the leg we relay to and from
        self._held_session: MediaSession | None = None  # set aside while bridged
        self._srtp: SrtpContext | None = None  # SRTP: protects what we send, checks what we get

    # ---- MediaLeg ------------------------------------------------------------------

    @property
    def local_port(self) -> int:
        return self._port

    def connect(
        self,
        remote: tuple[str, int],
        payload_type: int,
        codec: str,
        telephone_event_pt: int | None = None,
        srtp: SrtpKeys | None = None,
    ) -> None:
        """Set (or, on a re-INVITE, change) the SDP address, payload type, codec and
        SRTP keys (None: plain RTP)."""
        if srtp is None:
            self._srtp = None
        elif self._srtp is None:
            self._srtp = SrtpContext(srtp)
        else:
            self._srtp = self._srtp.rekeyed(srtp)
        name = codec_name(codec)
        target = _ip_target(remote)
        if self._remote is not None and target != self._remote:
            self._latched = None  # a re-INVITE moved the peer: latch afresh
        self._remote = target
        self._ready.clear()  # made for the old codec or payload type
        self._payload_type = payload_type & 0x7F
        self.codec = name
        self._telephone_event_pt = telephone_event_pt
        self._silence = self._plant.silence_frame(name)
        if self._session is not None:
            self._session.renegotiated(name, self._payload_type, telephone_event_pt)
        else:
            self._frames = self._plant.greeting_frames(name)

    def start_session(
        self,
        on_event: Callable[[MediaEvent, float], None],
        vad: VadConfig | None = None,
        record: str | None = None,
    ) -> MediaSession:
        """From the fixed greeting to a conversation: decode, VAD, DTMF in; playout out.
        ``record``: the path of the call's stereo WAV."""
        recorder = open_recorder(record, self.call_id)
        session = MediaSession(
            codec=self.codec or "PCMU",
            payload_type=self._payload_type,
            telephone_event_pt=self._telephone_event_pt,
            vad=vad,
            recorder=recorder,
        )
        self._session = session
        self._on_event = on_event
        self._frames = []
        return session

    async def wait_closed(self) -> None:
        """Closed here means closed (its recording finished): nothing to wait for."""

    def send_dtmf(self, digits: str) -> None:
        """Queue RFC 4733 events; they replace audio frames while they last."""
        if self._telephone_event_pt is None:
            log.info(
                "call %s: no telephone-event negotiated; DTMF %r not sent", self.call_id, digits
            )
            return
        sender = DtmfSender(self._telephone_event_pt)
        self._dtmf_out.extend(sender.events(digits, start_timestamp=0))

    def play(self) -> None:
        """Start sending: the greeting, then silence, one packet per 20 ms tick."""
        if self._closed or self._playing:
            return
        self._playing = True
        self._play_started = self._plant.loop.time()
        # RFC 3550 §6.3.5: randomise the interval so reports of many calls spread out.
        self._rtcp_due = self._play_started + RTCP_INTERVAL_S * random.uniform(0.5, 1.5)
        self._plant.start_playing(self)

    def silence_s(self, now: float) -> float:
        """Seconds since the last RTP packet from the peer (or since play started)."""
        return silence_since(self._play_started, self._last_rx, now)

    @property
    def packets_sent(self) -> int:
        return self._sent

    @property
    def packets_received(self) -> int:
        return self._received

    def stats(self) -> dict[str, float | int | str | None]:
        """Loss and jitter both ways (RTCP), packets and send errors, for the record."""
        stats: dict[str, float | int | str | None] = {**self._rtcp.summary()}
        stats["send_errors"] = self._send_errors
        if self._srtp is not None:  # the record says the call was encrypted, and how
            stats["srtp"] = self._srtp.keys.suite
            stats["srtp_rejected"] = self._srtp.rejected
        return stats

    def close(self) -> None:
        if self._closed:
            return
        if self._playing:
            self._send_rtcp_data(self._rtcp.bye("call ended"))
        self._closed = True
        self._playing = False
        self._on_event = None  # the call actor's method: no cycle outlives the call
        if self._session is not None and self._session.recorder is not None:
            try:
                self._session.recorder.close()
            except OSError as exc:
                log.warning("call %s: recording not finished: %s", self.call_id, exc)
        self._plant.release(self)
        self._sock.close()
        self._rtcp_sock.close()

    # ---- more state, for stats and tests ----------------------------------------------

    @property
    def send_errors(self) -> int:
        return self._send_errors

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def target(self) -> tuple[str, int] | None:
        """Where the next packet goes: the latched source, else the SDP address."""
        return self._latched or self._remote

    @property
    def ssrc(self) -> int:
        return self._ssrc

    def rtp_state(self) -> dict[str, int | None]:
        return {"ssrc": self._ssrc, "sequence": self._seq, "timestamp": self._ts}

    # ---- the plant's side ---------------------------------------------------------------

    def send_ready(self) -> None:
        """Send what ``prepare_frame`` made for this slot (to where the peer is now)."""
        ready = self._ready
        if ready:
            target = self._latched or self._remote
            if target is not None:
                for packet in ready:
                    self._sendto(packet, target)
            ready.clear()

    def bridge(self, port: int | None) -> None:
        """Relay RTP to and from the leg on local ``port`` (a transfer we bridge
        ourselves): what our peer sends goes out of that leg as it came, and we stop
        making audio of our own. None ends the bridge.

        The session is set aside meanwhile, so a received packet takes the same
        no-session path as before a conversation starts (no extra test per packet)."""
        if port is not None and self._bridge is None:
            self._held_session, self._session = self._session, None
        elif port is None and self._bridge is not None:
            self._session, self._held_session = self._held_session, None
        self._bridge = port
        self._ready.clear()

    def relay(self, data: bytes) -> None:
        """A packet from the bridged leg's peer, to ours."""
        target = self._latched or self._remote
        if target is not None:
            self._sendto(data, target)

    def _relay_out(self, data: bytes) -> None:
        if self._bridge is not None:
            partner = self._plant.leg_on(self._bridge)
            if partner is not None:
                partner.relay(data)

    def prepare_frame(self, advance: int, now: float) -> None:
        """Make the packet(s) for the slot at ``now``; ``advance`` grid slots have passed
        since the last one."""
        if self._bridge is not None:
            return  # the bridged peer's packets are our audio now
        target = self._latched or self._remote
        session = self._session
        if target is None or (session is None and not self._frames):
            return  # not connected yet: nowhere to send, nothing to send
        if self._marker:
            first = self._marker
            self._marker = 0
        else:
            first = 0
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + SAMPLES_PER_FRAME * advance) & 0xFFFFFFFF
        if session is not None:
            payload, events = session.tick(now)
            if events and self._on_event is not None:
                for event in events:
                    self._on_event(event, now)
            if payload is None:
                payload = self._silence
        else:
            index = self._frame_index
            if index < len(self._frames):
                payload = self._frames[index]
                self._frame_index = index + 1
            else:
                payload = self._silence
        if self._dtmf_out and self._dtmf_due():
            return  # events replace audio while they last; between digits audio goes on
        header = HEADER.pack(
            _RTP_FIRST_BYTE, first | self._payload_type, self._seq, self._ts, self._ssrc
        )
        self._ready.append(header + payload)

    def _dtmf_due(self) -> bool:
        """Telephone-event packets whose time has come; False when none was due."""
        assert self._telephone_event_pt is not None
        if self._dtmf_base is None:
            self._dtmf_base = self._ts  # the events' timestamps count from here
        base = self._dtmf_base
        elapsed_ms = ((self._ts - base) & 0xFFFFFFFF) // 8
        queue = self._dtmf_out
        sent_any = False
        while queue and queue[0].send_offset_ms <= elapsed_ms:
            event = queue.popleft()
            if sent_any:
                self._seq = (self._seq + 1) & 0xFFFF
            sent_any = True
            header = HEADER.pack(
                _RTP_FIRST_BYTE,
                (0x80 if event.marker else 0) | self._telephone_event_pt,
                self._seq,
                (base + event.timestamp) & 0xFFFFFFFF,
                self._ssrc,
            )
            self._ready.append(header + event.payload)
        if not queue:
            self._dtmf_base = None
        return sent_any

    def _sendto(self, data: bytes, target: tuple[str, int]) -> None:
        size = len(data)
        try:
            if self._srtp is not None:
                data = self._srtp.protect(data)
            self._sock.sendto(data, target)
        except (OSError, SrtpError):
            self._send_errors += 1
        else:
            self._sent += 1
            self._octets += size - 12

    # ---- RTCP ------------------------------------------------------------------------

    def send_rtcp(self, now: float) -> None:
        """Our report (SR + the peer's reception block + CNAME); the next one in ~5 s."""
        self._rtcp_due = now + RTCP_INTERVAL_S * random.uniform(0.5, 1.5)
        data = self._rtcp.compound(now, time.time(), self._ts, self._sent, self._octets)
        self._send_rtcp_data(data)

    def _send_rtcp_data(self, data: bytes) -> None:
        target = self._rtcp_target
        if target is None:
            rtp = self._latched or self._remote
            if rtp is None:
                return
            target = (rtp[0], rtp[1] + 1)  # RFC 3550 §11: the next port up
        try:
            if self._srtp is not None:
                data = self._srtp.protect_rtcp(data)
            self._rtcp_sock.sendto(data, target)
        except (OSError, SrtpError):
            self._send_errors += 1

    def on_rtcp_readable(self) -> None:
        try:
            data, address = self._rtcp_sock.recvfrom(RECV_SIZE)
        except OSError:
            return
        if self._srtp is not None:
            plain = self._srtp.unprotect_rtcp(data)
            if plain is None:  # forged or replayed: it must not move where our reports go
                self._srtp_rejected(data, address)
                return
            data = plain
        self._rtcp_target = address if len(address) == 2 else (address[0], address[1])
        self._rtcp.on_rtcp(data, self._plant.loop.time())

    def _srtp_rejected(self, data: bytes, source: tuple[str, int]) -> None:
        """Say so once per call (a key mismatch shows at once; a stray packet, once)."""
        assert self._srtp is not None
        if self._srtp.rejected == 1:
            log.info("call %s: dropped a packet that failed SRTP checks (%d bytes from %s, "
                     "starting %s)", self.call_id, len(data), source, data[:8].hex())  # fmt: skip

    def on_readable(self) -> None:
        """One datagram per wake-up: the reader is level-triggered, so another queued
        datagram wakes us again, while draining until EAGAIN would cost a failed
        syscall and an exception on nearly every packet."""
        try:
            data, address = self._sock.recvfrom(RECV_SIZE)
        except OSError:  # EAGAIN, or an ICMP error reported on the socket
            return
        if not looks_like_rtp(data):
            return
        if self._srtp is not None:
            plain = self._srtp.unprotect(data)
            if plain is None:  # forged or replayed: dropped before it can move the latch
                self._srtp_rejected(data, address)
                return
            data = plain
        now = self._plant.loop.time()
        self._received += 1
        self._last_rx = now
        source = address if len(address) == 2 else (address[0], address[1])
        latched = self._latched
        if source == latched:
            self._latched_rx = now
        elif latched is None or now - self._latched_rx >= RELATCH_AFTER_S:
            if latched is not None:
                log.info("call %s: RTP source moved %s -> %s", self.call_id, latched, source)
            self._latched = source
            self._latched_rx = now
        session = self._session
        if data[0] == _RTP_FIRST_BYTE:  # no padding, extension or CSRCs: the usual case
            sequence, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
            self._rtcp.on_rtp(ssrc, sequence, timestamp, now)
            if session is None:
                self._relay_out(data)
                return
            events = session.receive(data[1] & 0x7F, sequence, timestamp, data[12:], now)
        else:
            packet = parse_rtp(data)
            if packet is None:
                return
            self._rtcp.on_rtp(packet.ssrc, packet.sequence, packet.timestamp, now)
            if session is None:
                self._relay_out(data)
                return
            events = session.receive(
                packet.payload_type, packet.sequence, packet.timestamp, packet.payload, now
            )
        if events and self._on_event is not None:
            for event in events:
                self._on_event(event, now)


def open_recorder(path: str | None, call_id: str) -> CallRecorder | None:
    """The call's recorder (None: not recorded, or the file cannot be opened: the call
    goes on unrecorded, and says so)."""
    if path is None:
        return None
    try:
        return CallRecorder(path)
    except OSError as exc:
        log.warning("call %s: cannot record to %s: %s", call_id, path, exc)
        return None


def silence_since(play_started: float | None, last_rx: float | None, now: float) -> float:
    """Seconds the peer has sent nothing: since its last packet, or since we started
    playing if it has sent none since (0 before that)."""
    if play_started is None:
        return 0.0
    since = play_started if last_rx is None or last_rx < play_started else last_rx
    return max(0.0, now - since)


class MediaPlant:
    """The node's RTP ports and the one ticker that paces every playing leg."""

    def __init__(
        self,
        bind_host: str,
        ports: tuple[int, int],
        greeting_file: str | None,
        *,
        workers: int = 0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"media workers: expected 0 or more, got {workers}")
        start, end = ports
        self._ports = ports
        self._greeting_file = greeting_file
        first = start + (start & 1)
        self.bind_host = bind_host
        self._family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        # Even ports whose odd neighbour (RTCP) is also in range.
        self._free: deque[int] = deque(range(first, end, 2))
        self.port_count = len(self._free)
        if not self._free:
            raise ValueError(f"RTP port range {start}-{end} holds no even/odd port pair")
        self._greeting: PcmArray = greeting_pcm(greeting_file)
        self._frames: dict[str, list[bytes]] = {}
        self._silence: dict[str, bytes] = {}
        self._loop = loop
        self._legs: dict[int, RtpLeg] = {}  # by port
        self._playing: dict[int, RtpLeg] = {}  # by port
        self._tick_handle: asyncio.Handle | None = None
        self._rtcp_handle: asyncio.TimerHandle | None = None
        self._grid_start = 0.0
        self._slot = 0  # the next grid slot to serve
        self._closed = False
        self._worker_count = workers
        self._workers: list[MediaWorker] = []  # started by start(), or by the first leg
        self._remote: dict[int, RemoteLeg] = {}  # by port, when workers run the legs
        self.worker_restarts = 0
        self.after_tick: Callable[[], None] | None = None
        self.ticks = 0
        self.late_ticks = 0  # ticks that skipped grid slots
        # Seconds the last packet of each recent tick left after its slot (a minute).
        self.lateness: deque[float] = deque(maxlen=LATENESS_WINDOW)
        self._lateness_taken = 0  # how many of them recent_lateness has already seen
        self._lateness_total = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def active_legs(self) -> int:
        return len(self._legs) + len(self._remote)

    @property
    def playing_legs(self) -> int:
        return len(self._playing) + sum(leg.playing for leg in self._remote.values())

    def recent_lateness(self) -> float:
        """p90 of the ticks' lateness (seconds) since the last call: the load monitor's
        view of the media, in-loop or in the workers."""
        fresh = min(self._lateness_total - self._lateness_taken, len(self.lateness))
        self._lateness_taken = self._lateness_total
        if fresh <= 0:
            return 0.0
        values = list(itertools.islice(reversed(self.lateness), fresh))
        values.sort()
        return values[int(0.9 * (len(values) - 1))]

    def lateness_ms(self, percentile: float) -> float:
        """Percentile of recent ticks' lateness (last packet sent vs its 20 ms slot)."""
        if not self.lateness:
            return 0.0
        return 1000.0 * float(np.percentile(np.fromiter(self.lateness, float), percentile))

    @property
    def free_ports(self) -> int:
        return len(self._free)

    # ---- legs ------------------------------------------------------------------------------

    def leg_on(self, port: int) -> RtpLeg | None:
        return self._legs.get(port)

    def new_leg(self, call_id: str, near: int | None = None) -> RtpLeg | RemoteLeg:
        """A leg with a bound port; ``MediaUnavailable`` when no port can be had.
        ``near``: the port of a leg this one will be bridged to (same worker)."""
        if self._closed:
            raise MediaUnavailable("media plant is closed")
        port, sock, rtcp_sock = self._bind_pair()
        if not self._worker_count:
            return self.adopt(call_id, sock, port, rtcp_sock)
        partner = self._remote.get(near) if near is not None else None
        if partner is not None:
            worker = partner.worker
        else:
            worker = min(self._start_workers(), key=lambda w: len(w.legs))
        leg = RemoteLeg(worker, call_id, port, sock, rtcp_sock, self._forget_remote)
        self._remote[port] = leg
        return leg

    def adopt(
        self,
        call_id: str,
        sock: socket.socket,
        port: int,
        rtcp_sock: socket.socket,
        ssrc: int | None = None,
    ) -> RtpLeg:
        """An ``RtpLeg`` on sockets bound elsewhere (a media worker's, from the node)."""
        sock.setblocking(False)
        rtcp_sock.setblocking(False)
        leg = RtpLeg(self, call_id, sock, port, rtcp_sock, ssrc)
        self._legs[port] = leg
        loop = self.loop
        loop.add_reader(leg._fd, leg.on_readable)
        loop.add_reader(leg._rtcp_fd, leg.on_rtcp_readable)
        return leg

    def _bind_pair(self) -> tuple[int, socket.socket, socket.socket]:
        attempts = min(len(self._free), MAX_BIND_ATTEMPTS)
        last_error: OSError | None = None
        for _ in range(attempts):
            port = self._free.popleft()
            try:
                sock = self._bind(port)
                try:
                    rtcp_sock = self._bind(port + 1)
                except OSError:
                    sock.close()
                    raise
            except OSError as exc:
                self._free.append(port)  # someone else holds it; maybe later
                last_error = exc
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    break
                continue
            return port, sock, rtcp_sock
        if last_error is None:
            raise MediaUnavailable(f"all {self.port_count} RTP ports are in use")
        raise MediaUnavailable(f"cannot bind an RTP port on {self.bind_host}: {last_error}")

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.bind_host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def release(self, leg: RtpLeg) -> None:
        """Called by ``RtpLeg.close``: stop its reader and ticks, return its port."""
        port = leg.local_port
        self._playing.pop(port, None)
        if self._legs.pop(port, None) is leg:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(leg._fd)
                self._loop.remove_reader(leg._rtcp_fd)
            self._free.append(port)
        if not self._playing:
            self._stop_ticker()

    def close(self) -> None:
        """Close every leg and stop the ticker and the workers. Idempotent."""
        self._closed = True
        for leg in list(self._legs.values()):
            leg.close()
        for remote in list(self._remote.values()):
            remote.close()
        self._stop_ticker()
        for worker in self._workers:
            worker.close()
        for worker in self._workers:
            worker.wait()
        self._workers = []

    # ---- media workers -----------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Start the media workers and wait for each one's hello (a worker still
        importing when its first call plays would send that call's first frames late)."""
        workers = self._start_workers()
        await asyncio.wait_for(asyncio.gather(*(w.ready for w in workers)), timeout)

    async def sync(self) -> None:
        """Bring the legs' counters up to date (worker legs report once a second)."""
        await asyncio.gather(*(w.sync() for w in self._workers if not w.channel.closed))

    @property
    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def _start_workers(self) -> list[MediaWorker]:
        while len(self._workers) < self._worker_count:
            self._workers.append(self._new_worker())
        return self._workers

    def _new_worker(self) -> MediaWorker:
        return MediaWorker(
            self.loop,
            self.bind_host,
            self._ports,
            self._greeting_file,
            self._on_worker_lateness,
            self._on_worker_exit,
            self._port_free,
        )

    def _on_worker_lateness(self, lateness: list[float], late_ticks: int) -> None:
        self.lateness.extend(lateness)
        self._lateness_total += len(lateness)
        self.late_ticks = sum(w.late_ticks for w in self._workers)

    def _on_worker_exit(self, dead: MediaWorker) -> None:
        """A worker died: a new one takes over its legs (the node holds their sockets)."""
        if self._closed or dead not in self._workers:
            return
        dead.wait(0.5)
        log.error("media worker %d exited (code %s)", dead.process.pid, dead.process.poll())
        worker = self._new_worker()
        self._workers[self._workers.index(dead)] = worker
        self.worker_restarts += 1
        for leg in list(dead.legs.values()):
            leg.moved_to(worker)
        log.warning("media worker %d took over %d calls", worker.process.pid, len(worker.legs))

    def _forget_remote(self, leg: RemoteLeg) -> None:
        if self._remote.get(leg.local_port) is leg:
            del self._remote[leg.local_port]

    def _port_free(self, port: int) -> None:
        """A worker closed its copy of a closed leg's sockets (or died): reuse the port."""
        if port not in self._remote:
            self._free.append(port)

    # ---- greeting ---------------------------------------------------------------------------

    def greeting_frames(self, codec: str) -> list[bytes]:
        """The greeting encoded once per codec, in 160-byte frames (shared by all legs)."""
        frames = self._frames.get(codec)
        if frames is None:
            pcm = self._greeting
            pad = -pcm.size % SAMPLES_PER_FRAME
            encoded = encode(codec, pcm) + bytes([silence_byte(codec)]) * pad
            frames = [
                encoded[i : i + SAMPLES_PER_FRAME]
                for i in range(0, len(encoded), SAMPLES_PER_FRAME)
            ]
            self._frames[codec] = frames
        return frames

    def silence_frame(self, codec: str) -> bytes:
        frame = self._silence.get(codec)
        if frame is None:
            frame = self._silence[codec] = bytes([silence_byte(codec)]) * SAMPLES_PER_FRAME
        return frame

    # ---- the ticker ---------------------------------------------------------------------------

    def start_playing(self, leg: RtpLeg) -> None:
        self._playing[leg.local_port] = leg
        if self._tick_handle is None:
            loop = self.loop
            self._grid_start = loop.time()
            self._slot = 0
            self._tick_handle = loop.call_soon(self._tick)
        if self._rtcp_handle is None:
            self._rtcp_handle = self.loop.call_later(1.0, self._rtcp_round)

    def _stop_ticker(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._rtcp_handle is not None:
            self._rtcp_handle.cancel()
            self._rtcp_handle = None

    def _rtcp_round(self) -> None:
        """Once a second: the RTCP reports that have come due."""
        now = self.loop.time()
        for leg in self._playing.values():
            if leg._rtcp_due <= now:
                leg.send_rtcp(now)
        self._rtcp_handle = self.loop.call_later(1.0, self._rtcp_round) if self._playing else None

    def _tick(self) -> None:
        if not self._playing:
            self._tick_handle = None
            return
        loop = self.loop
        now = loop.time()
        start = self._grid_start
        # The slot we are in; normally self._slot, more when this tick came late. A late
        # tick skips ahead (the RTP timestamp jumps) rather than bursting.
        current = max(self._slot, int((now - start) / FRAME_S))
        advance = current - self._slot + 1 if self._slot else 1
        if current > self._slot:
            self.late_ticks += 1
        began = time.monotonic()
        # Each tick first sends the packets made in the previous one, then makes the
        # next slot's: what goes on the wire leaves within the sends' time of the slot,
        # not after every call's jitter buffer, playout and encoding has run.
        legs = self._playing.values()
        for leg in legs:
            leg.send_ready()
        # How late the last packet of this tick left, against its slot on the grid.
        self.lateness.append(now - (start + current * FRAME_S) + time.monotonic() - began)
        self._lateness_total += 1
        upcoming = start + (current + 1) * FRAME_S
        for leg in legs:
            leg.prepare_frame(advance, upcoming)
        self.ticks += 1
        if self.after_tick is not None:
            self.after_tick()
        self._slot = current + 1
        self._tick_handle = loop.call_at(start + self._slot * FRAME_S, self._tick)


def _ip_target(remote: tuple[str, int]) -> tuple[str, int] | None:
    """The SDP address as a sendto target; ``None`` for a hostname (never resolve here)."""
    host, port = remote
    try:
        ipaddress.ip_address(host)
    except ValueError:
        log.warning("SDP connection address %r is not an IP address; waiting to latch", host)
        return None
    if not 0 < port < 65536:
        return None
    return (host, port)
