"""A suite case as a caller's script: its turns' audio shaped like a phone line, and
the steps that say them at the right moments (sans-I/O: audio in, a CallScript out).

Timing, as docs/eval-suites.md defines it:

- a turn with ``wait_ms`` starts that long after the agent's latest answer (the
  greeting, for the first turn) went quiet;
- a turn with ``over_agent_ms`` starts that long after the agent's latest answer
  *began* (a barge-in or a backchannel over it). Two such turns in a row over the same
  answer (a backchannel the agent talks on through) are spaced from one onset, so the
  second waits what is left after the first one's audio;
- after the last turn the caller waits for the answer to end, then hangs up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from media.speech import SAMPLE_RATE, Pcm
from switch.eval.script import (
    CallScript,
    Dtmf,
    Hangup,
    Say,
    Step,
    Wait,
    WaitAgentSilence,
    WaitAgentSpeech,
)
from switch.eval.suite import Case, Pause, Turn

# How long the caller waits for the agent to start, and for it to finish, at most.
ANSWER_START_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 45.0
TELEPHONE_BAND_HZ = (300.0, 3400.0)

Speak = Callable[[str], Pcm]  # text -> 8 kHz int16 speech in the case's voice


def turn_audio(turn: Turn, speak: Speak) -> Pcm:
    """The turn's words with the pauses inside it (silence), as one track."""
    pieces: list[Pcm] = []
    for part in turn.parts:
        if isinstance(part, Pause):
            pieces.append(np.zeros(part.ms * SAMPLE_RATE // 1000, dtype=np.int16))
        else:
            pieces.append(trim_silence(speak(part)))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def trim_silence(pcm: Pcm, threshold: int = 200) -> Pcm:
    """Without the silence a voice puts before and after its words (a reply starting
    inside trailing silence would not count as a reply to the line)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    if loud.size == 0:
        return pcm[:0]
    return pcm[loud[0] : loud[-1] + 1]


def telephone_band(pcm: Pcm) -> Pcm:
    """Only 300–3400 Hz, as a phone line passes it (a mask on the spectrum)."""
    if pcm.size == 0:
        return pcm
    spectrum = np.fft.rfft(pcm.astype(np.float64))
    freqs = np.fft.rfftfreq(pcm.size, 1.0 / SAMPLE_RATE)
    low, high = TELEPHONE_BAND_HZ
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    out = np.fft.irfft(spectrum, n=pcm.size)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def with_noise(pcm: Pcm, noise_db: float, rng: np.random.Generator) -> Pcm:
    """White noise ``noise_db`` dB relative to the speech's RMS (-25: mild line hiss),
    over the whole track, pauses included."""
    if pcm.size == 0:
        return pcm
    speech = pcm.astype(np.float64)
    voiced = speech[np.abs(speech) > 200]
    rms = float(np.sqrt(np.mean(voiced**2))) if voiced.size else 1000.0
    noise = rng.normal(0.0, rms * 10 ** (noise_db / 20.0), pcm.size)
    return np.clip(np.round(speech + noise), -32768, 32767).astype(np.int16)


def shaped(case: Case, pcm: Pcm, rng: np.random.Generator) -> Pcm:
    """The case's line conditions on a turn's audio: band, then noise."""
    if case.band == "telephone":
        pcm = telephone_band(pcm)
    if case.noise_db is not None:
        pcm = with_noise(pcm, case.noise_db, rng)
    return pcm


def turn_label(turn: Turn) -> str:
    return " ".join(p for p in turn.parts if not isinstance(p, Pause))[:60]


def script_for(case: Case, audio: Sequence[Pcm]) -> CallScript:
    """The steps that say each turn's ``audio`` when the case says to."""
    assert len(audio) == len(case.turns)
    steps: list[Step] = []
    onset_offset_ms: int | None = None  # where the caller is, from the answer's onset
    for turn, pcm in zip(case.turns, audio, strict=True):
        if turn.over_agent_ms is None:
            steps += [WaitAgentSpeech(ANSWER_START_TIMEOUT_S, ongoing=not steps),
                      WaitAgentSilence(turn.wait_ms, ANSWER_TIMEOUT_S)]  # fmt: skip
            onset_offset_ms = None
        elif onset_offset_ms is None:
            steps += [WaitAgentSpeech(ANSWER_START_TIMEOUT_S, ongoing=not steps),
                      Wait(turn.over_agent_ms)]  # fmt: skip
            onset_offset_ms = turn.over_agent_ms
        else:  # over the same answer again: what is left after the last line
            steps.append(Wait(max(0, turn.over_agent_ms - onset_offset_ms)))
            onset_offset_ms = max(onset_offset_ms, turn.over_agent_ms)
        if pcm.size:
            steps.append(Say(pcm, label=turn_label(turn)))
            if onset_offset_ms is not None:
                onset_offset_ms += pcm.size * 1000 // SAMPLE_RATE
        if turn.dtmf:
            steps.append(Dtmf(turn.dtmf))
    steps += [WaitAgentSpeech(ANSWER_START_TIMEOUT_S), WaitAgentSilence(1500, ANSWER_TIMEOUT_S),
              Hangup()]  # fmt: skip
    return CallScript(steps)
