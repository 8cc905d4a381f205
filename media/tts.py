"""Text-to-speech engines: local eSpeak NG (through ctypes) and OpenAI-compatible HTTP.

Both implement :class:`media.speech.SpeechSynthesizer` and hand back 8 kHz int16 mono
PCM; the engines' native rates (22050 Hz for eSpeak, 24 kHz for OpenAI's ``pcm``
format, whatever a WAV header says) are converted by a small private resampler: a
windowed-sinc low-pass FIR at the input rate followed by linear interpolation at the
output instants. The resampler keeps its state between chunks, so streamed audio is
continuous and the chunks add up to exactly what one-shot conversion gives.

libespeak-ng is a process-wide singleton and not thread-safe: every call into it runs
on one module-level worker thread (shared by all :class:`EspeakSynthesizer` objects,
which set their own voice/rate/pitch before each utterance), and the library is
initialised once per process, lazily, on that thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import struct
import threading
import wave
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from media.speech import SAMPLE_RATE, Pcm, SpeechError

__all__ = ["EspeakSynthesizer", "OpenAISpeech"]

ESPEAK_MAX_CHARS = 1000
OPENAI_MAX_CHARS = 4096  # the OpenAI speech endpoint's own input limit
OPENAI_PCM_RATE = 24000
_STREAM_CHUNK_S = 0.1  # streamed audio is resampled in pieces of at least this much
_ERROR_EXCERPT = 200


def _empty() -> Pcm:
    return np.zeros(0, dtype=np.int16)


# --------------------------------------------------------------------------- resampler

_FIR_TAPS = 129  # odd: symmetric, integer group delay
_CUTOFF_HZ = 3500.0  # below the 4 kHz Nyquist of the output, minus the transition band


def _lowpass(rate_in: int, rate_out: int) -> npt.NDArray[np.float64]:
    """Blackman-windowed sinc low-pass with unit DC gain."""
    cutoff = min(_CUTOFF_HZ / SAMPLE_RATE * rate_out, 0.4375 * rate_out) / rate_in
    n = np.arange(_FIR_TAPS, dtype=np.float64) - (_FIR_TAPS - 1) / 2
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(_FIR_TAPS)
    result: npt.NDArray[np.float64] = taps / taps.sum()
    return result


class _Resampler:
    """Streaming int16 mono resampler (downsampling) with exact sample bookkeeping.

    Output sample ``n`` is the low-passed input evaluated at input position
    ``n * rate_in / rate_out``; ``feed`` returns every output sample whose inputs have
    arrived and ``flush`` the rest (zero-padding the end), so the total output length
    is ``ceil(len(input) * rate_out / rate_in)`` however the input was split.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("sample rates must be positive")
        self._rate_in = rate_in
        self._rate_out = rate_out
        self._passthrough = rate_in == rate_out
        self._taps = _lowpass(rate_in, rate_out) if rate_in > rate_out else None
        self._half = _FIR_TAPS // 2 if self._taps is not None else 0
        # Input samples still needed; buf[0] is input index ``_buf_start`` (negative at
        # first: the filter's left context is zeros).
        self._buf: npt.NDArray[np.float64] = np.zeros(self._half, dtype=np.float64)
        self._buf_start = -self._half
        self._total_in = 0
        self._next_out = 0
        self._flushed = False

    def feed(self, samples: npt.NDArray[np.int16]) -> Pcm:
        if self._flushed:
            raise RuntimeError("resampler already flushed")
        if self._passthrough:
            return np.asarray(samples, dtype=np.int16).copy()
        self._total_in += len(samples)
        self._buf = np.concatenate([self._buf, samples.astype(np.float64)])
        return self._drain(limit=None)

    def flush(self) -> Pcm:
        if self._flushed:
            return _empty()
        self._flushed = True
        if self._passthrough:
            return _empty()
        self._buf = np.concatenate([self._buf, np.zeros(self._half + 2, dtype=np.float64)])
        # Emit every output instant inside the input's span.
        limit = -(-self._total_in * self._rate_out // self._rate_in)
        return self._drain(limit=limit)

    def process(self, samples: npt.NDArray[np.int16]) -> Pcm:
        """One-shot conversion of a whole signal."""
        return np.concatenate([self.feed(samples), self.flush()])

    def _drain(self, limit: int | None) -> Pcm:
        half = self._half
        n_buf = len(self._buf)
        if n_buf < 2 * half + 2:
            return _empty()
        if self._taps is not None:
            filtered = np.convolve(self._buf, self._taps, mode="valid")
        else:  # upsampling: interpolation alone
            filtered = self._buf
        # filtered[j] is the low-passed input at index first + j.
        first = self._buf_start + half
        last = first + len(filtered) - 1
        # Output n needs input indices floor(t) and floor(t) + 1, t = n * rin / rout.
        rin, rout = self._rate_in, self._rate_out
        n_end = (last - 1) * rout // rin + 1  # outputs 0..n_end-1 satisfy floor(t)+1 <= last
        if limit is not None:
            n_end = min(n_end, limit)
        n_start = self._next_out
        if n_end <= n_start:
            return _empty()
        n = np.arange(n_start, n_end, dtype=np.int64)
        pos = n * rin
        base = pos // rout
        frac = (pos % rout).astype(np.float64) / rout
        idx = base - first
        out = filtered[idx] * (1.0 - frac) + filtered[idx + 1] * frac
        self._next_out = n_end
        # Keep only what the next output still needs (its floor(t) minus the filter half).
        keep_from = self._next_out * rin // rout - half - self._buf_start
        if keep_from > 0:
            self._buf = self._buf[keep_from:]
            self._buf_start += keep_from
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _resample(samples: npt.NDArray[np.int16], rate_in: int) -> Pcm:
    return _Resampler(rate_in).process(samples)


# --------------------------------------------------------------------------- eSpeak NG

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_BUFLENGTH_MS = 200

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakEngine:
    """The loaded library; only ever touched from the worker thread."""

    def __init__(self) -> None:
        try:
            import espeakng_loader

            lib_path = str(espeakng_loader.get_library_path())
            data_path = str(espeakng_loader.get_data_path())
            lib = ctypes.CDLL(lib_path)
        except (ImportError, OSError, RuntimeError) as exc:
            raise SpeechError(f"espeak-ng: cannot load the library: {exc}") from exc
        lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_GetParameter.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.espeak_GetParameter.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            _BUFLENGTH_MS,
            data_path.encode(),
            _INITIALIZE_DONT_EXIT,
        )
        if rate <= 0:
            raise SpeechError(f"espeak-ng: initialisation failed ({rate}), data {data_path}")
        self._lib = lib
        self.sample_rate = int(rate)
        # Parameters outlive voice changes, so "no pitch given" must restore the default.
        self._default_pitch = int(lib.espeak_GetParameter(_PARAM_PITCH, 1))
        self._chunks: list[bytes] = []
        self._callback = _SynthCallback(self._on_audio)  # kept alive with the engine
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, numsamples: int, _events: Any) -> int:
        if wav and numsamples > 0:
            self._chunks.append(ctypes.string_at(wav, numsamples * 2))
        return 0  # continue

    def synth(self, text: str, voice: str, rate_wpm: int, pitch: int | None) -> bytes:
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise SpeechError(f"espeak-ng: unknown voice {voice!r}")
        # Parameters are global and survive espeak_SetVoiceByName: always set them all.
        lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, self._default_pitch if pitch is None else pitch, 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        try:
            status = lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status != _EE_OK:
                raise SpeechError(f"espeak-ng: espeak_Synth failed ({status})")
            lib.espeak_Synchronize()
            return b"".join(self._chunks)
        finally:
            self._chunks = []


_engine: _EspeakEngine | None = None
_engine_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _espeak_executor() -> ThreadPoolExecutor:
    """The one thread that talks to libespeak-ng (process-wide, never shut down)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        return _executor


def _espeak_engine() -> _EspeakEngine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _EspeakEngine()
        return _engine


def _espeak_job(text: str, voice: str, rate_wpm: int, pitch: int | None) -> Pcm:
    engine = _espeak_engine()
    raw = engine.synth(text, voice, rate_wpm, pitch)
    samples = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if len(samples) == 0:
        return _empty()
    return _resample(samples, engine.sample_rate)


class EspeakSynthesizer:
    """Local formant TTS with eSpeak NG: robotic but instant (hundreds of times real time)."""

    def __init__(self, voice: str = "en-us", rate_wpm: int = 170, pitch: int | None = None) -> None:
        if not 80 <= rate_wpm <= 450:
            raise ValueError("rate_wpm must be within 80..450")
        if pitch is not None and not 0 <= pitch <= 100:
            raise ValueError("pitch must be within 0..100")
        if not voice or "\0" in voice:
            raise ValueError("voice must be a non-empty name")
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.pitch = pitch
        self._closed = False

    async def synthesize(self, text: str) -> Pcm:
        if self._closed:
            raise SpeechError("espeak-ng: synthesizer is closed")
        text = text.replace("\0", " ").strip()[:ESPEAK_MAX_CHARS]
        if not text:
            return _empty()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            _espeak_executor(), _espeak_job, text, self.voice, self.rate_wpm, self.pitch
        )

    async def aclose(self) -> None:
        # The library and its thread are shared by the whole process and stay up.
        self._closed = True


# --------------------------------------------------------------------------- OpenAI

_WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")


def _is_wav(content_type: str, head: bytes) -> bool:
    ctype = content_type.split(";", 1)[0].strip().lower()
    return ctype in _WAV_TYPES or head[:4] == b"RIFF"


def _pcm16_mono(raw: bytes, channels: int) -> npt.NDArray[np.int16]:
    usable = len(raw) - len(raw) % (2 * channels)
    samples = np.frombuffer(raw[:usable], dtype="<i2").astype(np.int16)
    if channels > 1:
        mixed = samples.reshape(-1, channels).astype(np.int32).mean(axis=1)
        samples = np.rint(mixed).astype(np.int16)
    return samples


def _decode_wav(body: bytes) -> tuple[npt.NDArray[np.int16], int]:
    try:
        with wave.open(io.BytesIO(body), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, struct.error) as exc:
        raise SpeechError(f"tts: unreadable WAV reply: {exc}") from exc
    if width != 2:
        raise SpeechError(f"tts: unsupported WAV sample width {width * 8} bits")
    return _pcm16_mono(frames, channels), rate


class _WavStreamHeader:
    """Incremental RIFF/WAVE header parser for a streamed reply (data size ignored)."""

    def __init__(self) -> None:
        self.rate = 0
        self.channels = 0

    def parse(self, buf: bytes) -> int | None:
        """Offset of the first sample once the header is complete, else None."""
        if len(buf) < 12:
            return None
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise SpeechError("tts: streamed reply is not RIFF/WAVE")
        off = 12
        while len(buf) >= off + 8:
            cid = buf[off : off + 4]
            (size,) = struct.unpack("<I", buf[off + 4 : off + 8])
            if cid == b"data":
                if not self.rate:
                    raise SpeechError("tts: WAV data before its fmt chunk")
                return off + 8
            if len(buf) < off + 8 + size:
                return None
            if cid == b"fmt ":
                if size < 16:
                    raise SpeechError("tts: short WAV fmt chunk")
                _fmt, channels, rate, _brate, _align, bits = struct.unpack(
                    "<HHIIHH", buf[off + 8 : off + 24]
                )
                if bits != 16 or channels < 1 or rate <= 0:
                    raise SpeechError(f"tts: unsupported WAV format ({bits} bits, {channels} ch)")
                self.rate, self.channels = rate, channels
            off += 8 + size + (size & 1)
        return None


class OpenAISpeech:
    """OpenAI-compatible ``/v1/audio/speech`` client (OpenAI, or a local server speaking it)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str = "tts-1",
        voice: str = "alloy",
        timeout_s: float = 15.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/audio/speech"
        self.model = model
        self.voice = voice
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()

    def _payload(self, text: str) -> dict[str, str]:
        return {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"}

    @staticmethod
    def _clean(text: str) -> str:
        return text.strip()[:OPENAI_MAX_CHARS]

    @staticmethod
    def _status_error(status: int, body: bytes) -> SpeechError:
        excerpt = body[:_ERROR_EXCERPT].decode("utf-8", "replace").strip()
        return SpeechError(f"tts: HTTP {status} from speech endpoint: {excerpt}")

    async def synthesize(self, text: str) -> Pcm:
        text = self._clean(text)
        if not text:
            return _empty()
        try:
            resp = await self._client.post(
                self.url, json=self._payload(text), headers=self._headers, timeout=self.timeout_s
            )
        except httpx.HTTPError as exc:
            raise SpeechError(f"tts: request failed: {exc!r}") from exc
        body = resp.content
        if not resp.is_success:
            raise self._status_error(resp.status_code, body)
        if _is_wav(resp.headers.get("content-type", ""), body):
            samples, rate = _decode_wav(body)
        else:
            samples, rate = _pcm16_mono(body, 1), OPENAI_PCM_RATE
        if len(samples) == 0:
            return _empty()
        return _resample(samples, rate)

    async def stream(self, text: str) -> AsyncIterator[Pcm]:
        """Yield 8 kHz chunks (≥ ~100 ms each, except the last) as the reply arrives."""
        text = self._clean(text)
        if not text:
            return
        try:
            async with self._client.stream(
                "POST",
                self.url,
                json=self._payload(text),
                headers=self._headers,
                timeout=self.timeout_s,
            ) as resp:
                if not resp.is_success:
                    body = await resp.aread()
                    raise self._status_error(resp.status_code, body)
                ctype = resp.headers.get("content-type", "")
                pending = b""
                header: _WavStreamHeader | None = None
                resampler: _Resampler | None = None
                channels = 1
                min_bytes = 0
                async for piece in resp.aiter_bytes():
                    pending += piece
                    if resampler is None:
                        if header is None and len(pending) < 4 and not _is_wav(ctype, b""):
                            continue  # need the first bytes to tell WAV from raw PCM
                        if header is None and _is_wav(ctype, pending):
                            header = _WavStreamHeader()
                        if header is not None:
                            start = header.parse(pending)
                            if start is None:
                                continue
                            pending = pending[start:]
                            rate, channels = header.rate, header.channels
                        else:
                            rate, channels = OPENAI_PCM_RATE, 1
                        resampler = _Resampler(rate)
                        min_bytes = max(2 * channels, int(rate * _STREAM_CHUNK_S) * 2 * channels)
                    if len(pending) >= min_bytes:
                        usable = len(pending) - len(pending) % (2 * channels)
                        out = resampler.feed(_pcm16_mono(pending[:usable], channels))
                        pending = pending[usable:]
                        if len(out):
                            yield out
                if resampler is None:  # tiny or header-only body
                    if header is not None or not pending:
                        return
                    resampler = _Resampler(OPENAI_PCM_RATE)
                out = np.concatenate(
                    [resampler.feed(_pcm16_mono(pending, channels)), resampler.flush()]
                )
                if len(out):
                    yield out
        except httpx.HTTPError as exc:
            raise SpeechError(f"tts: request failed: {exc!r}") from exc

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()
