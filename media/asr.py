"""Speech recognition engines: local PocketSphinx and OpenAI-compatible HTTP.

Both implement :class:`media.speech.SpeechRecognizer` and take 8 kHz int16 mono PCM.

PocketSphinx is the built-in engine: CPU only, accurate only in-domain, and about
50 MB per decoder process with an in-domain model (~135 MB with the general one).
Given the phrases the agent expects to hear, :class:`PocketSphinxRecognizer` builds
a small trigram language model (:func:`build_language_model`, Witten-Bell smoothing,
ARPA text) and a matching pronunciation dictionary
(:func:`build_dictionary`, entries from the CMU dictionary bundled with pocketsphinx),
so the decoder only ever chooses among the agent's own words. Without phrases it uses
the bundled general US-English model.

Decoders are shared by every call on the node: a fixed pool (an ``asyncio.Queue`` of
idle decoders), so a burst of utterances queues instead of piling up work. pocketsphinx
holds the GIL while it loads a model and while it decodes, so each decoder lives in a
child process of its own (started on first use, or up front with
:meth:`PocketSphinxRecognizer.warm_up`); a dedicated thread pool of the same size waits
on the workers' pipes. The event loop never blocks, and decoders use separate cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import math
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from media.g2p import guess_pronunciation
from media.speech import SAMPLE_RATE, Pcm, SpeechError, Transcript

__all__ = [
    "OpenAITranscriber",
    "PocketSphinxRecognizer",
    "build_dictionary",
    "build_language_model",
    "phrase_words",
]

log = logging.getLogger(__name__)

SENTENCE_START = "<s>"
SENTENCE_END = "</s>"
DECODER_RATE = 16000  # the bundled acoustic model's rate
_ERROR_EXCERPT = 200
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_NO_PROB = -99.0  # ARPA convention for "never predicted" (<s>)
SILENCE_RMS = 30.0  # about -60 dBFS: below this an utterance is not decoded at all


# --------------------------------------------------------------------------- LM + dict


ONES_WORDS = _ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> list[str]:
    """0..999 as spoken ("42" -> forty two); larger numbers digit by digit."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        rest = n % 100
        return [_ONES[n // 100], "hundred"] + (number_words(rest) if rest else [])
    return [_ONES[int(d)] for d in str(n)]


def phrase_words(phrase: str) -> list[str]:
    """The words of a phrase as the LM and dictionary see them: lower-case, no
    punctuation, numbers spelled out (callers say "eleven", not "11")."""
    words: list[str] = []
    for word in _WORD_RE.findall(phrase.lower()):
        if word.isdigit():
            words += number_words(int(word))
        else:
            words.append(word)
    return words


def build_language_model(phrases: Iterable[str], order: int = 3) -> str:
    """An ARPA back-off language model (log10) of ``order`` (1..3) trained on ``phrases``.

    Each phrase is one sentence, wrapped in ``<s>`` … ``</s>``. Smoothing is interpolated
    Witten-Bell, written out in back-off form: a listed n-gram carries its interpolated
    probability and every history the back-off weight ``T(h) / (c(h) + T(h))`` (``T`` =
    distinct words seen after ``h``), which makes each conditional distribution sum to 1.
    The unigram level is interpolated with the uniform distribution over the vocabulary.
    """
    if not 1 <= order <= 3:
        raise ValueError("order must be 1, 2 or 3")
    sentences = [words for words in map(phrase_words, phrases) if words]
    if not sentences:
        raise ValueError("no words in the phrases: cannot build a language model")

    # counts[k][ngram] for k-grams (tuples), k = 1..order; <s> is never predicted.
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]
    for words in sentences:
        tokens = [SENTENCE_START, *words, SENTENCE_END]
        for k in range(1, order + 1):
            for i in range(len(tokens) - k + 1):
                gram = tuple(tokens[i : i + k])
                if gram[-1] != SENTENCE_START:
                    counts[k][gram] += 1

    # Per history h (a (k-1)-tuple): c(h) = tokens seen after h, T(h) = distinct words.
    hist_total: dict[tuple[str, ...], int] = defaultdict(int)
    hist_types: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, order + 1):
        for gram, c in counts[k].items():
            hist_total[gram[:-1]] += c
            hist_types[gram[:-1]] += 1

    vocab = sorted({g[0] for g in counts[1]})  # includes </s>, not <s>
    probs: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    uniform = 1.0 / len(vocab)

    def interpolated(gram: tuple[str, ...]) -> float:
        k = len(gram)
        if k == 0:
            return uniform
        known = probs[k].get(gram)
        if known is not None:
            return known
        h = gram[:-1]
        c_h, t_h = hist_total.get(h, 0), hist_types.get(h, 0)
        lower = interpolated(gram[1:])
        if c_h == 0:
            return lower
        return (counts[k].get(gram, 0) + t_h * lower) / (c_h + t_h)

    for k in range(1, order + 1):
        for gram in sorted(counts[k]):
            probs[k][gram] = interpolated(gram)

    def backoff(gram: tuple[str, ...]) -> float | None:
        if len(gram) >= order or gram not in hist_types:
            return None
        t_h = hist_types[gram]
        return math.log10(t_h / (hist_total[gram] + t_h))

    def line(logp: float, gram: tuple[str, ...]) -> str:
        text = f"{logp:.6f}\t{' '.join(gram)}"
        bow = backoff(gram)
        return text if bow is None else f"{text}\t{bow:.6f}"

    unigrams = [((SENTENCE_START,), _NO_PROB)]
    unigrams += [((w,), math.log10(probs[1][(w,)])) for w in vocab]
    unigrams.sort(key=lambda item: item[0])
    sizes = [len(unigrams)] + [len(probs[k]) for k in range(2, order + 1)]

    out = ["\\data\\"]
    out += [f"ngram {k}={n}" for k, n in enumerate(sizes, start=1)]
    out += ["", "\\1-grams:"]
    out += [line(logp, gram) for gram, logp in unigrams]
    for k in range(2, order + 1):
        out += ["", f"\\{k}-grams:"]
        out += [line(math.log10(p), gram) for gram, p in probs[k].items()]
    out += ["", "\\end\\", ""]
    return "\n".join(out)


@functools.lru_cache(maxsize=4)
def _pronunciations(base_dict_path: str) -> dict[str, tuple[str, ...]]:
    """word -> its dictionary lines (``word PH ...`` and alternates ``word(2) PH ...``)."""
    entries: dict[str, list[str]] = defaultdict(list)
    with open(base_dict_path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            text = raw.strip()
            if not text or text.startswith(";;;"):
                continue
            head = text.split(maxsplit=1)[0]
            word = head.split("(", 1)[0] if head.endswith(")") else head
            entries[word.lower()].append(text)
    return {word: tuple(lines) for word, lines in entries.items()}


def default_dictionary_path() -> str:
    import pocketsphinx

    return str(pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"))


# Words of our own that cmudict lacks (ARPAbet, as in cmudict).
EXTRA_PRONUNCIATIONS = {"voxswitch": "V AA K S S W IH CH"}


def build_dictionary(words: Iterable[str], base_dict_path: str | Path | None = None) -> str:
    """Pronunciation dictionary text for ``words``, taken from ``base_dict_path``.

    Defaults to pocketsphinx's bundled ``cmudict-en-us.dict``; alternate pronunciations
    are kept. A word it lacks (an agent's brand or place name) gets a guessed one
    (:mod:`media.g2p`: dictionary words it is glued from, else spelling rules), so
    callers saying it are heard; only a word with nothing to read is left out.
    """
    path = str(base_dict_path) if base_dict_path is not None else default_dictionary_path()
    table = _pronunciations(path)

    def known(word: str) -> str | None:
        entry = table.get(word)
        return entry[0].split(maxsplit=1)[1] if entry else EXTRA_PRONUNCIATIONS.get(word)

    lines: list[str] = []
    guessed: list[str] = []
    missing: list[str] = []
    for word in sorted({w.lower() for w in words}):
        entry = table.get(word)
        if entry is None:
            phones = guess_pronunciation(word, known)
            if phones is None:
                missing.append(word)
                continue
            if word not in EXTRA_PRONUNCIATIONS:
                guessed.append(f"{word} ({phones})")
            entry = (f"{word} {phones}",)
        lines.extend(entry)
    if guessed:
        log.info("asr: guessed pronunciations for %s", ", ".join(guessed))
    if missing:
        log.warning("asr: no pronunciation for %s; left out of the model", ", ".join(missing))
    return "\n".join(lines) + ("\n" if lines else "")


# --------------------------------------------------------------------------- resampling

_UP_TAPS = 63  # odd: symmetric filter, delay exactly (taps - 1) / 2


def _upsample_filter() -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc, cut-off 3.8 kHz at 16 kHz, gain 2 (undoes zero-stuffing)."""
    n = np.arange(_UP_TAPS, dtype=np.float64) - (_UP_TAPS - 1) / 2
    cutoff = 3800.0 / DECODER_RATE
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(_UP_TAPS, 8.0)
    result: npt.NDArray[np.float64] = 2.0 * taps / taps.sum()
    return result


_UP_FIR = _upsample_filter()


def rms(pcm: Pcm) -> float:
    samples = pcm.astype(np.float64)
    return math.sqrt(float(np.dot(samples, samples)) / len(samples))


def _upsample_8k_to_16k(pcm: Pcm) -> npt.NDArray[np.int16]:
    """2x interpolation: zero-stuff, then low-pass (removes the 4-8 kHz image)."""
    stuffed = np.zeros(2 * len(pcm), dtype=np.float64)
    stuffed[::2] = pcm
    out = np.convolve(stuffed, _UP_FIR, mode="same")
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- PocketSphinx

# pocketsphinx holds the GIL while it builds a decoder (~0.3 s) and while it decodes
# (process_raw does a whole utterance in one call), so a decoder on a thread would
# still freeze the event loop. Each decoder therefore lives in a worker process of its
# own; the recognizer's threads only wait on pipes, which releases the GIL.

_STOP = 0  # a request of length 0: exit
_HEADER = struct.Struct("<I")  # every message: byte length, then the payload
_OK, _FAILED = b"+", b"-"  # first byte of a reply


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    """Blocking read of exactly ``n`` bytes (EOFError on end of file, TimeoutError)."""
    parts: list[bytes] = []
    while n > 0:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _write_message(fd: int, payload: bytes) -> None:
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def _worker_main(config_json: str) -> None:
    """Decoder process (``python -c``): one decoder, PCM in on stdin, text out on stdout."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints from C code must not corrupt the protocol
    in_fd = 0

    def reply(status: bytes, text: str) -> None:
        _write_message(out_fd, status + text.encode("utf-8"))

    import pocketsphinx

    try:
        decoder = pocketsphinx.Decoder(**json.loads(config_json))
    except Exception as exc:
        reply(_FAILED, f"cannot create a pocketsphinx decoder: {exc}")
        return
    reply(_OK, str(os.getpid()))
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exact(in_fd, _HEADER.size, None))
            if size == _STOP:
                return
            request = _read_exact(in_fd, size, None)
        except (EOFError, OSError):
            return  # the parent went away
        try:
            pcm = np.frombuffer(request, dtype="<i2").astype(np.int16)
            audio = _upsample_8k_to_16k(pcm).astype("<i2").tobytes()
            decoder.start_utt()
            try:
                decoder.process_raw(audio, no_search=False, full_utt=True)
            finally:
                decoder.end_utt()
            hyp = decoder.hyp()
            # hypstr carries words only (fillers such as <sil> are left out).
            reply(_OK, "" if hyp is None else " ".join(hyp.hypstr.lower().split()))
        except Exception as exc:
            reply(_FAILED, f"pocketsphinx failed: {exc}")


_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
_WORKER_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from media.asr import _worker_main; _worker_main(sys.argv[2])"
)


class _Worker:
    """One decoder in a child process; used by one executor thread at a time."""

    def __init__(self, config: dict[str, Any], start_timeout_s: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, _PROJECT_ROOT, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin
        self._out_fd = self.process.stdout.fileno()
        try:
            self.pid = int(self._receive(start_timeout_s))
        except (SpeechError, ValueError):
            self.close()
            raise

    def _receive(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        try:
            (size,) = _HEADER.unpack(_read_exact(self._out_fd, _HEADER.size, deadline))
            payload = _read_exact(self._out_fd, size, deadline)
        except TimeoutError:
            raise SpeechError(f"asr: decoder process gave no answer in {timeout_s:g} s") from None
        except (EOFError, OSError) as exc:
            raise SpeechError(f"asr: decoder process died ({self.process.poll()})") from exc
        text = payload[1:].decode("utf-8", "replace")
        if payload[:1] != _OK:
            raise SpeechError(f"asr: {text}")
        return text

    def decode(self, pcm: Pcm, timeout_s: float) -> str:
        audio = np.asarray(pcm, dtype="<i2").tobytes()
        try:
            self._in.write(_HEADER.pack(len(audio)) + audio)
            self._in.flush()
        except OSError as exc:
            raise SpeechError(f"asr: decoder process died ({self.process.poll()})") from exc
        return self._receive(timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Blocking: ask the process to exit, kill it if it does not."""
        with contextlib.suppress(OSError, ValueError):
            self._in.write(_HEADER.pack(_STOP))
            self._in.flush()
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)
        if self.process.stdout is not None:
            self.process.stdout.close()


class PocketSphinxRecognizer:
    """Local recogniser: a pool of ``pool_size`` pocketsphinx decoders shared by all calls.

    With ``phrases``, the decoders use an in-domain trigram LM and dictionary built from
    them (out-of-dictionary words are dropped with a warning); otherwise pocketsphinx's
    general US-English LM. Each decoder runs in a worker process of its own (started on
    first use, or by :meth:`warm_up`); a worker that fails or exceeds ``decode_timeout_s``
    is replaced. ``elapsed_s`` of a transcript includes waiting for a free decoder.
    """

    def __init__(
        self,
        phrases: Sequence[str] | None = None,
        pool_size: int = 2,
        *,
        decode_timeout_s: float = 30.0,
        start_timeout_s: float = 60.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        import pocketsphinx

        self.pool_size = pool_size
        self.decode_timeout_s = decode_timeout_s
        self.start_timeout_s = start_timeout_s
        self._config: dict[str, Any] = {
            "hmm": pocketsphinx.get_model_path("en-us/en-us"),
            "samprate": DECODER_RATE,
            "loglevel": "FATAL",
        }
        self._tmpdir: str | None = None
        self.vocabulary: frozenset[str] | None = None
        if phrases is not None:
            self._setup_domain(phrases)
        # Threads that wait on the workers' pipes (one per decoder).
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="asr")
        # Idle decoders; None = a worker not started yet (or replaced after a failure).
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        for _ in range(pool_size):
            self._idle.put_nowait(None)
        self._workers: set[_Worker] = set()  # every live worker, idle or busy
        self._workers_lock = threading.Lock()  # the set is touched from executor threads
        self._closed = False

    def _setup_domain(self, phrases: Sequence[str]) -> None:
        words = {w for p in phrases for w in phrase_words(p)}
        dict_text = build_dictionary(words)
        known = frozenset(
            line.split(maxsplit=1)[0].split("(", 1)[0] for line in dict_text.splitlines()
        )
        kept = [" ".join(w for w in phrase_words(p) if w in known) for p in phrases]
        lm_text = build_language_model(kept)  # ValueError when no word survived
        self._tmpdir = tempfile.mkdtemp(prefix="voxswitch-asr-")
        # Removed by aclose(), or when the recognizer is collected without one.
        self._tmp_cleanup = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        lm_path = Path(self._tmpdir) / "domain.lm"
        dict_path = Path(self._tmpdir) / "domain.dict"
        lm_path.write_text(lm_text, encoding="utf-8")
        dict_path.write_text(dict_text, encoding="utf-8")
        self._config["lm"] = str(lm_path)
        self._config["dict"] = str(dict_path)
        self.vocabulary = known

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the decoder workers started so far."""
        with self._workers_lock:
            return sorted(w.pid for w in self._workers)

    def _start_worker(self) -> _Worker:
        worker = _Worker(self._config, self.start_timeout_s)
        with self._workers_lock:
            self._workers.add(worker)
        return worker

    def _job(self, worker: _Worker | None, pcm: Pcm) -> tuple[_Worker, str]:
        """Runs on an executor thread; blocks on the worker's pipe (GIL released)."""
        if worker is None:
            worker = self._start_worker()
        try:
            return worker, worker.decode(pcm, self.decode_timeout_s)
        except SpeechError:
            self._discard(worker)
            raise

    def _discard(self, worker: _Worker) -> None:
        with self._workers_lock:
            self._workers.discard(worker)
        worker.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SpeechError("asr: recognizer is closed")

    async def warm_up(self) -> None:
        """Start every decoder now instead of on first use (each takes ~1 s of a core)."""
        self._check_open()
        taken = [await self._idle.get() for _ in range(self.pool_size)]
        loop = asyncio.get_running_loop()
        try:
            missing = [i for i, w in enumerate(taken) if w is None]
            started = await asyncio.gather(
                *(loop.run_in_executor(self._executor, self._start_worker) for _ in missing),
                return_exceptions=True,
            )
            for i, result in zip(missing, started, strict=True):
                if isinstance(result, _Worker):
                    taken[i] = result
            errors = [r for r in started if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        finally:
            for worker in taken:
                self._idle.put_nowait(worker)

    async def transcribe(self, pcm: Pcm) -> Transcript:
        self._check_open()
        started = time.perf_counter()
        pcm = np.ascontiguousarray(pcm, dtype=np.int16)
        if len(pcm) == 0 or rms(pcm) < SILENCE_RMS:
            # The decoder would force some in-vocabulary word onto pure silence.
            return Transcript(text="", elapsed_s=time.perf_counter() - started)
        worker = await self._idle.get()
        try:
            self._check_open()  # closed while we waited
        except SpeechError:
            self._idle.put_nowait(worker)
            raise
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self._executor, self._job, worker, pcm)
        except RuntimeError as exc:  # executor shut down meanwhile
            self._idle.put_nowait(worker)
            raise SpeechError("asr: recognizer is closed") from exc
        try:
            worker, text = await asyncio.shield(job)
        except asyncio.CancelledError:
            # The thread still owns the worker: hand it back only once it is done.
            job.add_done_callback(self._release_after)
            raise
        except SpeechError:
            self._idle.put_nowait(None)  # a fresh worker next time
            raise
        self._idle.put_nowait(worker)
        return Transcript(text=text, elapsed_s=time.perf_counter() - started)

    def _release_after(self, job: asyncio.Future[tuple[_Worker, str]]) -> None:
        if job.cancelled() or job.exception() is not None:
            self._idle.put_nowait(None)
        else:
            self._idle.put_nowait(job.result()[0])

    def _shutdown_blocking(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            self._discard(worker)

    async def aclose(self) -> None:
        """Stop the decoder processes and the threads; waits for decodes in progress."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown_blocking)
        while not self._idle.empty():
            self._idle.get_nowait()
        for _ in range(self.pool_size):  # wake anyone still waiting: they see the close
            self._idle.put_nowait(None)
        if self._tmpdir is not None:
            self._tmp_cleanup()
            self._tmpdir = None


# --------------------------------------------------------------------------- OpenAI


def pcm_to_wav(pcm: Pcm, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit WAV file holding ``pcm``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return buf.getvalue()


class OpenAITranscriber:
    """OpenAI-compatible ``/v1/audio/transcriptions`` client (Whisper or a local server)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str = "whisper-1",
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/audio/transcriptions"
        self.model = model
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()

    async def transcribe(self, pcm: Pcm) -> Transcript:
        started = time.perf_counter()
        files = {"file": ("audio.wav", pcm_to_wav(pcm), "audio/wav")}
        data = {"model": self.model, "response_format": "json"}
        try:
            resp = await self._client.post(
                self.url, files=files, data=data, headers=self._headers, timeout=self.timeout_s
            )
        except httpx.HTTPError as exc:
            raise SpeechError(f"asr: request failed: {exc!r}") from exc
        body = resp.content
        if not resp.is_success:
            raise SpeechError(
                f"asr: HTTP {resp.status_code} from transcription endpoint: {_excerpt(body)}"
            )
        try:
            reply = resp.json()
        except ValueError as exc:
            raise SpeechError(f"asr: reply is not JSON: {_excerpt(body)}") from exc
        text = reply.get("text") if isinstance(reply, dict) else None
        if not isinstance(text, str):
            raise SpeechError(f"asr: reply has no text: {_excerpt(body)}")
        return Transcript(text=text.strip(), elapsed_s=time.perf_counter() - started)

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


def _excerpt(body: bytes) -> str:
    return body[:_ERROR_EXCERPT].decode("utf-8", "replace").strip()
