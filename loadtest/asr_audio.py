"""The audio set of ``loadtest.asr_compare``: the shipped eval suites' caller lines,
rendered the way ``voxswitch eval`` renders them, plus clips of line noise alone.

Each line is ``shaped(case, turn_audio(turn, speak))``: the case's voice (Piper's joe or
an eSpeak NG variant), the telephone band 300-3400 Hz and the case's noise, 8 kHz int16.
The one difference from eval is the noise generator's seed: eval seeds it with
``hash(case.id)``, which Python salts per process, so its noise changes from run to run;
here the seed is the case id's CRC-32, so every run hears the same noise.

Rendering takes a minute (Piper); the result is cached in ``loadtest/out/asr-compare/``
(git-ignored), keyed by the suites' bytes, so runs compare like with like.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from media.speech import SAMPLE_RATE, Pcm
from switch.eval.plan import shaped, telephone_band, turn_audio
from switch.eval.suite import load_suite
from switch.eval.voices import speak

ROOT = Path(__file__).resolve().parent
SUITES = ("pizza", "outage", "bank", "airline")
CACHE_DIR = ROOT / "out" / "asr-compare"
CACHE_VERSION = 1

# Noise-only clips: levels relative to the median speech RMS of the set, as the suites
# give them (eval's noise is relative to each line's speech); durations like short turns.
NOISE_LEVELS_DB = (-25.0, -20.0)
NOISE_CLIPS = 20
DITHER_RMS = 4.0  # a "silent" line: a few LSBs of hiss, under the recognisers' gate


@dataclass(frozen=True)
class Line:
    """One caller line: where it comes from, how it sounds, what was said."""

    id: str  # suite/case/turn
    suite: str
    voice: str
    noise_db: float | None
    text: str  # the reference: the turn's words, pauses left out
    noise_only: bool = False

    @property
    def condition(self) -> str:
        noise = "clean" if self.noise_db is None else f"{self.noise_db:g} dB"
        return f"{self.voice}, {noise}"


@dataclass(frozen=True)
class Clip:
    line: Line
    pcm: Pcm

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def _suite_paths(names: Sequence[str]) -> list[Path]:
    return [ROOT / "suites" / f"{name}.yaml" for name in names]


def _cache_key(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256(str(CACHE_VERSION).encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def render_lines(names: Sequence[str] = SUITES) -> list[Clip]:
    """Every spoken turn of the suites, rendered as eval renders it (slow: Piper)."""
    clips: list[Clip] = []
    for name, path in zip(names, _suite_paths(names), strict=True):
        suite = load_suite(path)
        for case in suite.cases:
            rng = np.random.default_rng(zlib.crc32(case.id.encode()))
            for n, turn in enumerate(case.turns):
                if not turn.text:
                    continue
                pcm = shaped(case, turn_audio(turn, functools.partial(speak, case)), rng)
                line = Line(f"{name}/{case.id}/{n}", name, case.voice, case.noise_db, turn.text)
                clips.append(Clip(line, pcm))
    return clips


def noise_clips(speech: Sequence[Clip], count: int = NOISE_CLIPS) -> list[Clip]:
    """``count`` clips of the line with nobody talking: telephone-band white noise at
    the suites' levels (relative to the set's median speech RMS), and a few of near
    silence (dither). 0.6-3 s long, as a short turn or a breath the VAD let through."""
    voiced = [c.pcm[np.abs(c.pcm.astype(np.int32)) > 200].astype(np.float64) for c in speech]
    levels = [float(np.sqrt(np.mean(v**2))) for v in voiced if v.size]
    speech_rms = float(np.median(levels)) if levels else 3000.0
    rng = np.random.default_rng(25)
    out: list[Clip] = []
    for i in range(count):
        seconds = 0.6 + 2.4 * i / max(1, count - 1)
        samples = round(seconds * SAMPLE_RATE)
        if i % 5 == 4:  # every fifth: silence with dither
            noise_db = None
            pcm = np.round(rng.normal(0.0, DITHER_RMS, samples)).astype(np.int16)
        else:
            noise_db = NOISE_LEVELS_DB[i % 2]
            rms = speech_rms * 10 ** (noise_db / 20.0)
            raw = np.round(rng.normal(0.0, rms, samples)).clip(-32768, 32767).astype(np.int16)
            pcm = telephone_band(raw)
        line = Line(f"noise/{i:02d}", "noise", "none", noise_db, "", noise_only=True)
        out.append(Clip(line, pcm))
    return out


def load_audio_set(names: Sequence[str] = SUITES, refresh: bool = False) -> list[Clip]:
    """The suites' lines then the noise clips, from the cache when it matches."""
    paths = _suite_paths(names)
    key = _cache_key(paths)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    audio_path = CACHE_DIR / f"lines-{key}.npz"
    meta_path = CACHE_DIR / f"lines-{key}.json"
    if not refresh and audio_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        with np.load(audio_path) as arrays:
            return [Clip(Line(**m), arrays[f"arr_{i}"]) for i, m in enumerate(meta)]
    speech = render_lines(names)
    clips = speech + noise_clips(speech)
    np.savez_compressed(audio_path, *[c.pcm for c in clips])  # arr_0, arr_1, ...
    meta_path.write_text(json.dumps([asdict(c.line) for c in clips], indent=1))
    return clips
