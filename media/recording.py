"""A call's recording: both directions, as a stereo WAV (caller left, agent right).

The media session hands the recorder one frame per 20 ms tick of each direction,
so the two channels are aligned by construction: what the caller said (as the
jitter buffer gave it to the recogniser, concealed where packets were lost) and
what we sent (silence where we sent none). Frames are buffered and written a
second at a time, so the tick pays a numpy copy, not a system call.

The file is written so that a process that dies mid-call loses at most the last
second: the header's sizes are fixed from the file's length when the recording is
closed, and a recorder opened on an existing file (the call's media moved to a new
worker) appends to it instead of starting over.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.speech import Pcm

SAMPLE_RATE = 8000
CHANNELS = 2
SAMPLE_BYTES = 2
FRAME_SAMPLES = 160
FLUSH_FRAMES = 50  # a second of audio per write
HEADER_BYTES = 44


def wav_header(data_bytes: int) -> bytes:
    """The canonical 44-byte header of 16-bit PCM, stereo, 8 kHz (RIFF/WAVE)."""
    block = CHANNELS * SAMPLE_BYTES
    return b"".join((
        b"RIFF", struct.pack("<I", 36 + data_bytes), b"WAVE",
        b"fmt ", struct.pack("<IHHIIHH", 16, 1, CHANNELS, SAMPLE_RATE,
                             SAMPLE_RATE * block, block, SAMPLE_BYTES * 8),
        b"data", struct.pack("<I", data_bytes),
    ))  # fmt: skip


class CallRecorder:
    """Stereo 16-bit WAV at 8 kHz; ``add`` once per tick, ``close`` at the end."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "r+b" if self.path.exists() else "w+b")  # noqa: SIM115
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() < HEADER_BYTES:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(wav_header(0))
        self._buffer = np.zeros((FLUSH_FRAMES * FRAME_SAMPLES, CHANNELS), dtype="<i2")
        self._frames = 0  # in the buffer
        self.closed = False

    def add(self, caller: Pcm, agent: Pcm | None) -> None:
        start = self._frames * FRAME_SAMPLES
        rows = self._buffer[start : start + FRAME_SAMPLES]
        rows[:, 0] = caller
        if agent is None:
            rows[:, 1] = 0
        else:
            rows[:, 1] = agent
        self._frames += 1
        if self._frames == FLUSH_FRAMES:
            self._flush()

    def _flush(self) -> None:
        if self._frames:
            self._file.write(self._buffer[: self._frames * FRAME_SAMPLES].tobytes())
            self._frames = 0

    def close(self) -> None:
        """Write what is buffered and fix the header's sizes."""
        if self.closed:
            return
        self.closed = True
        try:
            self._flush()
            end = self._file.seek(0, os.SEEK_END)
            self._file.seek(0)
            self._file.write(wav_header(end - HEADER_BYTES))
        finally:
            self._file.close()


@dataclass(frozen=True)
class RecordingSummary:
    """What the call record and the ``call.recorded`` event say about a recording."""

    location: str
    format: str
    bytes: int
    duration_s: float
    sha256: str

    def as_dict(self) -> dict[str, object]:
        return {
            "location": self.location,
            "format": self.format,
            "channels": "caller-left,agent-right",
            "bytes": self.bytes,
            "duration_s": self.duration_s,
            "sha256": self.sha256,
        }


def summarize(path: str | os.PathLike[str]) -> RecordingSummary:
    """Size, duration and checksum of a closed recording (reads the whole file: run it
    off the event loop)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    samples = max(0, size - HEADER_BYTES) // (CHANNELS * SAMPLE_BYTES)
    return RecordingSummary(
        location=str(Path(path).resolve()),
        format="wav",
        bytes=size,
        duration_s=round(samples / SAMPLE_RATE, 3),
        sha256=digest.hexdigest(),
    )
