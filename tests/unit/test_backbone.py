"""Events against their schema; the courier over the file sink (real files)."""

from __future__ import annotations

import asyncio
import json
import uuid
from itertools import pairwise
from pathlib import Path

import jsonschema
import pytest

from actors.call import CallRecord
from switch.backbone import courier as backbone_module
from switch.backbone import events
from switch.backbone.courier import Backbone, build_sinks
from switch.backbone.sinks import FileSink, KafkaSink, PostgresSink, migrations

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "call-events.v1.json").read_text()
)


def a_record() -> CallRecord:
    record = CallRecord(
        call_id="c1@example.com",
        direction="inbound",
        from_uri="sip:alice@example.com",
        to_uri="sip:agent@voxswitch",
        node_id="n1",
        offered_at=1000.0,
        answered_at=1001.0,
        ended_at=1031.5,
        disposition="completed",
        sip_code=200,
        reason="caller hung up",
        codec="PCMU",
        dtmf="12#",
        turns=[
            {"index": 1, "source": "speech", "caller": "hours?", "agent": "9 to 5",
             "interrupted": False, "tools": [], "latency_s": 0.7, "processing_s": 0.2,
             "asr_s": 0.2, "llm_first_token_s": 0.001, "tts_first_audio_s": 0.01},
            {"index": 2, "source": "dtmf", "caller": "DTMF: 1", "agent": "bye",
             "interrupted": True, "tools": ["hang_up"], "latency_s": None,
             "processing_s": None, "asr_s": None, "llm_first_token_s": None,
             "tts_first_audio_s": None},
        ],
    )  # fmt: skip
    record.transfer_target = "sip:human@example.com"
    return record


def test_every_event_type_matches_the_published_schema() -> None:
    record = a_record()
    built = [
        events.offered(record),
        events.answered(record),
        events.transferred(record, record.transfer_target),
        *events.ended(record),
    ]
    assert [e["type"] for e in built] == [
        "call.offered", "call.answered", "call.transferred",
        "call.turn", "call.turn", "call.dtmf", "call.ended",
    ]  # fmt: skip
    for e in built:
        jsonschema.validate(e, SCHEMA)
        uuid.UUID(e["event_id"])
        assert e["call_id"] == record.call_id and e["schema_version"] == 1
    assert len({e["event_id"] for e in built}) == len(built)
    ended = built[-1]
    assert ended["duration_s"] == 30.5 and ended["disposition"] == "completed"
    assert built[3]["caller_text"] == "hours?" and built[3]["latency_s"] == 0.7


def test_the_schema_rejects_what_breaks_the_contract() -> None:
    bad = events.offered(a_record())
    del bad["event_id"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    ended = events.ended(a_record())[-1]
    ended["disposition"] = ""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ended, SCHEMA)
    with pytest.raises(ValueError, match="unknown event type"):
        events.event("call.exploded", "c", "n")


def test_sinks_chosen_by_settings() -> None:
    kinds = lambda **kw: [type(s) for s in build_sinks(node_id="n", kafka_topic="t", **kw)]  # noqa: E731
    assert kinds(kafka_bootstrap="", postgres_dsn="", events_file="e.jsonl") == [FileSink]
    assert kinds(kafka_bootstrap="k:9092", postgres_dsn="", events_file="e.jsonl") == [KafkaSink]
    assert kinds(kafka_bootstrap="k:9092", postgres_dsn="postgresql://x", events_file="e") == [
        KafkaSink, PostgresSink,
    ]  # fmt: skip
    assert kinds(kafka_bootstrap="", postgres_dsn="", events_file="") == []


def test_migrations_are_numbered_and_create_the_documented_tables() -> None:
    found = migrations()
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))
    sql = found[0][2]
    for table in ("calls", "call_turns", "call_events"):
        assert f"CREATE TABLE {table} (" in sql


async def test_courier_retries_a_failing_sink_and_delivers_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file sink's directory is missing (writes fail): events wait in the spool;
    once it exists, every event arrives once, in order."""
    monkeypatch.setattr(backbone_module, "BACKOFF_START_S", 0.02)
    target = tmp_path / "later" / "events.jsonl"
    bb = Backbone(tmp_path / "spool", [FileSink(target)], max_bytes=1 << 20)
    bb.start()
    try:
        for n in range(20):
            bb.publish(events.event("call.dtmf", f"c{n}", "n1", digits=str(n % 10)))
        await asyncio.sleep(0.1)
        status = bb.status()["sinks"]["file"]
        assert status["up"] is False and status["depth"] == 20 and status["failures"] >= 1
        target.parent.mkdir()
        assert await bb.flush(5.0)
        lines = [json.loads(x) for x in target.read_text().splitlines()]
        assert [e["call_id"] for e in lines] == [f"c{n}" for n in range(20)]
        assert bb.status()["sinks"]["file"]["up"] is True
    finally:
        await bb.close()


async def test_a_file_courier_catching_up_lets_the_loop_turn_between_batches(
    tmp_path: Path,
) -> None:
    """A backlog of 2,000 events: the file sink's writes never await, so without a
    turn between batches the whole catch-up would run as one step and every other
    task (SIP reads among them) would wait behind it."""
    target = tmp_path / "events.jsonl"
    bb = Backbone(tmp_path / "spool", [FileSink(target)], max_bytes=8 << 20)
    for n in range(2000):
        bb.publish(events.event("call.dtmf", f"c{n}", "n1", digits=str(n % 10)))
    seen: list[int] = []  # lines written each time another task got the loop

    async def watcher() -> None:
        while len(seen) < 1000:
            seen.append(target.read_text().count("\n") if target.exists() else 0)
            await asyncio.sleep(0)

    task = asyncio.create_task(watcher())
    bb.start()
    try:
        assert await bb.flush(10.0)
        task.cancel()
        partial = sorted({n for n in seen if 0 < n < 2000})
        assert len(partial) >= 10, partial  # many turns happened mid catch-up
        assert max(b - a for a, b in pairwise([0, *partial, 2000])) <= 100
        assert target.read_text().count("\n") == 2000
    finally:
        task.cancel()
        await bb.close()
