"""media.tts: eSpeak NG through ctypes and the OpenAI-compatible speech client."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from media.speech import SpeechError
from media.tts import EspeakSynthesizer, OpenAISpeech, _Resampler

RATE = 8000


def rms(pcm: npt.NDArray[np.int16]) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def peak_hz(pcm: npt.NDArray[np.int16], rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def median_f0(pcm: npt.NDArray[np.int16], rate: int = RATE) -> float:
    """Rough voice pitch: autocorrelation peak (60-400 Hz) of the louder 40 ms frames."""
    x = pcm.astype(np.float64)
    frame = rate // 25
    threshold = 0.3 * np.sqrt(np.mean(x**2))
    estimates = []
    for i in range(0, len(x) - frame, frame):
        f = x[i : i + frame]
        if np.sqrt(np.mean(f**2)) < threshold:
            continue
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[frame - 1 :]
        lo, hi = rate // 400, rate // 60
        estimates.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(estimates))


def sine(rate: int, seconds: float, hz: float = 1000.0, amp: float = 10000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


# --------------------------------------------------------------------------- resampler


@pytest.mark.parametrize("rate_in", [22050, 24000, 16000])
def test_resampler_keeps_tone_and_length_whatever_the_chunking(rate_in: int) -> None:
    x = np.frombuffer(sine(rate_in, 1.0), dtype="<i2").astype(np.int16)
    whole = _Resampler(rate_in).process(x)
    assert len(whole) == RATE
    assert peak_hz(whole) == pytest.approx(1000, abs=2)
    assert rms(whole[100:-100]) == pytest.approx(10000 / np.sqrt(2), rel=0.02)

    r = _Resampler(rate_in)
    rng = np.random.default_rng(7)
    parts, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, 3000))
        parts.append(r.feed(x[i : i + k]))
        i += k
    parts.append(r.flush())
    assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("rate_in", [22050, 24000])
def test_resampler_rejects_content_above_telephone_band(rate_in: int) -> None:
    x = np.frombuffer(sine(rate_in, 1.0, hz=5000), dtype="<i2").astype(np.int16)
    out = _Resampler(rate_in).process(x)
    assert rms(out[100:-100]) < 50  # would alias to 3 kHz at full strength otherwise


# --------------------------------------------------------------------------- eSpeak


async def test_espeak_hello_world_is_plausible_speech() -> None:
    tts = EspeakSynthesizer()
    try:
        pcm = await tts.synthesize("hello world")
    finally:
        await tts.aclose()
    assert pcm.dtype == np.int16
    assert 0.5 <= len(pcm) / RATE <= 3.0
    assert rms(pcm) > 300
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    band = spectrum[(freqs >= 100) & (freqs <= 3500)].sum()
    assert band / spectrum.sum() > 0.8


async def test_espeak_empty_text_gives_empty_audio() -> None:
    tts = EspeakSynthesizer()
    for text in ("", "   \n\t "):
        pcm = await tts.synthesize(text)
        assert pcm.dtype == np.int16 and len(pcm) == 0


async def test_espeak_is_much_faster_than_real_time() -> None:
    tts = EspeakSynthesizer()
    await tts.synthesize("warm up")
    text = "The quick brown fox jumps over the lazy dog. " * 6
    started = time.perf_counter()
    pcm = await tts.synthesize(text)
    elapsed = time.perf_counter() - started
    factor = len(pcm) / RATE / elapsed
    print(f"espeak real-time factor: {factor:.0f}x ({len(pcm) / RATE:.1f} s in {elapsed:.3f} s)")
    assert factor >= 5


async def test_espeak_rate_and_voice_settings_apply() -> None:
    slow = await EspeakSynthesizer(rate_wpm=100).synthesize("one two three four five")
    fast = await EspeakSynthesizer(rate_wpm=300).synthesize("one two three four five")
    assert len(slow) > 1.5 * len(fast)
    with pytest.raises(SpeechError, match="voice"):
        await EspeakSynthesizer(voice="no-such-voice-xx").synthesize("hello")
    # The shared engine recovers for the next caller.
    assert len(await EspeakSynthesizer().synthesize("hello")) > 0


def test_espeak_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        EspeakSynthesizer(rate_wpm=10)
    with pytest.raises(ValueError):
        EspeakSynthesizer(pitch=500)


async def test_espeak_closed_synthesizer_refuses() -> None:
    tts = EspeakSynthesizer()
    await tts.aclose()
    with pytest.raises(SpeechError):
        await tts.synthesize("hello")


async def test_espeak_concurrent_calls_are_serialised_and_all_get_audio() -> None:
    synths = [EspeakSynthesizer(), EspeakSynthesizer(rate_wpm=220), EspeakSynthesizer(pitch=80)]
    texts = [f"caller number {i} is speaking now" for i in range(24)]
    results = await asyncio.gather(
        *(synths[i % len(synths)].synthesize(t) for i, t in enumerate(texts))
    )
    assert all(len(r) > RATE // 2 and rms(r) > 300 for r in results)
    # Each call used its own synthesizer's settings (eSpeak is not bit-exact between runs,
    # so compare pitch): the default-pitch ones stay well below the pitch=80 ones.
    default = [median_f0(r) for r in results[0::3]]
    high = [median_f0(r) for r in results[2::3]]
    assert max(default) < 0.85 * min(high)


async def test_espeak_pitch_does_not_leak_between_synthesizers() -> None:
    text = "caller number zero is speaking now, how are you today"
    before = median_f0(await EspeakSynthesizer().synthesize(text))
    high = median_f0(await EspeakSynthesizer(pitch=95).synthesize(text))
    after = median_f0(await EspeakSynthesizer().synthesize(text))
    low = median_f0(await EspeakSynthesizer(pitch=5).synthesize(text))
    assert high > 1.2 * before
    assert low < 0.9 * before
    assert after == pytest.approx(before, rel=0.1)


async def test_event_loop_stays_responsive_during_synthesis() -> None:
    tts = EspeakSynthesizer()
    await tts.synthesize("warm up")
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    text = "This is a rather long sentence that keeps the synthesizer busy for a while. " * 12
    started = time.perf_counter()
    for _ in range(4):
        await tts.synthesize(text)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    during = [t for t in ticks if t >= started]
    gaps = np.diff(ticks)
    assert len(during) >= max(3, int(elapsed / 0.002 * 0.2))
    assert gaps.max() < 0.1


# --------------------------------------------------------------------------- OpenAI


@dataclass
class Reply:
    status: int = 200
    content_type: str = "application/octet-stream"
    body: bytes = b""
    pieces: int = 0  # > 0: chunked transfer-encoding in that many pieces


@dataclass
class FakeSpeechServer:
    reply: Reply = field(default_factory=Reply)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    finished_sending: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((method, path, headers, body))
            await self._respond(writer)
        finally:
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter) -> None:
        r = self.reply
        reason = {200: "OK", 500: "Internal Server Error"}.get(r.status, "X")
        head = [f"HTTP/1.1 {r.status} {reason}", f"Content-Type: {r.content_type}"]
        head.append("Connection: close")
        if r.pieces:
            head.append("Transfer-Encoding: chunked")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            bounds = np.linspace(0, len(r.body), r.pieces + 1).astype(int)
            for a, b in itertools.pairwise(bounds):
                writer.write(f"{b - a:x}\r\n".encode() + r.body[a:b] + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            self.finished_sending = True
        else:
            head.append(f"Content-Length: {len(r.body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + r.body)
        await writer.drain()


@pytest.fixture
async def server() -> AsyncIterator[FakeSpeechServer]:
    fake = FakeSpeechServer()
    srv = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}"
    async with srv:
        yield fake
        srv.close()


@pytest.fixture
async def make_client(
    server: FakeSpeechServer,
) -> AsyncIterator[Callable[..., OpenAISpeech]]:
    made: list[OpenAISpeech] = []

    def make(**kwargs: object) -> OpenAISpeech:
        kwargs.setdefault("api_key", "sk-test")
        tts = OpenAISpeech(server.url + "/", **kwargs)  # type: ignore[arg-type]
        made.append(tts)
        return tts

    yield make
    for tts in made:
        await tts.aclose()


def wav_bytes(rate: int, pcm: bytes, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


async def test_openai_pcm_reply(
    server: FakeSpeechServer, make_client: Callable[..., OpenAISpeech]
) -> None:
    server.reply = Reply(body=sine(24000, 1.0))
    tts = make_client(model="tts-x", voice="nova")
    pcm = await tts.synthesize("  Hello there.  ")
    assert pcm.dtype == np.int16
    assert len(pcm) == RATE
    assert peak_hz(pcm) == pytest.approx(1000, abs=2)
    assert rms(pcm[100:-100]) == pytest.approx(7071, rel=0.02)

    method, path, headers, body = server.requests[0]
    assert (method, path) == ("POST", "/v1/audio/speech")
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {
        "model": "tts-x",
        "input": "Hello there.",
        "voice": "nova",
        "response_format": "pcm",
    }


async def test_openai_without_key_sends_no_authorization(
    server: FakeSpeechServer, make_client: Callable[..., OpenAISpeech]
) -> None:
    server.reply = Reply(body=sine(24000, 0.2))
    pcm = await make_client(api_key=None).synthesize("hi")
    assert len(pcm) == 1600
    assert "authorization" not in server.requests[0][2]


async def test_openai_empty_text_makes_no_request(
    server: FakeSpeechServer, make_client: Callable[..., OpenAISpeech]
) -> None:
    tts = make_client()
    assert len(await tts.synthesize("   ")) == 0
    assert [c async for c in tts.stream("")] == []
    assert server.requests == []


@pytest.mark.parametrize(
    ("content_type", "rate", "channels"),
    [("audio/wav", 16000, 1), ("application/octet-stream", 22050, 1), ("audio/x-wav", 24000, 2)],
)
async def test_openai_wav_reply(
    server: FakeSpeechServer,
    make_client: Callable[..., OpenAISpeech],
    content_type: str,
    rate: int,
    channels: int,
) -> None:
    mono = np.frombuffer(sine(rate, 0.5), dtype="<i2")
    frames = np.repeat(mono, channels).astype("<i2").tobytes()
    server.reply = Reply(content_type=content_type, body=wav_bytes(rate, frames, channels))
    pcm = await make_client().synthesize("hello")
    assert len(pcm) == RATE // 2
    assert peak_hz(pcm) == pytest.approx(1000, abs=4)
    assert rms(pcm[100:-100]) == pytest.approx(7071, rel=0.02)


async def test_openai_error_status_raises_speech_error(
    server: FakeSpeechServer, make_client: Callable[..., OpenAISpeech]
) -> None:
    server.reply = Reply(status=500, content_type="application/json", body=b'{"error":"boom"}')
    tts = make_client()
    with pytest.raises(SpeechError, match=r"500.*boom"):
        await tts.synthesize("hello")
    with pytest.raises(SpeechError, match=r"500.*boom"):
        async for _ in tts.stream("hello"):
            pass


async def test_openai_unreachable_raises_speech_error() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    tts = OpenAISpeech(f"http://127.0.0.1:{port}", None, timeout_s=2.0)
    try:
        with pytest.raises(SpeechError):
            await tts.synthesize("hello")
    finally:
        await tts.aclose()


async def collect(
    chunks: AsyncIterator[npt.NDArray[np.int16]], on_first: Callable[[], Awaitable[None]]
) -> list[npt.NDArray[np.int16]]:
    out: list[npt.NDArray[np.int16]] = []
    async for chunk in chunks:
        if not out:
            await on_first()
        out.append(chunk)
    return out


async def test_openai_stream_yields_chunks_as_body_arrives(
    server: FakeSpeechServer, make_client: Callable[..., OpenAISpeech]
) -> None:
    body = sine(24000, 1.0)
    server.reply = Reply(body=body, pieces=7)  # 6857-byte pieces: odd, mid-sample cuts
    tts = make_client()
    done_at_first: list[bool] = []

    async def on_first() -> None:
        done_at_first.append(server.finished_sending)

    chunks = await collect(tts.stream("hello"), on_first)
    assert done_at_first == [False]  # first audio came before the reply was complete
    assert len(chunks) >= 3
    assert all(c.dtype == np.int16 for c in chunks)
    pcm = np.concatenate(chunks)
    assert len(pcm) == RATE
    assert peak_hz(pcm) == pytest.approx(1000, abs=2)
    # Streaming and one-shot conversion agree sample for sample.
    server.reply = Reply(body=body)
    assert np.array_equal(pcm, await tts.synthesize("hello"))
    assert json.loads(server.requests[0][3])["response_format"] == "pcm"


async def test_openai_stream_wav_with_unknown_length(
    server: FakeSpeechServer, make_client: Callable[..., OpenAISpeech]
) -> None:
    wav = bytearray(wav_bytes(16000, sine(16000, 1.0)))
    wav[4:8] = b"\xff\xff\xff\xff"  # streamed WAVs do not know their size
    wav[40:44] = b"\xff\xff\xff\xff"
    server.reply = Reply(content_type="audio/wav", body=bytes(wav), pieces=9)

    async def nothing() -> None:
        return None

    chunks = await collect(make_client().stream("hello"), nothing)
    assert len(chunks) >= 3
    pcm = np.concatenate(chunks)
    assert len(pcm) == RATE
    assert peak_hz(pcm) == pytest.approx(1000, abs=2)
