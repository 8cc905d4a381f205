"""Batch re-transcription: a recorded call's both channels, utterance by utterance.

The recording (on the node's disk, or in the S3 archive once uploaded) is checked
against the SHA-256 its call record carries, split into utterances per channel by the
same voice-activity detector the calls use, and each utterance is recognised by the
node's engine: pocketsphinx with the call's agent's in-domain language model (its
patterns and its own lines), or the OpenAI-compatible transcription service. The
transcript is one ``call.transcribed`` event, which PostgreSQL turns into a row of
``call_transcripts`` (one per call and engine) in the same transaction that records
the event; its id is derived from the call, the engine and the recording's checksum,
so transcribing the same recording again changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from media.speech import SAMPLE_RATE, Pcm, SpeechRecognizer
from media.vad import SpeechEnded, SpeechStarted, VadState, VoiceActivityDetector
from switch.backbone import events
from switch.jobs import JobError
from switch.jobs.context import JobContext

if TYPE_CHECKING:
    from media.whisper import WhisperModel

log = logging.getLogger("voxswitch.jobs")

FRAME = SAMPLE_RATE // 50  # 20 ms
PREROLL_S = 0.2  # audio kept before the detected onset (the recogniser needs it)
TAIL_S = 0.4  # and after the estimated end: soft word endings ("address") fade late
DEFAULT_LIMIT = 100


def utterances(pcm: Pcm, *, stop_ms: int = 500) -> list[tuple[float, float, Pcm]]:
    """(start_s, end_s, audio) of each stretch of speech in one channel."""
    vad = VoiceActivityDetector(aggressiveness=2, start_ms=100, stop_ms=stop_ms)
    found: list[tuple[float, float]] = []
    onset: float | None = None
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        for ev in vad.process(pcm[i : i + FRAME], i / SAMPLE_RATE):
            if isinstance(ev, SpeechStarted):
                onset = ev.at
            elif isinstance(ev, SpeechEnded) and onset is not None:
                found.append((onset, ev.at))
                onset = None
    end = len(pcm) / SAMPLE_RATE
    if onset is not None and vad.state in (VadState.SPEAKING, VadState.STOPPING):
        found.append((onset, end))  # the recording stopped mid-word
    pieces = []
    for start, stop in found:
        lo, hi = max(0.0, start - PREROLL_S), min(end, stop + TAIL_S)
        pieces.append((round(start, 2), round(stop, 2),
                       pcm[int(lo * SAMPLE_RATE) : int(hi * SAMPLE_RATE)]))  # fmt: skip
    return pieces


def read_stereo(path: Path) -> tuple[Pcm, Pcm]:
    """The caller (left) and agent (right) channels of a recording."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 2 or w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
            raise ValueError(f"{path.name}: not a stereo 16-bit {SAMPLE_RATE} Hz recording")
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, 0].copy(), frames[:, 1].copy()


class Engines:
    """The recognisers a run needs, one per agent (pocketsphinx) or one shared (HTTP)."""

    def __init__(self, context: JobContext) -> None:
        self.settings = context.settings
        self._by_agent: dict[str, SpeechRecognizer] = {}
        self._whisper: WhisperModel | None = None

    @property
    def name(self) -> str:
        if self.settings.asr == "openai":
            return f"openai:{self.settings.asr_model}"
        if self.settings.asr == "whisper":
            return self._whisper_model().name
        return "pocketsphinx"

    def for_agent(self, agent: str) -> SpeechRecognizer:
        key = agent if self.settings.asr != "openai" else "*"
        if key not in self._by_agent:
            self._by_agent[key] = self._build(agent)
        return self._by_agent[key]

    def _build(self, agent: str) -> SpeechRecognizer:
        from media.asr import OpenAITranscriber, PocketSphinxRecognizer

        s = self.settings
        if s.asr == "openai":
            return OpenAITranscriber(s.asr_base_url, s.asr_api_key or None, model=s.asr_model)
        if s.asr == "whisper":
            return self._whisper_model().recognizer(self._phrases(agent))
        return PocketSphinxRecognizer(phrases=self._phrases(agent), pool_size=1)

    def _whisper_model(self) -> WhisperModel:
        if self._whisper is None:
            from media.whisper import WhisperModel

            self._whisper = WhisperModel(self.settings.whisper_model_dir)
        return self._whisper

    def _phrases(self, agent: str) -> list[str]:
        """The agent's in-domain words; none (the general model) for an agent this
        worker does not know."""
        from switch.agents import ScriptedAgent
        from switch.voice import build_brain

        s = self.settings
        try:
            if agent in ("default", "") and s.agent != "none":
                return build_brain(s).phrases()
            path = Path(s.agents_dir) / f"{agent}.yaml" if s.agents_dir else None
            if path is not None and path.is_file():
                return ScriptedAgent.from_file(path).phrases()
        except (OSError, ValueError) as exc:
            log.warning("agent %s: no language model (%s): the general model decodes", agent, exc)
        return []

    async def close(self) -> None:
        for recognizer in self._by_agent.values():
            close = getattr(recognizer, "aclose", None)
            if close is not None:
                await close()


async def transcribe(
    context: JobContext, call_id: str | None = None, limit: int | str = DEFAULT_LIMIT
) -> dict[str, Any]:
    """Transcribe ``call_id``'s recording, or up to ``limit`` recorded calls that have
    no transcript by this engine yet (oldest first)."""
    engines = Engines(context)
    db = await context.db()
    rows = await db.fetch(
        "SELECT call_id, agent, recording FROM calls c WHERE recording IS NOT NULL"
        " AND ($1::text IS NULL AND NOT EXISTS (SELECT 1 FROM call_transcripts t"
        " WHERE t.call_id = c.call_id AND t.engine = $2) OR c.call_id = $1)"
        " ORDER BY ended_at NULLS LAST LIMIT $3",
        call_id, engines.name, int(limit),
    )  # fmt: skip
    if call_id is not None and not rows:
        raise JobError(f"no recorded call {call_id!r}")
    done: list[str] = []
    failed: dict[str, str] = {}
    try:
        for row in rows:
            recording = json.loads(row["recording"])
            try:
                event = await _transcribe_one(context, engines, row["call_id"], row["agent"],
                                              recording)  # fmt: skip
            except (OSError, ValueError, KeyError, JobError) as exc:
                if call_id is not None:
                    raise
                failed[row["call_id"]] = f"{type(exc).__name__}: {exc}"
                log.warning("call %s: not transcribed: %s", row["call_id"], exc)
                continue
            await context.publish(event)
            done.append(row["call_id"])
    finally:
        await engines.close()
    return {"engine": engines.name, "transcribed": done, "failed": failed}


async def _transcribe_one(
    context: JobContext, engines: Engines, call_id: str, agent: str, recording: dict[str, Any]
) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voxswitch-transcribe-") as scratch:
        path = await _fetch(context, recording, Path(scratch) / "recording.wav")
        digest = await asyncio.to_thread(_sha256, path)
        if digest != recording.get("sha256"):
            raise ValueError(f"recording {recording.get('location')}: checksum {digest} is not "
                             f"the recorded {recording.get('sha256')}")  # fmt: skip
        caller, agent_audio = await asyncio.to_thread(read_stereo, path)
    recognizer = engines.for_agent(agent)
    segments: list[dict[str, Any]] = []
    for channel, pcm in (("caller", caller), ("agent", agent_audio)):
        for start, end, piece in await asyncio.to_thread(utterances, pcm):
            text = (await recognizer.transcribe(piece)).text.strip()
            if text:
                segments.append({"channel": channel, "start_s": start, "end_s": end,
                                 "text": text})  # fmt: skip
    segments.sort(key=lambda s: (s["start_s"], s["channel"]))
    log.info("call %s: transcribed %d segments in %.1f s", call_id, len(segments),
             time.monotonic() - started)  # fmt: skip

    def side(channel: str) -> str:
        return " ".join(s["text"] for s in segments if s["channel"] == channel)

    return events.event(
        "call.transcribed", call_id, context.node_id,
        event_id=events.stable_id(call_id, "transcribed", engines.name, digest),
        engine=engines.name, caller_text=side("caller"), agent_text=side("agent"),
        segments=segments, sha256=digest,
    )  # fmt: skip


async def _fetch(context: JobContext, recording: dict[str, Any], scratch: Path) -> Path:
    location = str(recording.get("location") or "")
    if location.startswith("s3://"):
        await asyncio.to_thread(context.archive().download, location, scratch)
        return scratch
    path = Path(location)
    if not path.is_file():
        raise JobError(f"recording {location} is not on this machine (and not archived yet)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
