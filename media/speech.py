"""The speech engines as the rest of voxswitch sees them: ASR and TTS interfaces.

Audio crossing these interfaces is 16-bit mono PCM at 8 kHz (numpy ``int16``), the
rate of the telephone call; an engine that needs another rate resamples inside.
Engines are shared by every call on a node and run their CPU-heavy work off the
event loop, so RTP pacing never stalls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]  # mono, 8 kHz

SAMPLE_RATE = 8000


@dataclass(frozen=True)
class Transcript:
    text: str  # "" when nothing was recognised
    confidence: float | None = None
    elapsed_s: float = 0.0  # wall time the engine took


class SpeechRecognizer(Protocol):
    async def transcribe(self, pcm: Pcm) -> Transcript:
        """Recognise one utterance (the audio between SpeechStarted and SpeechEnded)."""
        ...

    async def aclose(self) -> None: ...


class SpeechSynthesizer(Protocol):
    async def synthesize(self, text: str) -> Pcm:
        """Speak ``text`` (a sentence or so); 8 kHz int16 mono PCM."""
        ...

    async def aclose(self) -> None: ...


class SpeechError(RuntimeError):
    """An engine failed (bad reply from a provider, engine error); the message says how."""
