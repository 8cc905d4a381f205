"""Greetings: the built-in chime, and greeting files, as int16 PCM at 8 kHz.

Greeting files:

* ``.wav``: mono, 16-bit PCM, 8000 Hz or 16000 Hz (16 kHz is halved by averaging
  each pair of samples);
* ``.ulaw`` / ``.mulaw`` / ``.pcmu`` and ``.alaw`` / ``.pcma``: headerless G.711 at 8 kHz.

Anything else raises ``ValueError`` saying what was found and what is expected.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from media.g711 import alaw_decode, ulaw_decode

SAMPLE_RATE = 8000

PcmArray = npt.NDArray[np.int16]

# (frequency Hz, start s, duration s): a rising A-major arpeggio, bell-like decay.
_CHIME_NOTES: tuple[tuple[float, float, float], ...] = (
    (880.00, 0.00, 0.45),  # A5
    (1108.73, 0.30, 0.45),  # C#6
    (1318.51, 0.60, 0.60),  # E6
)
_CHIME_LENGTH_S = 1.2
_CHIME_PEAK = 0.30  # of full scale: clearly audible, far from clipping

_ULAW_SUFFIXES = (".ulaw", ".mulaw", ".pcmu", ".ul")
_ALAW_SUFFIXES = (".alaw", ".pcma", ".al")


def chime(sample_rate: int = SAMPLE_RATE) -> PcmArray:
    """The built-in greeting: three soft bell tones, about 1.2 s, int16 mono."""
    total = round(_CHIME_LENGTH_S * sample_rate)
    out = np.zeros(total, dtype=np.float64)
    for freq, start_s, length_s in _CHIME_NOTES:
        start = round(start_s * sample_rate)
        n = min(round(length_s * sample_rate), total - start)
        t = np.arange(n, dtype=np.float64) / sample_rate
        attack = np.minimum(1.0, t / 0.008)  # 8 ms fade-in: no click
        decay = np.exp(-t * 5.0)
        release = np.minimum(1.0, (length_s - t) / 0.02)  # 20 ms fade-out at the end
        tone = np.sin(2 * np.pi * freq * t) + 0.25 * np.sin(2 * np.pi * 2 * freq * t)
        out[start : start + n] += tone * attack * decay * np.clip(release, 0.0, 1.0)
    peak = float(np.max(np.abs(out))) or 1.0
    return np.round(out * (_CHIME_PEAK * 32767.0 / peak)).astype(np.int16)


def load_greeting(path: str | Path) -> PcmArray:
    """A greeting file as int16 PCM at 8 kHz; ``ValueError`` when it cannot be used."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".wav":
        pcm = _load_wav(file)
    elif suffix in _ULAW_SUFFIXES:
        pcm = ulaw_decode(_read(file))
    elif suffix in _ALAW_SUFFIXES:
        pcm = alaw_decode(_read(file))
    else:
        raise ValueError(
            f"greeting file {str(file)!r}: unsupported type {suffix or '(no extension)'!r}; "
            "expected .wav (mono 16-bit PCM, 8 or 16 kHz), .ulaw or .alaw (raw G.711, 8 kHz)"
        )
    if pcm.size == 0:
        raise ValueError(f"greeting file {str(file)!r} has no audio")
    return pcm


def greeting_pcm(path: str | Path | None) -> PcmArray:
    """The greeting file's audio, or the built-in chime when ``path`` is empty."""
    return load_greeting(path) if path else chime()


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ValueError(f"greeting file {str(file)!r}: {exc.strerror or exc}") from exc


def _load_wav(file: Path) -> PcmArray:
    try:
        with wave.open(str(file), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            if channels != 1 or width != 2 or rate not in (8000, 16000):
                raise ValueError(
                    f"greeting file {str(file)!r}: {channels} channel(s), {8 * width}-bit, "
                    f"{rate} Hz; expected mono 16-bit PCM at 8000 or 16000 Hz"
                )
            frames = wav.readframes(wav.getnframes())
    except wave.Error as exc:  # not RIFF/WAVE, or not PCM (e.g. float, G.711 in WAV)
        raise ValueError(
            f"greeting file {str(file)!r}: not a PCM WAV file ({exc}); "
            "expected mono 16-bit PCM at 8000 or 16000 Hz"
        ) from exc
    except (OSError, EOFError) as exc:
        raise ValueError(f"greeting file {str(file)!r}: cannot read: {exc}") from exc
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    if rate == 16000:
        pairs = pcm[: pcm.size - pcm.size % 2].astype(np.int32).reshape(-1, 2)
        pcm = (pairs.sum(axis=1) // 2).astype(np.int16)
    return pcm
