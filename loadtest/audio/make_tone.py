"""Write a headerless G.711 µ-law tone for SIPp's ``rtp_stream``.

SIPp's ``<exec rtp_stream="FILE,LOOPS,PT"/>`` sends the file's bytes as RTP payload,
160 bytes (20 ms) per packet, header included if the file has one: a WAV header would
go out as audio. So the fixture is raw µ-law, made here rather than committed.

    python -m loadtest.audio.make_tone OUT.ulaw [--seconds 1.0] [--hz 440] [--dbfs -12]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

SAMPLE_RATE_HZ = 8000
ULAW_BIAS_14 = 0x21  # 0x84 >> 2: the bias on 14-bit samples
ULAW_CLIP_14 = 8159
ULAW_SEGMENT_ENDS_14 = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def linear_to_ulaw(sample: int) -> int:
    """Encode one signed 16-bit sample as a G.711 µ-law byte.

    The reference algorithm (Sun's g711.c, as in CPython's audioop): the sample is
    cut to 14 bits, biased, and coded as a 3-bit segment and a 4-bit step.
    """
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, ULAW_CLIP_14) + ULAW_BIAS_14
    segment = next(
        (i for i, end in enumerate(ULAW_SEGMENT_ENDS_14) if value <= end),
        len(ULAW_SEGMENT_ENDS_14),
    )
    if segment >= len(ULAW_SEGMENT_ENDS_14):
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def tone_ulaw(seconds: float = 1.0, hz: float = 440.0, dbfs: float = -12.0) -> bytes:
    """A sine tone as µ-law bytes, 8000 per second."""
    if seconds <= 0 or hz <= 0 or hz >= SAMPLE_RATE_HZ / 2:
        raise ValueError(f"bad tone: seconds={seconds} hz={hz}")
    amplitude = 32767 * 10 ** (dbfs / 20)
    count = round(seconds * SAMPLE_RATE_HZ)
    return bytes(
        linear_to_ulaw(round(amplitude * math.sin(2 * math.pi * hz * n / SAMPLE_RATE_HZ)))
        for n in range(count)
    )


def write_tone(path: Path, seconds: float = 1.0, hz: float = 440.0, dbfs: float = -12.0) -> Path:
    path.write_bytes(tone_ulaw(seconds, hz, dbfs))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="file to write, e.g. tone.ulaw")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--hz", type=float, default=440.0)
    parser.add_argument("--dbfs", type=float, default=-12.0)
    args = parser.parse_args(argv)
    write_tone(args.out, args.seconds, args.hz, args.dbfs)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
