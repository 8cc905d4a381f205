"""G.711 µ-law / A-law tables: known codes, clipping, round trips, monotonic decoding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from media import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_zero_encodes_to_the_silence_code() -> None:
    zeros = np.zeros(4, dtype=np.int16)
    assert g711.ulaw_encode(zeros) == b"\xff" * 4
    assert g711.alaw_encode(zeros) == b"\xd5" * 4
    assert g711.silence_byte("PCMU") == 0xFF
    assert g711.silence_byte("pcma") == 0xD5


def test_known_values() -> None:
    # Extremes, and the reconstruction levels of the silence and extreme codes.
    assert g711.ulaw_encode(np.array([32767, -32768], dtype=np.int16)) == b"\x80\x00"
    assert g711.alaw_encode(np.array([32767, -32768], dtype=np.int16)) == b"\xaa\x2a"
    assert g711.ulaw_decode(b"\xff\x7f\x80\x00").tolist() == [0, 0, 32124, -32124]
    assert g711.alaw_decode(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]
    # First segment boundaries of µ-law (14-bit value + 33 reaching 64 → segment 1).
    assert g711.ulaw_encode(np.array([4 * 30, 4 * 31], dtype=np.int16)) == b"\xf0\xef"


def test_clipping() -> None:
    loud = np.array([32632, 32700, 32767], dtype=np.int16)
    assert set(g711.ulaw_encode(loud)) == {0x80}
    assert set(g711.ulaw_encode(-loud)) == {0x00}
    # Wider inputs are clipped to int16 before encoding.
    wide = np.array([100_000, -100_000], dtype=np.int32)
    assert g711.ulaw_encode(wide) == b"\x80\x00"
    assert g711.alaw_encode(wide) == b"\xaa\x2a"


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_code_round_trip(encode: g711.Encoder, decode: g711.Decoder) -> None:
    codes = np.frombuffer(encode(decode(ALL_CODES)), dtype=np.uint8)
    # µ-law has a negative zero (0x7F) that decodes to 0 and re-encodes as 0xFF.
    mismatched = [i for i in range(256) if codes[i] != i]
    assert mismatched in ([], [0x7F])


@pytest.mark.parametrize(
    ("encode", "decode", "max_relative"),
    [(g711.ulaw_encode, g711.ulaw_decode, 0.036), (g711.alaw_encode, g711.alaw_decode, 1 / 32)],
)
def test_sample_round_trip_error_is_small(
    encode: g711.Encoder, decode: g711.Decoder, max_relative: float
) -> None:
    decoded = decode(encode(ALL_SAMPLES)).astype(np.int32)
    error = np.abs(decoded - ALL_SAMPLES.astype(np.int32))
    magnitude = np.abs(ALL_SAMPLES.astype(np.int32))
    # Small signals: absolute error within one low-segment step; larger ones: about
    # half a step over the segment's start, i.e. ~1/32 (below the µ-law clip level).
    assert int(error[magnitude < 256].max()) <= 16
    large = (magnitude >= 1024) & (magnitude < 32000)
    assert float((error[large] / magnitude[large]).max()) <= max_relative
    assert decode(b"\x00").dtype == np.int16


def test_decode_is_monotonic_per_sign_ulaw() -> None:
    values = g711.ulaw_decode(ALL_CODES).astype(np.int32)
    negative, positive = values[:128], values[128:]
    # 0x00..0x7F: -32124 up to 0; 0x80..0xFF: 32124 down to 0.
    assert np.all(np.diff(negative) > 0)
    assert np.all(negative <= 0) and np.all(positive >= 0)
    assert np.all(np.diff(positive) < 0)


def test_decode_is_monotonic_per_sign_alaw() -> None:
    values = g711.alaw_decode(ALL_CODES).astype(np.int32)
    # A-law inverts the even bits: order codes by (code ^ 0x55) within each sign.
    for sign in (0x00, 0x80):
        order = [(k | sign) ^ 0x55 for k in range(128)]
        levels = values[order]
        if sign:
            assert np.all(levels > 0) and np.all(np.diff(levels) > 0)
        else:
            assert np.all(levels < 0) and np.all(np.diff(levels) < 0)


def test_encode_is_monotonic_in_the_decoded_level() -> None:
    for encode, decode in (
        (g711.ulaw_encode, g711.ulaw_decode),
        (g711.alaw_encode, g711.alaw_decode),
    ):
        levels = decode(encode(ALL_SAMPLES)).astype(np.int32)
        assert np.all(np.diff(levels) >= 0)


def test_matches_the_reference_implementation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # CPython ≤ 3.12: Sun's reference code
    pcm = ALL_SAMPLES.astype("<i2").tobytes()
    assert g711.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(pcm, 2)
    assert g711.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(pcm, 2)
    assert g711.ulaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_codec_dispatch() -> None:
    pcm = np.array([0, 1000, -1000], dtype=np.int16)
    assert g711.encode("PCMU", pcm) == g711.ulaw_encode(pcm)
    assert g711.encode("pcma", pcm) == g711.alaw_encode(pcm)
    assert g711.decode("PCMA", b"\xd5").tolist() == [8]
    with pytest.raises(ValueError, match="G722"):
        g711.encode("G722", pcm)
    with pytest.raises(ValueError):
        g711.silence_byte("opus")


def test_accepts_lists_and_2d_arrays() -> None:
    assert g711.ulaw_encode([0, 0]) == b"\xff\xff"
    assert g711.alaw_encode(np.zeros((2, 3), dtype=np.int16)) == b"\xd5" * 6
