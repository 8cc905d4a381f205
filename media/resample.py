"""Sample-rate conversion for the rates voxswitch meets, numpy only.

8000 -> 16000 (ASR), 22050 -> 8000 (espeak-ng), 24000 -> 8000 (OpenAI TTS pcm),
16000 -> 8000, and identity; any other pair of integer rates works the same way.

Method: band-limited interpolation. Output sample ``n`` sits at input time
``n * from / to``; it is the dot product of the nearby input samples with a
Kaiser-windowed sinc evaluated at their distances. The sinc's cut-off is a little
below the lower of the two Nyquist frequencies, so downsampling low-passes before it
decimates (no aliasing) and upsampling does not image. Each of the ``to / gcd``
distinct fractional positions has its own row of taps, normalised to unit DC gain;
rows are computed once per rate pair and cached.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import gcd

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

CUTOFF = 0.94  # of the lower Nyquist: 3760 Hz when the output is 8 kHz
ZERO_CROSSINGS = 32  # of the sinc on each side: sets the transition width (~0.5 kHz at 8 kHz)
KAISER_BETA = 8.6  # stop band about 80 dB down
_MAX_CACHED_PHASES = 4096  # beyond this, taps are computed per call (odd rate pairs)
_BLOCK = 4096  # output samples per matrix product, bounding temporary memory

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]


def _taps(fractions: FloatArray, fc: float, half: int) -> FloatArray:
    """Rows of 2*half taps for output samples at the given fractional input positions."""
    offsets = np.arange(-half + 1, half + 1, dtype=np.float64)
    d = fractions[:, None] - offsets[None, :]  # distance from each input sample
    x = np.clip(d / half, -1.0, 1.0)
    window = np.i0(KAISER_BETA * np.sqrt(1.0 - x * x)) / np.i0(KAISER_BETA)
    h = np.sinc(2.0 * fc * d) * window
    result: FloatArray = h / h.sum(axis=1, keepdims=True)
    return result


def _design(up: int, down: int) -> tuple[float, int]:
    """Cut-off (cycles per input sample) and half-length (input samples)."""
    fc = 0.5 * min(1.0, up / down) * CUTOFF
    half = int(np.ceil(ZERO_CROSSINGS / (2.0 * fc)))
    return fc, half


@lru_cache(maxsize=16)
def _bank(up: int, down: int) -> FloatArray:
    fc, half = _design(up, down)
    bank = _taps(np.arange(up, dtype=np.float64) / up, fc, half)
    bank.setflags(write=False)  # shared between calls
    return bank


def resample(pcm: npt.NDArray[np.int16], from_rate: int, to_rate: int) -> Int16Array:
    """``pcm`` at ``from_rate`` -> int16 at ``to_rate``; length round(len * to / from)."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    samples = np.asarray(pcm).reshape(-1)
    if from_rate == to_rate:
        return samples.astype(np.int16, copy=True)
    g = gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    n_out = round(Fraction(samples.size * up, down))  # exact, unlike the float product
    if n_out == 0:
        return np.zeros(0, dtype=np.int16)
    fc, half = _design(up, down)
    # Output n is at input position base + phase/up; its taps cover inputs
    # base-half+1 .. base+half, i.e. padded[base : base + 2*half].
    padded = np.concatenate([np.zeros(half - 1), samples.astype(np.float64), np.zeros(half + 1)])
    windows = sliding_window_view(padded, 2 * half)
    bank = _bank(up, down) if up <= _MAX_CACHED_PHASES else None
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, _BLOCK):
        n = np.arange(start, min(start + _BLOCK, n_out), dtype=np.int64) * down
        base, phase = np.divmod(n, up)
        rows = bank[phase] if bank is not None else _taps(phase / up, fc, half)
        out[start : start + n.size] = np.einsum("ij,ij->i", windows[base], rows)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def upsample_8k_to_16k(pcm: npt.NDArray[np.int16]) -> Int16Array:
    """Telephone audio for an ASR engine that wants 16 kHz."""
    return resample(pcm, 8000, 16000)


def to_8k(pcm: npt.NDArray[np.int16], rate: int) -> Int16Array:
    """Engine audio at ``rate`` down (or up) to the call's 8 kHz."""
    return resample(pcm, rate, 8000)
