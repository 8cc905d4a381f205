"""The RTP media plant on real loopback UDP sockets, and greeting loading."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
import wave
from collections.abc import Awaitable, Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pylibsrtp
import pytest

from media.dtmf import DtmfReceiver
from media.g711 import alaw_encode, ulaw_encode
from media.playout import UtteranceInterrupted
from media.recording import summarize
from media.rtcp import ReportBlock, Sdes, SenderReport, build_receiver_report, parse_rtcp
from media.rtp import RtpPacket, pack_rtp, parse_rtp
from media.srtp import SrtpKeys
from media.tones import chime, greeting_pcm, load_greeting
from switch.mediaplant import MediaUnavailable
from switch.mediaplant.leg import MediaPlant, RtpLeg
from switch.mediaplant.remote import RemoteLeg

HOST = "127.0.0.1"
Leg = RtpLeg | RemoteLeg
PlantFactory = Callable[..., Awaitable[MediaPlant]]


@pytest.fixture(params=[0, 1], ids=["in-loop", "worker"])
def make_plant(request: pytest.FixtureRequest) -> PlantFactory:
    """Every test runs twice: sockets on the node's loop, and in a media worker process."""

    async def make(*args: Any, **kwargs: Any) -> MediaPlant:
        plant = MediaPlant(*args, workers=request.param, **kwargs)
        await plant.start()
        return plant

    return make


def port_range(pairs: int) -> tuple[int, int]:
    """A random even-based range holding ``pairs`` RTP/RTCP pairs (tests run in parallel)."""
    base = random.randrange(40000, 60000, 2)
    return base, base + 2 * pairs - 1


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def other_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


async def receive(
    sock: socket.socket, count: int, timeout: float = 2.0
) -> list[tuple[float, RtpPacket]]:
    """``count`` RTP packets with their arrival times (loop clock)."""
    loop = asyncio.get_running_loop()
    got: list[tuple[float, RtpPacket]] = []
    while len(got) < count:
        data = await recv_datagram(sock, timeout)
        packet = parse_rtp(data)
        assert packet is not None
        got.append((loop.time(), packet))
    return got


async def recv_datagram(sock: socket.socket, timeout: float) -> bytes:
    """One datagram, waiting with add_reader (uvloop has no ``sock_recvfrom``)."""
    try:
        return sock.recv(2048)
    except BlockingIOError:
        pass
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return
        loop.remove_reader(sock.fileno())
        if not future.done():
            future.set_result(data)

    loop.add_reader(sock.fileno(), readable)
    try:
        return await asyncio.wait_for(future, timeout)
    finally:
        loop.remove_reader(sock.fileno())


def drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recvfrom(2048)
        except BlockingIOError:
            return n
        n += 1


def check_stream(packets: list[RtpPacket], payload_type: int) -> None:
    for prev, cur in pairwise(packets):
        assert cur.payload_type == payload_type
        assert cur.sequence == (prev.sequence + 1) & 0xFFFF
        assert cur.timestamp == (prev.timestamp + 160) & 0xFFFFFFFF
        assert cur.ssrc == prev.ssrc
        assert len(cur.payload) == 160
        assert not cur.marker


# ---- sending ----------------------------------------------------------------------------


async def test_plays_greeting_then_paced_rtp(peer: socket.socket, make_plant: PlantFactory) -> None:
    plant = await make_plant(HOST, port_range(4), None)
    try:
        leg = plant.new_leg("call-1")
        assert leg.local_port % 2 == 0
        leg.connect(address(peer), 0, "PCMU")
        assert leg.packets_sent == 0
        leg.play()
        got = await receive(peer, 12)
        packets = [p for _, p in got]
        assert packets[0].marker
        assert packets[0].payload_type == 0
        assert len(packets[0].payload) == 160
        check_stream(packets, 0)
        # The greeting, frame by frame, encoded once and shared.
        frames = plant.greeting_frames("PCMU")
        assert [p.payload for p in packets] == frames[:12]
        assert frames[0] == ulaw_encode(chime()[:160])
        intervals = np.diff([t for t, _ in got])
        assert 0.015 <= float(intervals.mean()) <= 0.030
        await plant.sync()
        assert leg.packets_sent >= 12
    finally:
        plant.close()


async def test_silence_after_the_greeting(
    peer: socket.socket, tmp_path: Path, make_plant: PlantFactory
) -> None:
    short = tmp_path / "short.ulaw"
    short.write_bytes(ulaw_encode(np.full(200, 5000, dtype=np.int16)))  # 2 frames, padded
    plant = await make_plant(HOST, port_range(2), str(short))
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 0, "PCMU")
        leg.play()
        packets = [p for _, p in await receive(peer, 5)]
        check_stream(packets, 0)
        assert packets[0].payload == ulaw_encode(np.full(160, 5000, dtype=np.int16))
        assert packets[1].payload[:40] == ulaw_encode(np.full(40, 5000, dtype=np.int16))
        assert packets[1].payload[40:] == b"\xff" * 120
        assert [p.payload for p in packets[2:]] == [b"\xff" * 160] * 3
    finally:
        plant.close()


async def test_pcma_silence_and_reinvite_moves_target(
    peer: socket.socket, tmp_path: Path, make_plant: PlantFactory
) -> None:
    empty_ish = tmp_path / "g.alaw"
    empty_ish.write_bytes(b"\xd5" * 160)  # one frame of A-law silence
    plant = await make_plant(HOST, port_range(2), str(empty_ish))
    second = other_socket()
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 8, "PCMA")
        leg.play()
        first = [p for _, p in await receive(peer, 3)]
        check_stream(first, 8)
        assert all(p.payload == b"\xd5" * 160 for p in first)
        # re-INVITE: new address, codec and payload type; same SSRC and numbering.
        leg.connect(address(second), 0, "PCMU")
        await asyncio.sleep(0)
        moved = [p for _, p in await receive(second, 3)]
        assert moved[0].payload_type == 0 and moved[0].ssrc == first[0].ssrc
        assert moved[0].payload == b"\xff" * 160
        assert not moved[0].marker
        assert leg.codec == "PCMU"
    finally:
        plant.close()
        second.close()


async def test_one_ticker_serves_many_legs(make_plant: PlantFactory) -> None:
    plant = await make_plant(HOST, port_range(20), None)
    peers = [other_socket() for _ in range(10)]
    try:
        legs = [plant.new_leg(f"call-{i}") for i in range(10)]
        for leg, sock in zip(legs, peers, strict=True):
            leg.connect(address(sock), 0, "PCMU")
            leg.play()
        await asyncio.sleep(0.2)
        counts = [drain(sock) for sock in peers]
        assert all(7 <= n <= 13 for n in counts), counts
        assert len({leg.ssrc for leg in legs}) == 10
        assert len({leg.local_port for leg in legs}) == 10
    finally:
        plant.close()
        for sock in peers:
            sock.close()


async def test_late_ticker_skips_ahead_without_burst(peer: socket.socket) -> None:
    plant = MediaPlant(HOST, port_range(2), None)  # blocks its loop: in-loop only
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 0, "PCMU")
        leg.play()
        before = await receive(peer, 3)
        time.sleep(0.105)  # block the loop for 5+ frames
        after = await receive(peer, 3)
        stream = [p for _, p in before + after]
        for prev, cur in pairwise(stream):
            assert cur.sequence == (prev.sequence + 1) & 0xFFFF  # nothing lost
        # The clock kept running: one packet (the first made after the stall) jumps.
        jumps = [(cur.timestamp - prev.timestamp) & 0xFFFFFFFF for prev, cur in pairwise(stream)]
        assert all(j % 160 == 0 for j in jumps)
        assert max(jumps) >= 5 * 160
        assert after[2][0] - after[0][0] > 0.015  # then back on the 20 ms grid
        assert plant.late_ticks >= 1
    finally:
        plant.close()


async def test_play_without_connect_sends_nothing(make_plant: PlantFactory) -> None:
    plant = await make_plant(HOST, port_range(2), None)
    try:
        leg = plant.new_leg("call-1")
        leg.play()
        await asyncio.sleep(0.06)
        assert leg.packets_sent == 0
    finally:
        plant.close()


def test_works_on_uvloop(make_plant: PlantFactory) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[int, int]:
        plant = await make_plant(HOST, port_range(2), None)
        sock = other_socket()
        try:
            leg = plant.new_leg("call-1")
            leg.connect(address(sock), 0, "PCMU")
            leg.play()
            packets = [p for _, p in await receive(sock, 5)]
            check_stream(packets, 0)
            sock.sendto(pack_rtp(0, 1, 160, 42, b"\xff" * 160), (HOST, leg.local_port))
            for _ in range(50):
                await asyncio.sleep(0.01)
                await plant.sync()
                if leg.packets_received:
                    break
            return leg.packets_sent, leg.packets_received
        finally:
            plant.close()
            sock.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sent, received = runner.run(scenario())
    assert sent >= 5
    assert received == 1


# ---- receiving, latching, silence ---------------------------------------------------------


async def wait_until_received(plant: MediaPlant, leg: Leg, count: int) -> None:
    for _ in range(100):
        await plant.sync()
        if leg.packets_received >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"leg received {leg.packets_received}, expected {count}")


async def test_symmetric_rtp_latches_to_the_source(
    peer: socket.socket, make_plant: PlantFactory
) -> None:
    plant = await make_plant(HOST, port_range(2), None)
    nat = other_socket()
    junk = other_socket()
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 0, "PCMU")
        leg.play()
        await receive(peer, 2)
        await plant.sync()
        assert leg.target == address(peer)
        # Not RTP: neither counted nor latched.
        junk.sendto(b"\x00" * 20, (HOST, leg.local_port))
        junk.sendto(b"hello", (HOST, leg.local_port))
        await asyncio.sleep(0.03)
        await plant.sync()
        assert leg.packets_received == 0
        assert leg.target == address(peer)
        # RTP from another address (the peer behind a NAT): sends follow it.
        for seq in range(3):
            nat.sendto(pack_rtp(0, seq, seq * 160, 99, b"\xff" * 160), (HOST, leg.local_port))
        await wait_until_received(plant, leg, 3)
        assert leg.packets_received == 3
        assert leg.target == address(nat)
        drain(peer)
        got = await receive(nat, 3)
        check_stream([p for _, p in got], 0)
        await asyncio.sleep(0.06)
        assert drain(peer) == 0
        # A re-INVITE to the same address keeps the latch.
        leg.connect(address(peer), 0, "PCMU")
        await plant.sync()
        assert leg.target == address(nat)
    finally:
        plant.close()
        nat.close()
        junk.close()


async def test_latched_source_is_kept_against_a_newcomer(
    peer: socket.socket, make_plant: PlantFactory
) -> None:
    plant = await make_plant(HOST, port_range(2), None)
    intruder = other_socket()
    try:
        leg = plant.new_leg("call-1")
        leg.connect(("192.0.2.10", 4000), 0, "PCMU")  # SDP address we never reach
        peer.sendto(pack_rtp(0, 1, 0, 1), (HOST, leg.local_port))
        await wait_until_received(plant, leg, 1)
        intruder.sendto(pack_rtp(0, 1, 0, 2), (HOST, leg.local_port))
        await wait_until_received(plant, leg, 2)
        assert leg.target == address(peer)
    finally:
        plant.close()
        intruder.close()


async def test_silence_grows_and_resets(peer: socket.socket, make_plant: PlantFactory) -> None:
    loop = asyncio.get_running_loop()
    plant = await make_plant(HOST, port_range(2), None)
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 0, "PCMU")
        assert leg.silence_s(loop.time() + 100) == 0.0  # not playing yet
        leg.play()
        started = loop.time()
        assert leg.silence_s(started + 5.0) == pytest.approx(5.0, abs=0.05)
        await asyncio.sleep(0.1)
        assert leg.silence_s(loop.time()) >= 0.09
        peer.sendto(pack_rtp(0, 1, 0, 7, b"\xff" * 160), (HOST, leg.local_port))
        await wait_until_received(plant, leg, 1)
        assert leg.silence_s(loop.time()) < 0.05
        assert leg.silence_s(loop.time() + 3.0) == pytest.approx(3.0, abs=0.05)
    finally:
        plant.close()


# ---- ports ---------------------------------------------------------------------------------


async def test_port_exhaustion_and_release(make_plant: PlantFactory) -> None:
    start, end = port_range(2)
    plant = await make_plant(HOST, (start, end), None)
    try:
        a = plant.new_leg("a")
        b = plant.new_leg("b")
        assert {a.local_port, b.local_port} == {start, start + 2}
        with pytest.raises(MediaUnavailable):
            plant.new_leg("c")
        a.close()
        a.close()  # idempotent
        assert a.closed
        await plant.sync()  # a worker frees the port once it has closed its copy
        c = plant.new_leg("c")
        assert c.local_port == a.local_port
        assert plant.active_legs == 2
    finally:
        plant.close()
    assert plant.active_legs == 0
    assert plant.free_ports == 2
    with pytest.raises(MediaUnavailable):
        plant.new_leg("after close")


async def test_ports_round_robin(make_plant: PlantFactory) -> None:
    start, end = port_range(3)
    plant = await make_plant(HOST, (start, end), None)
    try:
        ports = []
        for i in range(4):
            leg = plant.new_leg(f"call-{i}")
            ports.append(leg.local_port)
            leg.close()
            await plant.sync()
        assert ports == [start, start + 2, start + 4, start]
    finally:
        plant.close()


async def test_busy_port_is_skipped(make_plant: PlantFactory) -> None:
    start, end = port_range(2)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        squatter.bind((HOST, start))
        plant = await make_plant(HOST, (start, end), None)
        try:
            leg = plant.new_leg("a")
            assert leg.local_port == start + 2
            with pytest.raises(MediaUnavailable):
                plant.new_leg("b")
        finally:
            plant.close()
    finally:
        squatter.close()


def test_odd_range_start_and_tiny_ranges() -> None:
    plant = MediaPlant(HOST, (41001, 41006), None)
    assert plant.port_count == 2  # 41002 and 41004; 41006 has no RTCP neighbour
    with pytest.raises(ValueError):
        MediaPlant(HOST, (41001, 41002), None)
    with pytest.raises(ValueError, match="media workers"):
        MediaPlant(HOST, (41002, 41005), None, workers=-1)


async def test_close_stops_sending(peer: socket.socket, make_plant: PlantFactory) -> None:
    plant = await make_plant(HOST, port_range(2), None)
    leg = plant.new_leg("call-1")
    leg.connect(address(peer), 0, "PCMU")
    leg.play()
    await receive(peer, 2)
    leg.close()
    sent = leg.packets_sent
    await asyncio.sleep(0.06)
    assert leg.packets_sent == sent
    leg.play()  # no effect once closed
    await asyncio.sleep(0.03)
    assert leg.packets_sent == sent
    plant.close()
    plant.close()


async def test_unsupported_codec_and_hostname(make_plant: PlantFactory) -> None:
    plant = await make_plant(HOST, port_range(2), None)
    try:
        leg = plant.new_leg("call-1")
        with pytest.raises(ValueError):
            leg.connect((HOST, 4000), 9, "G722")
        leg.connect(("peer.example.com", 4000), 0, "PCMU")  # never resolved in the hot path
        leg.play()
        await plant.sync()
        assert leg.target is None
    finally:
        plant.close()


# ---- greetings ------------------------------------------------------------------------------


def write_wav(
    path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2
) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())


def test_chime() -> None:
    pcm = chime()
    assert pcm.dtype == np.int16
    assert pcm.size == 9600  # 1.2 s at 8 kHz
    peak = int(np.abs(pcm.astype(np.int32)).max())
    assert 5000 < peak < 20000
    assert abs(int(pcm[0])) < 500 and abs(int(pcm[-1])) < 500  # no clicks
    assert greeting_pcm(None).tolist() == pcm.tolist()
    assert greeting_pcm("").size == pcm.size


def test_load_wav_8k(tmp_path: Path) -> None:
    samples = (np.arange(800) * 10 - 4000).astype("<i2")
    path = tmp_path / "hello.wav"
    write_wav(path, samples, 8000)
    pcm = load_greeting(path)
    assert pcm.dtype == np.int16
    assert pcm.tolist() == samples.tolist()


def test_load_wav_16k_is_averaged_down(tmp_path: Path) -> None:
    samples = np.array([100, 300, -50, -150, 32767, 32767, 7], dtype="<i2")
    path = tmp_path / "wide.WAV"
    write_wav(path, samples, 16000)
    assert load_greeting(path).tolist() == [200, -100, 32767]


@pytest.mark.parametrize(
    ("rate", "channels", "width", "message"),
    [(44100, 1, 2, "44100 Hz"), (8000, 2, 2, "2 channel"), (8000, 1, 1, "8-bit")],
)
def test_unusable_wav(tmp_path: Path, rate: int, channels: int, width: int, message: str) -> None:
    path = tmp_path / "bad.wav"
    write_wav(
        path, np.zeros(160 * channels, dtype="<i2" if width == 2 else "u1"), rate, channels, width
    )
    with pytest.raises(ValueError, match=message):
        load_greeting(path)


def test_bad_files(tmp_path: Path) -> None:
    not_wav = tmp_path / "fake.wav"
    not_wav.write_bytes(b"ID3 this is an mp3")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        load_greeting(not_wav)
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3")
    with pytest.raises(ValueError, match=r"\.mp3.*expected \.wav"):
        load_greeting(mp3)
    with pytest.raises(ValueError, match="no audio"):
        empty = tmp_path / "empty.ulaw"
        empty.write_bytes(b"")
        load_greeting(empty)
    with pytest.raises(ValueError, match="missing"):
        load_greeting(tmp_path / "missing.alaw")
    with pytest.raises(ValueError, match="unsupported"):
        MediaPlant(HOST, port_range(2), str(mp3))


def test_load_raw_g711(tmp_path: Path) -> None:
    samples = np.array([0, 1000, -1000, 20000], dtype=np.int16)
    ulaw = tmp_path / "g.ulaw"
    ulaw.write_bytes(ulaw_encode(samples))
    alaw = tmp_path / "g.alaw"
    alaw.write_bytes(alaw_encode(samples))
    assert np.allclose(load_greeting(ulaw), samples, atol=600)
    assert np.allclose(load_greeting(alaw), samples, atol=600)


async def test_plant_uses_the_greeting_file(tmp_path: Path, make_plant: PlantFactory) -> None:
    samples = (np.sin(np.arange(400) / 5) * 8000).astype("<i2")
    path = tmp_path / "greeting.wav"
    write_wav(path, samples, 8000)
    plant = await make_plant(HOST, port_range(2), str(path))
    try:
        frames = plant.greeting_frames("PCMA")
        assert len(frames) == 3  # 400 samples → 2.5 frames, padded with silence
        assert all(len(f) == 160 for f in frames)
        assert frames[0] == alaw_encode(samples[:160])
        assert frames[2][80:] == b"\xd5" * 80
        assert plant.greeting_frames("PCMA") is frames  # encoded once, shared
    finally:
        plant.close()


# ---- RTCP ------------------------------------------------------------------------------


async def test_rtcp_reports_loss_and_jitter_to_the_peer_and_reads_its_reports() -> None:
    """Our SR goes to the peer's RTP port + 1 and carries a block on what we heard; the
    peer's RR about our stream lands in the leg's stats. (In-loop: the test triggers the
    report; a media worker runs the same leg code on its own schedule.)"""

    # The peer: an RTP socket and its RTCP socket on the next port up.
    while True:
        rtp_peer = other_socket()
        port = address(rtp_peer)[1]
        rtcp_peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtcp_peer.bind((HOST, port + 1))
            break
        except OSError:
            rtp_peer.close()
            rtcp_peer.close()
    rtcp_peer.setblocking(False)
    plant = MediaPlant(HOST, port_range(4), None)
    try:
        leg = plant.new_leg("rtcp-call")
        leg.connect(address(rtp_peer), 0, "PCMU")
        leg.play()
        # 100 packets with 10 missing: 10 % loss.
        for seq in range(100):
            if seq % 10 == 5:
                continue
            rtp_peer.sendto(
                pack_rtp(0, seq, seq * 160, 0xABCD, b"\xff" * 160), ("127.0.0.1", leg.local_port)
            )
        await wait_until_received(plant, leg, 90)
        await asyncio.sleep(0.1)  # let some of our RTP go out too
        leg.send_rtcp(asyncio.get_running_loop().time())
        data = await recv_datagram(rtcp_peer, 2.0)
        packets = parse_rtcp(data)
        sr = packets[0]
        assert isinstance(sr, SenderReport)
        assert sr.packet_count >= 1 and sr.octet_count == 160 * sr.packet_count
        assert abs(sr.ntp_time - time.time()) < 5
        (block,) = sr.blocks
        assert block.ssrc == 0xABCD
        assert block.cumulative_lost == 10
        assert block.fraction_lost == 25  # 10/100 of 256
        assert block.highest_sequence == 99
        assert isinstance(packets[1], Sdes)
        # The peer reports on our stream: 5 % lost, jitter 80 units (10 ms).
        ours = ReportBlock(sr.ssrc, 13, 3, 1000, 80, 0, 0)
        rtcp_peer.sendto(build_receiver_report(0xABCD, [ours]), ("127.0.0.1", leg.local_port + 1))
        for _ in range(100):
            if leg.stats()["rtcp_received"]:
                break
            await asyncio.sleep(0.01)
        stats = leg.stats()
        assert stats["rtcp_received"] == 1
        assert stats["peer_loss_pct"] == round(100 * 13 / 256, 2)
        assert stats["peer_jitter_ms"] == 10.0
        assert stats["rx_loss_pct"] == 10.0
        leg.close()
        # Closing says goodbye on RTCP (RR + BYE).
        kinds = [type(p).__name__ for p in parse_rtcp(await recv_datagram(rtcp_peer, 2.0))]
        assert kinds == ["ReceiverReport", "Bye"]
    finally:
        plant.close()
        rtp_peer.close()
        rtcp_peer.close()


async def test_send_dtmf_goes_out_as_rfc4733_events(
    peer: socket.socket, make_plant: PlantFactory
) -> None:
    plant = await make_plant(HOST, port_range(4), None)
    try:
        leg = plant.new_leg("dtmf-out")
        leg.connect(address(peer), 0, "PCMU", telephone_event_pt=101)
        leg.play()
        await receive(peer, 3)  # audio first
        leg.send_dtmf("19")
        got = [p for _, p in await receive(peer, 40, timeout=3.0)]
        events = [p for p in got if p.payload_type == 101]
        receiver = DtmfReceiver()
        digits = []
        for packet in events:
            digits += receiver.feed(packet.timestamp, packet.payload, 0.0)
        assert [d.digit for d in digits] == ["1", "9"]
        assert all(d.duration_ms == 100 for d in digits)
        # Each event starts with the marker bit; sequence numbers stay one stream.
        starts = [p for p in events if p.marker]
        assert len(starts) == 2
        seqs = [p.sequence for p in got]
        assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
        # Audio resumes after the digits.
        assert got[-1].payload_type == 0
    finally:
        plant.close()


async def test_send_dtmf_without_telephone_event_sends_nothing_extra(
    peer: socket.socket, make_plant: PlantFactory
) -> None:
    plant = await make_plant(HOST, port_range(4), None)
    try:
        leg = plant.new_leg("dtmf-none")
        leg.connect(address(peer), 0, "PCMU")
        leg.play()
        leg.send_dtmf("5")
        got = [p for _, p in await receive(peer, 15)]
        assert {p.payload_type for p in got} == {0}
    finally:
        plant.close()


# ---- media workers --------------------------------------------------------------------------


async def test_failed_sends_are_counted(make_plant: PlantFactory) -> None:
    """A send the kernel refuses (broadcast without SO_BROADCAST) counts as an error,
    whether the leg sent it itself or a media worker did and reported it."""
    plant = await make_plant(HOST, port_range(2), None)
    try:
        leg = plant.new_leg("call-1")
        leg.connect(("255.255.255.255", 9), 0, "PCMU")
        leg.play()
        for _ in range(100):
            await asyncio.sleep(0.01)
            await plant.sync()
            if leg.send_errors >= 5:
                break
        assert leg.send_errors >= 5
        assert leg.packets_sent == 0
        assert leg.stats()["send_errors"] == leg.send_errors
    finally:
        plant.close()


async def test_a_dead_media_worker_is_replaced_and_the_call_goes_on(
    peer: socket.socket,
) -> None:
    plant = MediaPlant(HOST, port_range(4), None, workers=1)
    await plant.start()
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 0, "PCMU")
        leg.play()
        before = [p for _, p in await receive(peer, 5)]
        await plant.sync()
        assert len(plant.lateness) > 0  # the worker reports each tick's lateness
        (pid,) = plant.worker_pids
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if plant.worker_restarts:
                break
        assert plant.worker_restarts == 1
        assert plant.worker_pids != [pid]
        drain(peer)
        after = [p for _, p in await receive(peer, 5)]
        check_stream(after[1:], 0)
        # The same socket; a new SSRC, as the stream's numbering starts over.
        assert after[0].ssrc != before[0].ssrc
        assert all(p.ssrc == after[0].ssrc for p in after)
        # Inbound reaches the leg through the new worker too.
        peer.sendto(pack_rtp(0, 1, 160, 42, b"\xff" * 160), (HOST, leg.local_port))
        await wait_until_received(plant, leg, 1)
    finally:
        plant.close()
    assert plant.worker_pids == []


async def test_conversation_controls_reach_the_session_and_its_state_comes_back(
    peer: socket.socket, make_plant: PlantFactory
) -> None:
    """What the conversation does to a session — say, flush — works the same whether the
    session is on this loop or in a media worker: the audio is on the wire, the events
    come back, and the state it reads is right at once and after the worker's reports."""
    plant = await make_plant(HOST, port_range(2), None)
    events: list[Any] = []
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 0, "PCMU")
        session = leg.start_session(lambda event, at: events.append(event))
        leg.play()
        await receive(peer, 3)  # silence until there is something to say
        assert not session.playing
        tone = (8000 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype(np.int16)
        session.say(tone, "t1-0")
        assert session.playing and session.queued_frames == 50  # at once, not a tick later
        drain(peer)
        payloads = [p.payload for _, p in await receive(peer, 10)]
        assert ulaw_encode(tone[:160]) in payloads  # the reply is on the wire
        await plant.sync()
        assert 0 < session.queued_frames < 50 and session.playing
        events += session.flush()  # in-loop: returned; from a worker: they follow
        assert not session.playing and session.queued_frames == 0
        for _ in range(100):
            if any(isinstance(e, UtteranceInterrupted) for e in events):
                break
            await asyncio.sleep(0.01)
        kinds = [type(e).__name__ for e in events]
        assert kinds[:2] == ["UtteranceStarted", "UtteranceInterrupted"], kinds
        await asyncio.sleep(0.05)
        await plant.sync()
        assert not session.playing and not session.paused and not session.caller_speaking
        drain(peer)
        silence = ulaw_encode(np.zeros(160, dtype=np.int16))
        assert all(p.payload == silence for _, p in await receive(peer, 5))
    finally:
        plant.close()


# ---- SRTP ---------------------------------------------------------------------------


def libsrtp_peer(key: bytes, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    policy = pylibsrtp.Policy(
        key=key, ssrc_type=kind, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    )
    return pylibsrtp.Session(policy)


async def test_srtp_leg_encrypts_what_it_sends_and_checks_what_it_gets(
    peer: socket.socket, make_plant: PlantFactory
) -> None:
    """With SDES keys the leg's RTP and RTCP go out encrypted (a libsrtp peer decrypts
    them to the greeting), the peer's SRTP is decrypted and counted, and plain or
    forged packets are dropped without being counted or moving the latch."""
    plant = await make_plant(HOST, port_range(2), None)
    ours, theirs = os.urandom(30), os.urandom(30)
    decrypt, encrypt = libsrtp_peer(ours, False), libsrtp_peer(theirs, True)
    events: list[Any] = []
    intruder = other_socket()
    try:
        leg = plant.new_leg("call-1")
        keys = SrtpKeys("AES_CM_128_HMAC_SHA1_80", ours, theirs)
        leg.connect(address(peer), 0, "PCMU", None, keys)
        leg.play()
        wire = [await recv_datagram(peer, 2.0) for _ in range(5)]
        frames = plant.greeting_frames("PCMU")
        assert all(len(d) == 12 + 160 + 10 for d in wire)
        assert all(d[12:172] not in frames for d in wire)  # not the greeting in the clear
        plain = [parse_rtp(decrypt.unprotect(d)) for d in wire]
        assert [p.payload for p in plain if p is not None] == frames[:5]
        # The peer talks: SRTP in, each packet authenticated and counted.
        leg.start_session(lambda event, at: events.append(event))
        tone = (8000 * np.sin(np.arange(1600) * 2 * np.pi * 440 / 8000)).astype(np.int16)
        for seq in range(40):
            payload = ulaw_encode(tone[(seq % 10) * 160 : (seq % 10 + 1) * 160])
            packet = encrypt.protect(pack_rtp(0, seq, seq * 160, 77, payload))
            peer.sendto(packet, (HOST, leg.local_port))
            await asyncio.sleep(0.002)
        await wait_until_received(plant, leg, 40)
        # Plain RTP and a forged packet from elsewhere: neither counted nor latched.
        intruder.sendto(pack_rtp(0, 100, 16000, 77, b"\xff" * 160), (HOST, leg.local_port))
        forged = bytearray(encrypt.protect(pack_rtp(0, 101, 16160, 77, b"\xff" * 160)))
        forged[-1] ^= 0xFF
        intruder.sendto(bytes(forged), (HOST, leg.local_port))
        await asyncio.sleep(0.1)
        await plant.sync()
        assert leg.packets_received == 40
        assert leg.target == address(peer)
        stats = leg.stats()
        assert stats["srtp"] == "AES_CM_128_HMAC_SHA1_80" and stats["srtp_rejected"] == 2
    finally:
        plant.close()
        intruder.close()


# ---- recording ------------------------------------------------------------------------


async def test_a_recorded_session_writes_both_directions_in_step(
    peer: socket.socket, make_plant: PlantFactory, tmp_path: Path
) -> None:
    """Caller left, agent right, in the same process or in a media worker: the WAV is
    whole once ``wait_closed`` returns, and its channels hold what each side sent."""
    plant = await make_plant(HOST, port_range(2), None)
    path = tmp_path / "day" / "call-1.wav"
    try:
        leg = plant.new_leg("call-1")
        leg.connect(address(peer), 0, "PCMU")
        session = leg.start_session(lambda event, at: None, None, str(path))
        leg.play()
        caller = (6000 * np.sin(np.arange(160 * 25) * 2 * np.pi * 300 / 8000)).astype(np.int16)
        for seq in range(25):  # half a second of the caller, then quiet
            chunk = caller[seq * 160 : (seq + 1) * 160]
            peer.sendto(pack_rtp(0, seq, seq * 160, 42, ulaw_encode(chunk)), (HOST, leg.local_port))
            await asyncio.sleep(0.02)
        agent = (6000 * np.sin(np.arange(8000) * 2 * np.pi * 800 / 8000)).astype(np.int16)
        session.say(agent, "t1-0")
        await asyncio.sleep(1.3)  # the reply plays out (a second), then silence
        leg.close()
        await asyncio.wait_for(leg.wait_closed(), 5)
    finally:
        plant.close()
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = wav.getnframes()
        stereo = np.frombuffer(wav.readframes(frames), dtype="<i2").reshape(-1, 2)
    assert 1.6 <= frames / 8000 <= 3.0  # every tick from play to close (1.8 s)
    left, right = stereo[:, 0].astype(float), stereo[:, 1].astype(float)

    def tone_energy(channel: np.ndarray, hz: float) -> float:
        spectrum = np.abs(np.fft.rfft(channel)) ** 2  # power: a gated tone leaks little
        freqs = np.fft.rfftfreq(len(channel), 1 / 8000)
        return float(spectrum[np.abs(freqs - hz) < 20].sum() / (spectrum.sum() + 1e-9))

    assert tone_energy(left, 300) > 0.5 and tone_energy(left, 800) < 0.05  # the caller
    assert tone_energy(right, 800) > 0.5 and tone_energy(right, 300) < 0.05  # the agent
    # The caller spoke first, the agent after: their loud stretches do not overlap much.
    loud_left = np.flatnonzero(np.abs(left) > 2000)
    loud_right = np.flatnonzero(np.abs(right) > 2000)
    assert loud_left[0] < loud_right[0]
    assert summarize(path).bytes == path.stat().st_size
