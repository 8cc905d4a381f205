"""Resampling: frequency and level kept, aliasing removed, lengths as promised."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from media.resample import resample, to_8k, upsample_8k_to_16k

RATE_PAIRS = [(8000, 16000), (22050, 8000), (24000, 8000), (16000, 8000)]


def _tone(
    freq: float, rate: int, seconds: float = 1.0, amplitude: float = 10000.0
) -> npt.NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _middle(x: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    """The central half, away from the zero-padded edges."""
    n = x.size
    return x[n // 4 : 3 * n // 4].astype(np.float64)


def _peak_hz(x: npt.NDArray[np.float64], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spectrum)])


def _rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(x * x)))


@pytest.mark.parametrize(("from_rate", "to_rate"), RATE_PAIRS)
def test_1khz_keeps_frequency_and_amplitude(from_rate: int, to_rate: int) -> None:
    x = _tone(1000, from_rate)
    y = resample(x, from_rate, to_rate)
    assert y.dtype == np.int16
    mid = _middle(y)
    assert abs(_peak_hz(mid, to_rate) - 1000) < 5
    assert _rms(mid) == pytest.approx(_rms(_middle(x)), rel=0.10)
    # Not just the right spectrum peak: sample for sample a 1 kHz sine at the new rate.
    t = (np.arange(y.size) / to_rate)[y.size // 4 : 3 * y.size // 4]
    expected = 10000 * np.sin(2 * np.pi * 1000 * t)
    assert np.max(np.abs(mid - expected)) < 100


def test_3500hz_passes_22050_to_8k() -> None:
    # Top of the telephone band: kept, at its frequency and level.
    y = resample(_tone(3500, 22050), 22050, 8000)
    mid = _middle(y)
    assert abs(_peak_hz(mid, 8000) - 3500) < 5
    assert _rms(mid) == pytest.approx(10000 / np.sqrt(2), rel=0.10)


@pytest.mark.parametrize(
    ("freq", "from_rate"), [(6000, 22050), (4500, 22050), (7000, 24000), (5000, 16000)]
)
def test_tones_above_the_new_nyquist_do_not_alias(freq: int, from_rate: int) -> None:
    # Decimating naively would fold 6 kHz onto 2 kHz at full level.
    x = _tone(freq, from_rate)
    y = resample(x, from_rate, 8000)
    energy_in = np.mean(_middle(x) ** 2)
    energy_out = np.mean(_middle(y) ** 2)
    assert energy_out < 0.05 * energy_in
    assert energy_out < 1e-4 * energy_in  # in fact far below: the stop band is ~80 dB


def test_naive_decimation_would_alias() -> None:
    # Guards the test above: the tone really is one that folds into the band.
    x = _tone(6000, 22050).astype(np.float64)
    idx = np.rint(np.arange(8000) * 22050 / 8000).astype(int)
    naive = x[idx]
    assert np.mean(naive**2) > 0.5 * np.mean(x**2)


@pytest.mark.parametrize(("from_rate", "to_rate"), [*RATE_PAIRS, (8000, 8000), (44100, 8000)])
@pytest.mark.parametrize("length", [0, 1, 2, 3, 159, 160, 441, 1000, 22051])
def test_length_is_rounded_ratio(from_rate: int, to_rate: int, length: int) -> None:
    x = np.ones(length, dtype=np.int16)
    assert resample(x, from_rate, to_rate).size == round(length * to_rate / from_rate)


def test_identity_is_an_equal_copy() -> None:
    x = _tone(440, 8000, 0.1)
    y = resample(x, 8000, 8000)
    assert np.array_equal(x, y)
    y[0] = 1234
    assert x[0] != 1234


def test_dc_level_is_kept() -> None:
    x = np.full(4000, 1000, dtype=np.int16)
    for from_rate, to_rate in RATE_PAIRS:
        y = resample(x, from_rate, to_rate)
        assert np.all(np.abs(_middle(y) - 1000) <= 1)


def test_full_scale_is_clipped_not_wrapped() -> None:
    # A full-scale square wave overshoots after filtering (Gibbs); it must clip.
    # Filtering is linear, so the half-scale result (no overshoot past int16) doubled
    # and clipped is what the full-scale result must be.
    x = np.tile(np.array([32767] * 20 + [-32767] * 20, dtype=np.int16), 200)
    half = (x // 2).astype(np.int16)
    for from_rate, to_rate in RATE_PAIRS:
        y = resample(x, from_rate, to_rate).astype(np.int32)
        y_half = resample(half, from_rate, to_rate).astype(np.int32)
        assert y.max() == 32767 and y.min() == -32768
        expected = np.clip(2 * y_half, -32768, 32767)
        assert np.max(np.abs(y - expected)) <= 3


def test_conveniences() -> None:
    x = _tone(1000, 8000, 0.2)
    assert np.array_equal(upsample_8k_to_16k(x), resample(x, 8000, 16000))
    x24 = _tone(1000, 24000, 0.2)
    assert np.array_equal(to_8k(x24, 24000), resample(x24, 24000, 8000))


def test_rejects_bad_rates() -> None:
    x = np.zeros(10, dtype=np.int16)
    with pytest.raises(ValueError):
        resample(x, 0, 8000)
    with pytest.raises(ValueError):
        resample(x, 8000, -1)
