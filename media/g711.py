"""G.711 companding (ITU-T G.711): µ-law and A-law, int16 PCM <-> one byte per sample.

Both directions are table lookups built once at import from the segment/mantissa
definition of the law:

* encode: a 65536-entry table indexed by the 16-bit sample (read as unsigned);
* decode: a 256-entry table of int16 values.

µ-law works on the 14-bit value (the sample shifted right by 2; bias 33, clip at
8158) and inverts all bits; A-law on the 13-bit value (the sample shifted right by
3) and inverts the even bits (XOR 0x55). Decoding returns the middle of each
quantisation step, scaled back to 16 bits. Silence is 0xFF in µ-law and 0xD5 in A-law.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5

_ULAW_BIAS = 0x21  # 33 (132 at 16-bit scale): gives every magnitude an implicit leading 1
_ULAW_MAX = 0x1FFF  # biased magnitudes clip here: 13 bits, the top of segment 7

PcmArray = npt.NDArray[np.int16]
Encoder = Callable[[npt.ArrayLike], bytes]
Decoder = Callable[[bytes], PcmArray]


def _segment(value: npt.NDArray[np.int32], first_limit: int) -> npt.NDArray[np.int32]:
    """Segment number 0..7: how many times ``value`` reaches ``first_limit`` doubled."""
    seg = np.zeros_like(value)
    for k in range(1, 8):
        seg += (value >= (first_limit << (k - 1))).astype(np.int32)
    return seg


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit signed: -8192..8191
    negative = x < 0
    magnitude = np.minimum(np.abs(x) + _ULAW_BIAS, _ULAW_MAX)
    seg = _segment(magnitude, 0x40)  # magnitude has its top bit at position seg + 5
    mantissa = (magnitude >> (seg + 1)) & 0x0F
    code = (seg << 4) | mantissa
    mask = np.where(negative, 0x7F, 0xFF)
    encoded = (code ^ mask).astype(np.uint8)
    # Reorder so the index is the int16 sample viewed as uint16 (0..32767, then negatives).
    return np.concatenate([encoded[32768:], encoded[:32768]])


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0xFF
    seg = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + (_ULAW_BIAS << 2)) << seg) - (_ULAW_BIAS << 2)
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit signed: -4096..4095
    negative = x < 0
    magnitude = np.where(negative, -x - 1, x)  # 0..4095
    seg = _segment(magnitude, 0x20)
    shift = np.maximum(seg, 1)  # segments 0 and 1 share the same step size
    mantissa = (magnitude >> shift) & 0x0F
    code = (seg << 4) | mantissa
    mask = np.where(negative, 0x55, 0xD5)
    encoded = (code ^ mask).astype(np.uint8)
    return np.concatenate([encoded[32768:], encoded[:32768]])


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (code >> 4) & 0x07
    mantissa = code & 0x0F
    # Reconstruct at the middle of the quantisation step, in 13-bit units, then scale by 8.
    step_middle = np.where(
        seg == 0, (mantissa << 1) + 1, ((mantissa << 1) + 33) << np.maximum(seg - 1, 0)
    )
    magnitude = step_middle << 3
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_ENCODE_TABLE = _build_ulaw_encode()
ULAW_DECODE_TABLE = _build_ulaw_decode()
ALAW_ENCODE_TABLE = _build_alaw_encode()
ALAW_DECODE_TABLE = _build_alaw_decode()


def _as_index(pcm: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    samples = np.asarray(pcm)
    if samples.dtype != np.int16:
        samples = np.clip(samples, -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(samples).reshape(-1).view(np.uint16)


def ulaw_encode(pcm: npt.ArrayLike) -> bytes:
    """int16 PCM samples (other dtypes are clipped to int16) -> µ-law bytes."""
    return ULAW_ENCODE_TABLE[_as_index(pcm)].tobytes()


def ulaw_decode(data: bytes) -> PcmArray:
    """µ-law bytes -> int16 PCM samples."""
    return ULAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: npt.ArrayLike) -> bytes:
    """int16 PCM samples (other dtypes are clipped to int16) -> A-law bytes."""
    return ALAW_ENCODE_TABLE[_as_index(pcm)].tobytes()


def alaw_decode(data: bytes) -> PcmArray:
    """A-law bytes -> int16 PCM samples."""
    return ALAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)]


def codec_name(codec: str) -> str:
    """The RTP encoding name, checked: "PCMU" or "PCMA" (ValueError otherwise)."""
    name = codec.upper()
    if name not in ("PCMU", "PCMA"):
        raise ValueError(f"unsupported codec {codec!r} (expected PCMU or PCMA)")
    return name


def tables(codec: str) -> tuple[npt.NDArray[np.uint8], PcmArray]:
    """(encode, decode) lookup tables of a codec, for hot paths that skip the dispatch."""
    name = codec.upper()
    if name == "PCMU":
        return ULAW_ENCODE_TABLE, ULAW_DECODE_TABLE
    if name == "PCMA":
        return ALAW_ENCODE_TABLE, ALAW_DECODE_TABLE
    raise ValueError(f"unsupported codec {codec!r} (expected PCMU or PCMA)")


def encode(codec: str, pcm: npt.ArrayLike) -> bytes:
    """Encode for an RTP encoding name: "PCMU" or "PCMA"."""
    return tables(codec)[0][_as_index(pcm)].tobytes()


def decode(codec: str, data: bytes) -> PcmArray:
    """Decode for an RTP encoding name: "PCMU" or "PCMA"."""
    return tables(codec)[1][np.frombuffer(data, dtype=np.uint8)]


def silence_byte(codec: str) -> int:
    """The code for a zero sample: 0xFF (PCMU) or 0xD5 (PCMA)."""
    name = codec.upper()
    if name == "PCMU":
        return ULAW_SILENCE
    if name == "PCMA":
        return ALAW_SILENCE
    raise ValueError(f"unsupported G.711 codec {codec!r} (expected PCMU or PCMA)")
