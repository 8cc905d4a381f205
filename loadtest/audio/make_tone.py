"""Write a headerless G.711 µ-law tone for SIPp's ``rtp_stream``.

SIPp's ``<exec rtp_stream="FILE,LOOPS,PT"/>`` sends the file's bytes as RTP payload,
160 bytes (20 ms) per packet, header included if the file has one: a WAV header would
go out as audio. So the fixture is raw µ-law, made here rather than committed.

    python -m loadtest.audio.make_tone OUT.ulaw [--seconds 1.0] [--hz 440] [--dbfs -12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from media.g711 import ulaw_encode

SAMPLE_RATE_HZ = 8000


def tone_ulaw(seconds: float = 1.0, hz: float = 440.0, dbfs: float = -12.0) -> bytes:
    """A sine tone as µ-law bytes, 8000 per second (encoded by the node's own G.711)."""
    if seconds <= 0 or hz <= 0 or hz >= SAMPLE_RATE_HZ / 2:
        raise ValueError(f"bad tone: seconds={seconds} hz={hz}")
    amplitude = 32767 * 10 ** (dbfs / 20)
    t = np.arange(round(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return ulaw_encode(np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16))


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
