"""The batch jobs' pieces that need no service: utterances found in a channel, the
recording's layout, days, options, the schedule, event ids a rerun repeats."""

from __future__ import annotations

import asyncio
import datetime as dt
import wave
from pathlib import Path

import numpy as np
import pytest

from media.recording import CallRecorder
from switch.backbone import events
from switch.config import load_settings
from switch.jobs import JOBS, JobError, run_job
from switch.jobs.analytics import parse_day
from switch.jobs.context import JobContext
from switch.jobs.transcribe import read_stereo, utterances
from switch.jobs.worker import TASK_PREFIX, broker_url, make_app, schedule
from tests.unit.test_vad import silence, vowel


def test_utterances_are_found_where_the_voice_is() -> None:
    pcm = np.concatenate([silence(1.0), vowel(0.8), silence(1.5), vowel(1.2), silence(1.0)])
    found = utterances(pcm)
    assert len(found) == 2
    (s1, e1, a1), (s2, e2, _) = found
    assert s1 == pytest.approx(1.0, abs=0.1) and e1 == pytest.approx(1.8, abs=0.15)
    assert s2 == pytest.approx(3.3, abs=0.1) and e2 == pytest.approx(4.5, abs=0.15)
    # Each piece carries a little before the onset and after the end, for the decoder.
    assert len(a1) / 8000 == pytest.approx(e1 - s1 + 0.6, abs=0.05)
    assert utterances(silence(3.0)) == []


def test_speech_running_to_the_end_of_the_recording_is_an_utterance() -> None:
    [(start, end, _)] = utterances(np.concatenate([silence(0.5), vowel(1.0)]))
    assert start == pytest.approx(0.5, abs=0.1) and end == pytest.approx(1.5, abs=0.01)


def test_a_recording_splits_into_caller_and_agent(tmp_path: Path) -> None:
    path = tmp_path / "r.wav"
    recorder = CallRecorder(path)
    caller, agent = vowel(0.2), vowel(0.2) // 2
    for i in range(0, len(caller), 160):
        recorder.add(caller[i : i + 160], agent[i : i + 160])
    recorder.close()
    left, right = read_stereo(path)
    assert np.array_equal(left, caller) and np.array_equal(right, agent)
    mono = tmp_path / "mono.wav"
    with wave.open(str(mono), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    with pytest.raises(ValueError, match="not a stereo"):
        read_stereo(mono)


def test_a_day_is_iso_or_yesterday() -> None:
    assert parse_day("2026-11-30") == dt.date(2026, 11, 30)
    assert parse_day(None, today=dt.date(2026, 3, 1)) == dt.date(2026, 2, 28)
    with pytest.raises(JobError, match="YYYY-MM-DD"):
        parse_day("30/11/2026")


def test_a_job_refuses_what_it_does_not_know() -> None:
    context = JobContext(load_settings({}))
    with pytest.raises(JobError, match="no job 'export'"):
        asyncio.run(run_job(context, "export"))
    with pytest.raises(JobError, match="unknown option 'day'"):
        asyncio.run(run_job(context, "retention", day="2026-01-01"))
    with pytest.raises(JobError, match="needs PostgreSQL"):
        asyncio.run(run_job(context, "daily_report"))


def test_a_rerun_says_the_same_event() -> None:
    first = events.stable_id("call-1", "transcribed", "pocketsphinx", "ab" * 32)
    assert first == events.stable_id("call-1", "transcribed", "pocketsphinx", "ab" * 32)
    assert first != events.stable_id("call-1", "transcribed", "openai:whisper-1", "ab" * 32)
    event = events.event("call.transcribed", "call-1", "jobs", event_id=first)
    assert event["event_id"] == first


def test_the_schedule_has_only_what_is_configured() -> None:
    plain = schedule(load_settings({}))
    assert set(plain) == {"transcribe", "daily_report"}
    full = schedule(load_settings({"s3_url": "http://k:s@127.0.0.1:9/b", "retention_days": "90"}))
    assert set(full) == set(JOBS)
    assert all(entry["task"] == TASK_PREFIX + name for name, entry in full.items())


def test_the_workers_need_redis_and_take_tasks_late() -> None:
    with pytest.raises(JobError, match="need Redis"):
        broker_url(load_settings({}))
    settings = load_settings({"redis_url": "redis://127.0.0.1:1/0", "jobs_visibility_s": "600"})
    app = make_app(settings)
    assert {TASK_PREFIX + name for name in JOBS} <= set(app.tasks)
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] == 600
