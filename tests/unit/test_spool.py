"""The outbox spool on real files: order, cursors, restarts, torn lines, bounds."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from switch.backbone.spool import Spool


def ev(n: int) -> dict[str, object]:
    return {"event_id": f"e{n}", "n": n}


def test_each_reader_gets_every_event_in_order_at_its_own_pace(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka", "postgres"])
    for n in range(10):
        assert spool.append(ev(n)) == n
    kafka, pg = spool.reader("kafka"), spool.reader("postgres")
    batch = kafka.read(4)
    assert [e["n"] for _, e in batch] == [0, 1, 2, 3]
    kafka.commit(batch[-1][0])
    assert spool.depth("kafka") == 6 and spool.depth("postgres") == 10
    assert [e["n"] for _, e in kafka.read(100)] == list(range(4, 10))
    assert [e["n"] for _, e in pg.read(100)] == list(range(10))
    assert kafka.read(100) == []  # nothing new
    spool.append(ev(10))
    assert [e["n"] for _, e in kafka.read(100)] == [10]


def test_rewind_rereads_what_was_not_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka"])
    for n in range(5):
        spool.append(ev(n))
    reader = spool.reader("kafka")
    reader.commit(reader.read(2)[-1][0])
    assert [e["n"] for _, e in reader.read(10)] == [2, 3, 4]
    reader.rewind()  # the delivery of 2..4 failed
    assert [e["n"] for _, e in reader.read(10)] == [2, 3, 4]


def test_a_restart_resumes_each_reader_from_its_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka", "postgres"])
    for n in range(6):
        spool.append(ev(n))
    spool.reader("kafka").commit(3)
    spool.close()
    again = Spool(tmp_path, ["kafka", "postgres"])
    assert again.next_seq == 6
    assert [e["n"] for _, e in again.reader("kafka").read(10)] == [4, 5]
    assert [e["n"] for _, e in again.reader("postgres").read(10)] == list(range(6))
    assert again.append(ev(6)) == 6


def _append_then_die(directory: str) -> None:
    spool = Spool(directory, ["kafka"])
    for n in range(100):
        spool.append(ev(n))
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: as a crash


def test_events_survive_sigkill(tmp_path: Path) -> None:
    process = multiprocessing.get_context("spawn").Process(
        target=_append_then_die, args=(str(tmp_path),)
    )
    process.start()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    spool = Spool(tmp_path, ["kafka"])
    assert [e["n"] for _, e in spool.reader("kafka").read(1000)] == list(range(100))


def test_a_torn_last_line_is_dropped_and_the_log_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka"])
    spool.append(ev(0))
    spool.close()
    (segment,) = tmp_path.glob("*.jsonl")
    with segment.open("ab") as f:
        f.write(b'{"event_id": "half')  # power lost mid-write
    again = Spool(tmp_path, ["kafka"])
    assert again.next_seq == 1
    again.append(ev(1))
    assert [e["n"] for _, e in again.reader("kafka").read(10)] == [0, 1]
    assert all(json.loads(line) for line in segment.read_text().splitlines())


def test_segments_rotate_and_are_deleted_once_every_reader_passed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka", "postgres"], segment_bytes=200)
    for n in range(40):
        spool.append(ev(n))
    segments = sorted(tmp_path.glob("*.jsonl"))
    assert len(segments) > 5
    spool.reader("kafka").commit(39)
    assert sorted(tmp_path.glob("*.jsonl")) == segments  # postgres still needs them
    pg = spool.reader("postgres")
    got = pg.read(1000)
    assert [e["n"] for _, e in got] == list(range(40))  # across segment boundaries
    pg.commit(39)
    assert len(list(tmp_path.glob("*.jsonl"))) == 1  # only the one being written
    spool.close()
    again = Spool(tmp_path, ["kafka", "postgres"], segment_bytes=200)
    assert again.next_seq == 40 and again.depth("postgres") == 0


def test_full_when_the_undelivered_backlog_passes_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka"], max_bytes=1000, segment_bytes=300)
    while not spool.full:
        spool.append(ev(spool.next_seq))
    assert spool.pending_bytes > 1000
    reader = spool.reader("kafka")
    reader.commit(reader.read(10_000)[-1][0])
    assert not spool.full


def test_one_process_per_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka"])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        message = pool.apply(_try_open, (str(tmp_path),))
    assert "in use by another process" in message
    spool.close()
    with ctx.Pool(1) as pool:
        assert pool.apply(_try_open, (str(tmp_path),)) == "opened"


def _try_open(directory: str) -> str:
    try:
        Spool(directory, ["kafka"]).close()
    except RuntimeError as exc:
        return str(exc)
    return "opened"


def test_unknown_reader_is_an_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["kafka"])
    with pytest.raises(KeyError):
        spool.reader("nope")
