"""A fake OpenAI-compatible HTTP server, for end-to-end tests of the node's network providers.

The real providers are paid external APIs; this speaks their wire formats on 127.0.0.1
so a ``voxswitch serve`` child process can use its real HTTP clients against it:

- ``POST /v1/audio/transcriptions``: multipart form (``file`` = a WAV, ``model``,
  ``response_format``) → ``{"text": asr_text}``;
- ``POST /v1/chat/completions``: JSON with ``"stream": true`` → server-sent events
  (``data: {chunk}`` …, ``data: [DONE]``), chunked, with small delays between chunks.
  A last user message containing "goodbye" gets "Goodbye!" and a ``hang_up`` tool call
  whose name and arguments arrive in several fragments; anything else gets
  "It is cold on Mars. " then "Bring a coat."; ``chat_status`` other than 200 makes
  it answer that HTTP status with an error body instead;
- ``POST /v1/audio/speech``: JSON → raw 24 kHz s16le mono PCM: a tone whose frequency
  says which text it is (:func:`tone_hz`), :data:`MS_PER_CHAR` per character (at most
  :data:`MAX_TONE_S`), so a test can find each synthesized sentence in what a phone
  heard.

Every endpoint checks ``Authorization: Bearer <its key>`` and the request's shape; what
is wrong is answered 400/401 *and* kept in :attr:`FakeOpenAI.problems` for the test to
assert empty. Requests are recorded (:attr:`FakeOpenAI.requests`). The server runs on an
event loop of its own in a daemon thread; every response closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
import traceback
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

TTS_RATE = 24000  # OpenAI's response_format "pcm": 24 kHz, 16-bit, mono, little-endian
MS_PER_CHAR = 60
MAX_TONE_S = 3.0
TONE_LEVEL = 0.3
GREETING_HZ = 600.0
DEFAULT_HZ = 900.0
TONES_HZ = {
    "Hello! How can I help you today?": GREETING_HZ,
    "It is cold on Mars.": 900.0,
    "Bring a coat.": 1200.0,
    "Goodbye!": 750.0,
}
WEATHER_REPLY = ("It is cold on Mars. ", "Bring a coat.")
GOODBYE_REPLY = "Goodbye!"
HANG_UP_REASON = "caller said goodbye"
TOOLS = ("hang_up", "transfer", "send_dtmf")
CHUNK_DELAY_S = 0.05  # between two SSE events
TTS_DELAY_S = 0.02  # before a speech reply

TRANSCRIPTIONS = "/v1/audio/transcriptions"
CHAT = "/v1/chat/completions"
SPEECH = "/v1/audio/speech"


def tone_hz(text: str) -> float:
    """The frequency of the tone the fake says ``text`` with."""
    return TONES_HZ.get(text.strip(), DEFAULT_HZ)


def tone_seconds(text: str) -> float:
    return min(MAX_TONE_S, MS_PER_CHAR * len(text.strip()) / 1000.0)


def tone_pcm(text: str) -> npt.NDArray[np.int16]:
    """24 kHz int16: the tone for ``text``, 5 ms fades at both ends."""
    n = round(tone_seconds(text) * TTS_RATE)
    t = np.arange(n) / TTS_RATE
    wave_ = TONE_LEVEL * 32767 * np.sin(2 * np.pi * tone_hz(text) * t)
    fade = min(n // 2, round(0.005 * TTS_RATE))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave_[:fade] *= ramp
        wave_[n - fade :] *= ramp[::-1]
    return np.round(wave_).astype(np.int16)


@dataclass
class WavInfo:
    channels: int
    sample_width: int
    rate: int
    pcm: npt.NDArray[np.int16]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate


@dataclass
class Recorded:
    """One request the fake answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()
    json: Any = None  # JSON endpoints
    form: dict[str, str] = field(default_factory=dict)  # multipart text fields
    filename: str | None = None  # multipart ``file`` part
    wav: WavInfo | None = None  # the ``file`` part, parsed
    status: int = 0  # what the fake answered
    finished_at: float | None = None  # time.monotonic() when the response was complete


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FakeOpenAI:
    """The fake server; ``keys`` maps an endpoint path to the API key it wants."""

    def __init__(self, keys: dict[str, str], *, chat_model: str, asr_model: str,
                 tts_model: str, tts_voice: str) -> None:  # fmt: skip
        self.keys = dict(keys)
        self.chat_model = chat_model
        self.asr_model = asr_model
        self.tts_model = tts_model
        self.tts_voice = tts_voice
        # What the test sets (plain attribute writes; the server thread only reads them).
        self.asr_text = "what is the weather on mars"
        self.chat_status = 200
        self.requests: list[Recorded] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 5.0) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or not self.port:
            raise RuntimeError(f"fake OpenAI server not listening after {timeout_s} s")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    # ---- what the tests read -----------------------------------------------------------

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def describe(self) -> str:
        with self._lock:
            lines = [f"{r.path} -> {r.status}: {_summary(r)}" for r in self.requests]
            problems = list(self.problems)
        text = "--- fake OpenAI requests ---\n" + "\n".join(lines)
        if problems:
            text += "\n--- fake OpenAI problems ---\n" + "\n".join(problems)
        return text

    # ---- HTTP --------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if "content-length" not in headers:
                body = b""
                self._problem(f"{target}: request without Content-Length ({headers})")
            else:
                body = await reader.readexactly(int(headers["content-length"]))
            record = Recorded(target, headers, body, time.monotonic())
            with self._lock:
                self.requests.append(record)
            try:
                if method != "POST":
                    raise BadRequest(405, f"{method} {target}: only POST is served")
                self._check_key(record)
                if target == TRANSCRIPTIONS:
                    await self._transcriptions(record, writer)
                elif target == CHAT:
                    await self._chat(record, writer)
                elif target == SPEECH:
                    await self._speech(record, writer)
                else:
                    raise BadRequest(404, f"no such endpoint: {target}")
                record.finished_at = time.monotonic()
            except BadRequest as exc:
                self._problem(f"{target}: {exc}")
                record.status = exc.status
                await _send(writer, exc.status, "application/json", _error_body(str(exc)))
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            self._problem(f"connection: {type(exc).__name__}: {exc}")
        except Exception:
            self._problem("fake server crashed:\n" + traceback.format_exc())
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def _check_key(self, record: Recorded) -> None:
        want = self.keys.get(record.path)
        got = record.headers.get("authorization")
        if want is not None and got != f"Bearer {want}":
            raise BadRequest(401, f"Authorization: want 'Bearer {want}', got {got!r}")

    async def _transcriptions(self, record: Recorded, writer: asyncio.StreamWriter) -> None:
        ctype = record.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise BadRequest(400, f"Content-Type {ctype!r}, want multipart/form-data")
        boundary = _param(ctype, "boundary")
        if not boundary:
            raise BadRequest(400, f"no boundary in {ctype!r}")
        files: dict[str, tuple[str | None, bytes]] = _multipart(record.body, boundary)
        for name, (filename, data) in files.items():
            if filename is None:
                record.form[name] = data.decode("utf-8", "replace")
        if "file" not in files or files["file"][0] is None:
            raise BadRequest(400, f"no 'file' part (parts: {sorted(files)})")
        record.filename = files["file"][0]
        record.wav = _parse_wav(files["file"][1])
        wav = record.wav
        if (wav.channels, wav.sample_width, wav.rate) != (1, 2, 8000):
            raise BadRequest(400, f"file: {wav.channels} ch, {wav.sample_width} B, {wav.rate} Hz")
        if record.form.get("model") != self.asr_model:
            raise BadRequest(400, f"model {record.form.get('model')!r}, want {self.asr_model!r}")
        if record.form.get("response_format", "json") != "json":
            raise BadRequest(400, f"response_format {record.form['response_format']!r}")
        record.status = 200
        body = json.dumps({"text": self.asr_text}).encode()
        await _send(writer, 200, "application/json", body)

    async def _chat(self, record: Recorded, writer: asyncio.StreamWriter) -> None:
        request = _json_body(record)
        problems = []
        if request.get("stream") is not True:
            problems.append(f"stream = {request.get('stream')!r}, want true")
        if request.get("model") != self.chat_model:
            problems.append(f"model {request.get('model')!r}, want {self.chat_model!r}")
        names = {
            (t.get("function") or {}).get("name")
            for t in request.get("tools") or []
            if isinstance(t, dict) and t.get("type") == "function"
        }
        if not set(TOOLS) <= names:
            problems.append(f"tools {sorted(map(str, names))}, want {list(TOOLS)}")
        messages = request.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            problems.append(f"messages: {messages!r}")
            messages = [{}]
        elif messages[0].get("role") != "system" or messages[-1].get("role") != "user":
            problems.append(f"messages must start with system and end with user: {messages!r}")
        if problems:
            raise BadRequest(400, "; ".join(problems))
        if self.chat_status != 200:
            record.status = self.chat_status
            body = _error_body("the fake model is down", kind="server_error")
            await _send(writer, self.chat_status, "application/json", body)
            return
        record.status = 200
        sse = _ChunkedWriter(writer)
        await sse.head(200, "text/event-stream")
        await sse.event(_chunk({"role": "assistant", "content": ""}))
        last = str(messages[-1].get("content", ""))
        if "goodbye" in last.lower():
            await sse.event(_chunk({"content": GOODBYE_REPLY}))
            first = {
                "index": 0,
                "id": "call_fake_1",
                "type": "function",
                "function": {"name": "hang_up", "arguments": ""},
            }
            await sse.event(_chunk({"tool_calls": [first]}))
            args = json.dumps({"reason": HANG_UP_REASON})
            for piece in (args[:7], args[7:19], args[19:]):
                frag = {"index": 0, "function": {"arguments": piece}}
                await sse.event(_chunk({"tool_calls": [frag]}))
            await sse.event(_chunk({}, finish="tool_calls"))
        else:
            for piece in WEATHER_REPLY:
                await sse.event(_chunk({"content": piece}))
            await sse.event(_chunk({}, finish="stop"))
        usage = {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}
        await sse.event({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                         "choices": [], "usage": usage})  # fmt: skip
        await sse.event("[DONE]", delay_s=0)
        await sse.end()

    async def _speech(self, record: Recorded, writer: asyncio.StreamWriter) -> None:
        request = _json_body(record)
        want = {"model": self.tts_model, "voice": self.tts_voice, "response_format": "pcm"}
        wrong = {k: request.get(k) for k, v in want.items() if request.get(k) != v}
        text = request.get("input")
        if wrong or not isinstance(text, str) or not text.strip():
            raise BadRequest(400, f"speech request {request!r}: want {want} and an input")
        await asyncio.sleep(TTS_DELAY_S)
        record.status = 200
        await _send(writer, 200, "application/octet-stream", tone_pcm(text).astype("<i2").tobytes())


# ---- helpers -------------------------------------------------------------------------


class _ChunkedWriter:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def head(self, status: int, content_type: str) -> None:
        self.writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n".encode()
        )
        await self.writer.drain()

    async def event(self, obj: dict[str, Any] | str, delay_s: float = CHUNK_DELAY_S) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        payload = f"data: {data}\n\n".encode()
        self.writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        await self.writer.drain()
        await asyncio.sleep(delay_s)

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 500: "Internal Server Error"}  # fmt: skip


async def _send(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes) -> None:
    writer.write(
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


def _error_body(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": None}}).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _json_body(record: Recorded) -> dict[str, Any]:
    ctype = record.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        raise BadRequest(400, f"Content-Type {ctype!r}, want application/json")
    try:
        body = json.loads(record.body)
    except ValueError as exc:
        raise BadRequest(400, f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(400, f"body is not a JSON object: {body!r}")
    record.json = body
    return body


def _param(header: str, name: str) -> str:
    for part in header.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return ""


def _multipart(body: bytes, boundary: str) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename or None, data) of a multipart/form-data body."""
    parts: dict[str, tuple[str | None, bytes]] = {}
    delimiter = b"--" + boundary.encode()
    sections = body.split(b"\r\n" + delimiter)
    if not sections[0].startswith(delimiter):
        raise BadRequest(400, "multipart body does not start with the boundary")
    sections[0] = sections[0][len(delimiter) :]
    for section in sections:
        if section.startswith(b"--"):
            break  # the closing delimiter
        head, sep, data = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest(400, f"multipart part without headers: {section[:80]!r}")
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        name = _param(disposition, "name")
        filename = _param(disposition, "filename") if "filename=" in disposition else None
        if not name:
            raise BadRequest(400, f"multipart part without a name: {head!r}")
        parts[name] = (filename, data)
    return parts


def _parse_wav(data: bytes) -> WavInfo:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise BadRequest(400, f"file is not a RIFF WAVE: {data[:12]!r}")
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            info = (w.getnchannels(), w.getsampwidth(), w.getframerate())
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise BadRequest(400, f"file: bad WAV: {exc}") from exc
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.int16) if info[1] == 2 else np.zeros(0)
    return WavInfo(*info, pcm=pcm.astype(np.int16))


def _summary(record: Recorded) -> str:
    if record.wav is not None:
        return f"{record.filename} {record.wav.seconds:.2f} s, form {record.form}"
    if isinstance(record.json, dict):
        if "messages" in record.json:
            return f"messages {record.json['messages']!r}"
        return f"input {record.json.get('input')!r}"
    return f"{len(record.body)} bytes"
