"""Call records for the batch jobs' tests and benchmark, written the way a node writes
them: its lifecycle events through the real PostgreSQL sink (and so the real
migrations); and recordings made by the real recorder, with speech from espeak-ng."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from actors.call import CallRecord
from media.recording import CallRecorder, summarize
from media.speech import SAMPLE_RATE, Pcm
from media.tts import EspeakSynthesizer
from switch.backbone import events
from switch.backbone.sinks import PostgresSink

FRAME = SAMPLE_RATE // 50

# A pizza-shop call (the demo agent's domain), both sides, for recordings.
PIZZA_CALL = [
    ("agent", "Thanks for calling Voxswitch Pizza! How can I help?"),
    ("caller", "do you deliver"),
    ("agent", "Yes, we deliver within five miles of the restaurant."),
    ("caller", "where are you located"),
    ("agent", "We're at 42 Main Street, right next to the central station."),
    ("caller", "what are your opening hours"),
    ("agent", "We're open every day from 11 AM to 10 PM."),
]


def call_record(
    offered_at: float,
    *,
    trunk: str = "carrier-a",
    agent: str = "default",
    disposition: str = "completed",
    answered: bool = True,
    duration_s: float = 30.0,
    turns: list[tuple[float, bool]] | None = None,  # (latency_s, interrupted)
    transfer: str = "",
    recording: dict[str, Any] | None = None,
    call_id: str = "",
) -> CallRecord:
    answered_at = offered_at + 2.0 if answered else None
    record = CallRecord(
        call_id=call_id or f"job-{uuid.uuid4().hex}",
        direction="inbound",
        from_uri="sip:+15550001@carrier",
        to_uri="sip:+15550100@voxswitch",
        node_id="node-jobs-test",
        trunk=trunk,
        agent=agent,
        offered_at=offered_at,
        answered_at=answered_at,
        ended_at=(answered_at + duration_s) if answered_at is not None else offered_at + 5.0,
        disposition=disposition,
        sip_code=200 if answered else 487,
        reason="caller hung up",
        codec="PCMU",
        transfer_target=transfer,
        recording=recording or {},
    )
    for i, (latency, interrupted) in enumerate(turns or [], start=1):
        record.turns.append({
            "index": i, "source": "speech", "caller": f"question {i}", "agent": f"answer {i}",
            "interrupted": interrupted, "tools": [], "latency_s": latency, "asr_s": 0.1,
            "llm_first_token_s": 0.0, "tts_first_audio_s": 0.05,
        })  # fmt: skip
    return record


def call_events(record: CallRecord) -> list[dict[str, Any]]:
    out = [events.offered(record)]
    if record.answered_at is not None:
        out.append(events.answered(record))
    if record.transfer_target:
        out.append(events.transferred(record, record.transfer_target))
    return out + events.ended(record)


def store(dsn: str, records: list[CallRecord]) -> None:
    async def write() -> None:
        sink = PostgresSink(dsn)
        try:
            await sink.deliver([e for r in records for e in call_events(r)])
        finally:
            await sink.close()

    asyncio.run(write())


def query(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def spoken(text: str, wpm: int = 150) -> Pcm:
    async def say() -> Pcm:
        voice = EspeakSynthesizer(rate_wpm=wpm)
        try:
            return await voice.synthesize(text)
        finally:
            await voice.aclose()

    return asyncio.run(say())


def conversation(path: Path, script: list[tuple[str, str]], gap_s: float = 1.0) -> dict[str, Any]:
    """A stereo recording of ``script`` [(caller or agent, words)], one after the other
    with ``gap_s`` of silence between; returns its summary (as a call record holds it)."""
    recorder = CallRecorder(path)
    silence = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.int16)
    for side, words in script:
        pcm = np.concatenate([silence, spoken(words)])
        pcm = np.pad(pcm, (0, -len(pcm) % FRAME))
        for i in range(0, len(pcm), FRAME):
            frame = pcm[i : i + FRAME]
            quiet = np.zeros(FRAME, dtype=np.int16)
            recorder.add(frame if side == "caller" else quiet, frame if side == "agent" else None)
    for _ in range(int(gap_s * 50)):
        recorder.add(np.zeros(FRAME, dtype=np.int16), None)
    recorder.close()
    return summarize(path).as_dict()
