"""The batch jobs against the real Redis (Celery's broker), PostgreSQL, Kafka and S3
store: ``voxswitch jobs run NAME`` as a CronJob calls it, and ``voxswitch worker`` as
the Celery worker that takes them from the queue, killed mid-task."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from loadtest.call_records import PIZZA_CALL, call_record, conversation, query, store
from loadtest.node import ENV_PREFIX, NodeFactory, NodeOptions, voxswitch_command
from switch.recording import recording_path
from switch.recording.archive import S3Target, write_manifest
from tests.e2e.api_client import ADMIN, api
from tests.e2e.event_stream import SCHEMA, kafka_events
from tests.e2e.polling import wait_for
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

SCRIPT = PIZZA_CALL[:5]


@pytest.fixture
def env(services: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A job's settings: the services, a recordings folder, a topic and an S3 prefix of
    the test's own (and none of a developer's VOXSWITCH_* settings)."""
    tag = uuid.uuid4().hex[:8]
    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {
        **base, **services,
        "VOXSWITCH_RECORDINGS_DIR": str(tmp_path / "recordings"),
        "VOXSWITCH_KAFKA_TOPIC": f"voxswitch.test.jobs.{tag}",
        "VOXSWITCH_S3_URL": f"{services['VOXSWITCH_S3_URL']}/jobs-{tag}",
        "VOXSWITCH_LOG_LEVEL": "info",
        "VOXSWITCH_ASR": "pocketsphinx",  # the light recogniser: the job, not hearing, is tested
    }  # fmt: skip


def jobs(env: dict[str, str], *args: str, timeout_s: float = 120) -> tuple[int, Any, str]:
    """``voxswitch jobs ARGS``: (exit code, its JSON summary or None, stderr)."""
    done = subprocess.run(
        [*voxswitch_command(), "jobs", *args], env=env, capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip
    try:
        summary = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        summary = done.stdout
    return done.returncode, summary, done.stderr


def recorded_call(env: dict[str, str], script: list[tuple[str, str]], **fields: Any) -> Any:
    """A call whose recording waits in the recordings folder for the archive, as a node
    leaves it (file + manifest), with its call record in PostgreSQL."""
    call_id = f"job-{uuid.uuid4().hex}"
    path = Path(recording_path(env["VOXSWITCH_RECORDINGS_DIR"], call_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = conversation(path, script)
    record = call_record(time.time() - 120, call_id=call_id, recording=summary, **fields)
    store(env["VOXSWITCH_POSTGRES_DSN"], [record])
    write_manifest(path, call_id, summary)
    return record


def transcripts(env: dict[str, str], call_id: str) -> list[dict[str, Any]]:
    return query(env["VOXSWITCH_POSTGRES_DSN"],
                 "SELECT * FROM call_transcripts WHERE call_id = $1", call_id)  # fmt: skip


def events_of(env: dict[str, str], call_id: str, kind: str) -> list[dict[str, Any]]:
    sql = "SELECT * FROM call_events WHERE call_id = $1 AND type = $2"
    return query(env["VOXSWITCH_POSTGRES_DSN"], sql, call_id, kind)


def recording_of(env: dict[str, str], call_id: str) -> dict[str, Any]:
    [row] = query(env["VOXSWITCH_POSTGRES_DSN"],
                  "SELECT recording FROM calls WHERE call_id = $1", call_id)  # fmt: skip
    return dict(json.loads(row["recording"]))


# ---- archive, then transcribe from the archive -------------------------------------------


def test_archive_then_transcribe_from_the_store_once_however_often_it_runs(
    env: dict[str, str],
) -> None:
    record = recorded_call(env, SCRIPT)
    local = Path(record.recording["location"])
    sent = local.read_bytes()

    code, summary, err = jobs(env, "run", "archive")
    assert code == 0, err
    assert summary == {"archived": 1, "failed": 0, "pending": 0}
    assert not local.exists() and not list(local.parent.glob("*.json"))
    location = recording_of(env, record.call_id)["location"]
    s3 = S3Target.from_url(env["VOXSWITCH_S3_URL"])
    bucket, _, key = location.removeprefix("s3://").partition("/")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == sent

    # The transcript comes from the store's copy (checked against the record's SHA-256).
    code, summary, err = jobs(env, "run", "transcribe", "--call-id", record.call_id)
    assert code == 0, err
    assert summary["transcribed"] == [record.call_id] and summary["engine"] == "pocketsphinx"
    [row] = transcripts(env, record.call_id)
    # pocketsphinx on espeak's voice gets many words wrong (README); these it hears.
    assert "do you deliver" in row["caller_text"], row
    assert "deliver" in row["agent_text"], row
    segments = json.loads(row["segments"])
    caller_first = next(s for s in segments if "deliver" in s["text"])
    assert caller_first["channel"] == "caller" and 5.0 <= caller_first["start_s"] <= 6.5
    assert {s["channel"] for s in segments} == {"caller", "agent"}
    assert segments[0]["channel"] == "agent" and segments[0]["start_s"] == pytest.approx(
        1.0, abs=0.2
    )
    assert all(a["start_s"] <= b["start_s"] for a, b in itertools.pairwise(segments))
    assert row["sha256"] == hashlib.sha256(sent).hexdigest()

    # Again (a retry, a CronJob overlapping a worker): the same event, nothing doubled.
    code, _, err = jobs(env, "run", "transcribe", "--call-id", record.call_id)
    assert code == 0, err
    assert len(transcripts(env, record.call_id)) == 1
    [event_row] = events_of(env, record.call_id, "call.transcribed")
    assert event_row["event_id"] == row["event_id"]

    # The batch form finds calls without a transcript: this one has one.
    code, summary, err = jobs(env, "run", "transcribe", "--limit", "1000")
    assert code == 0, err
    assert record.call_id not in summary["transcribed"]

    topic = env["VOXSWITCH_KAFKA_TOPIC"]
    got = kafka_events(env["VOXSWITCH_KAFKA_BOOTSTRAP"], topic, expect=2)
    kinds = {e["type"]: e for key, e in got if key == record.call_id}
    assert set(kinds) == {"call.archived", "call.transcribed"}
    for event in kinds.values():
        jsonschema.validate(event, SCHEMA)
    assert kinds["call.transcribed"]["event_id"] == str(row["event_id"])
    assert kinds["call.archived"]["location"] == location


def test_a_recording_that_changed_is_not_transcribed(env: dict[str, str]) -> None:
    record = recorded_call(env, SCRIPT[:2])
    path = Path(record.recording["location"])
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    code, _, err = jobs(env, "run", "transcribe", "--call-id", record.call_id)
    assert code == 1 and "checksum" in err, err
    assert transcripts(env, record.call_id) == []


def test_jobs_say_what_they_lack_in_one_line(env: dict[str, str]) -> None:
    code, _, err = jobs(env, "run", "retention")
    assert code == 2 and err.strip().endswith("set it above 0"), err
    code, _, err = jobs(env, "run", "nope")
    assert code == 2 and "no job 'nope'" in err and "Traceback" not in err
    without = {k: v for k, v in env.items() if k != "VOXSWITCH_S3_URL"}
    code, _, err = jobs(without, "run", "archive")
    assert code == 2 and "set s3_url" in err
    code, _, err = jobs(env, "run", "daily_report", "--day", "2026-13-01")
    assert code == 2 and "YYYY-MM-DD" in err


# ---- the Celery worker, killed mid-task ---------------------------------------------------


class Worker:
    """``voxswitch worker`` in a process group of its own (so the test can kill it
    whole, pool processes and all)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("ab")
        self.process = subprocess.Popen(
            [*voxswitch_command(), "worker", "--concurrency", "1"], env=env,
            stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for("the worker to be ready", lambda: b" ready." in log.read_bytes(), timeout_s=30)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._file.close()


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def task_meta(env: dict[str, str], task_id: str) -> dict[str, Any]:
    client = redis.Redis.from_url(env["VOXSWITCH_REDIS_URL"])
    try:
        raw = client.get(f"celery-task-meta-{task_id}")
    finally:
        client.close()
    return dict(json.loads(raw)) if raw else {}


LONG_SCRIPT = (
    SCRIPT
    + [
        ("caller", "how much is a large pizza"),
        ("agent", "A large pizza is fifteen dollars."),
        ("caller", "what time do you close"),
        ("agent", "We're open every day from 11 AM to 10 PM."),
    ]
    * 4
)


@pytest.mark.parametrize("kill", ["pool process", "whole worker"])
def test_a_worker_killed_mid_task_runs_it_again_and_writes_it_once(
    env: dict[str, str], workers: list[Worker], tmp_path: Path, kill: str
) -> None:
    """acks late: a SIGKILLed pool process's task is rejected back to the queue and run
    by the next one; a worker killed whole leaves it unacknowledged, and the broker
    gives it to the next worker after ``jobs_visibility_s``."""
    env = {**env, "VOXSWITCH_JOBS_VISIBILITY_S": "3"}
    record = recorded_call(env, LONG_SCRIPT)
    workers.append(Worker(env, tmp_path / "worker-1.log"))
    code, task_id, err = jobs(env, "enqueue", "transcribe", "--call-id", record.call_id)
    assert code == 0, err
    task_id = str(task_id).strip()
    meta = wait_for("the task to start", lambda: (m := task_meta(env, task_id)).get(
        "status") == "STARTED" and m, timeout_s=30)  # fmt: skip
    time.sleep(0.5)  # well inside the task: it takes a few seconds
    assert task_meta(env, task_id)["status"] == "STARTED"
    if kill == "pool process":
        os.kill(int(meta["result"]["pid"]), signal.SIGKILL)
    else:
        workers[0].kill()
        assert transcripts(env, record.call_id) == []  # it did not get to the end
        workers.append(Worker(env, tmp_path / "worker-2.log"))
    wait_for("the task to run again and succeed",
             lambda: task_meta(env, task_id).get("status") == "SUCCESS", timeout_s=90)  # fmt: skip
    assert task_meta(env, task_id)["result"]["transcribed"] == [record.call_id]
    received = sum(w.log.read_text().count(f"[{task_id}] received") for w in workers)
    if kill == "pool process":
        assert "WorkerLostError" in workers[0].log.read_text()
    else:
        assert f"[{task_id}] received" in workers[1].log.read_text()
    assert received >= 1
    [row] = transcripts(env, record.call_id)
    assert "deliver" in row["caller_text"]
    assert len(events_of(env, record.call_id, "call.transcribed")) == 1


# ---- retention ----------------------------------------------------------------------------


def test_retention_deletes_only_what_is_old(env: dict[str, str], tmp_path: Path) -> None:
    """Kept 30 days: calls ended 31 days ago go (rows, events, turns, transcript, the
    recording on disk or in the store); calls of 29 days ago stay, with theirs."""
    days = 30
    now = time.time()
    root = Path(env["VOXSWITCH_RECORDINGS_DIR"])
    s3 = S3Target.from_url(env["VOXSWITCH_S3_URL"])
    client = s3.client()

    def made(age_days: float, where: str) -> Any:
        call_id = f"ret-{uuid.uuid4().hex}"
        path = root / "old" / f"{call_id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = conversation(path, SCRIPT[:1], gap_s=0.2)
        if where == "s3":
            key = s3.key_for(path.name)
            client.put_object(Bucket=s3.bucket, Key=key, Body=path.read_bytes())
            path.unlink()
            summary["location"] = s3.url_of(key)
        offered = now - age_days * 86400 - 60  # ended ~30 s after it was offered
        return call_record(offered, call_id=call_id, recording=summary, turns=[(0.5, False)],
                           duration_s=20)  # fmt: skip

    old = [made(days + 1, "local"), made(days + 1, "s3")]
    new = [made(days - 1, "local"), made(days - 1, "s3")]
    store(env["VOXSWITCH_POSTGRES_DSN"], old + new)
    # A file no row names (a node without PostgreSQL), old by its age, and a new one.
    orphan_old, orphan_new = root / "2020-01-01" / "a.wav", root / "2020-01-01" / "b.wav"
    orphan_old.parent.mkdir(parents=True)
    orphan_old.write_bytes(b"RIFF")
    orphan_new.write_bytes(b"RIFF")
    os.utime(orphan_old, (now - (days + 2) * 86400,) * 2)

    code, summary, err = jobs(env, "run", "retention", "--days", str(days))
    assert code == 0, err
    assert summary["kept"] == {}
    assert summary["files"] >= 1 and not orphan_old.exists() and orphan_new.exists()

    def exists(record: Any) -> dict[str, bool]:
        location = record.recording["location"]
        if location.startswith("s3://"):
            listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=location.split("/", 3)[3])
            stored = listed.get("KeyCount", 0) == 1
        else:
            stored = Path(location).exists()
        dsn = env["VOXSWITCH_POSTGRES_DSN"]
        rows = {t: bool(query(dsn, f"SELECT 1 FROM {t} WHERE call_id = $1", record.call_id))
                for t in ("calls", "call_turns", "call_events")}  # fmt: skip
        return {"recording": stored, **rows}

    for record in old:
        assert not any(exists(record).values()), record.call_id
    for record in new:
        assert all(exists(record).values()), record.call_id


# ---- the daily report --------------------------------------------------------------------


def test_the_daily_report_is_computed_once_per_day_and_served_by_the_api(
    env: dict[str, str], voxswitch_nodes: NodeFactory
) -> None:
    # A day of its own, long ago, so no other test's calls are in it.
    day = dt.date(2001, 1, 1) + dt.timedelta(days=uuid.uuid4().int % 3000)
    base = dt.datetime(day.year, day.month, day.day, 9, tzinfo=dt.UTC).timestamp()
    trunk = f"trunk-{uuid.uuid4().hex[:6]}"
    calls = [
        call_record(base, trunk=trunk, agent="demo", duration_s=60,
                    turns=[(0.4, False), (0.6, True), (0.8, False)]),
        call_record(base + 60, trunk=trunk, agent="demo", duration_s=120,
                    turns=[(1.0, False)], transfer="sip:operator@example.com"),
        call_record(base + 120, trunk=trunk, agent="demo", disposition="canceled",
                    answered=False),
        call_record(base - 86400, trunk=trunk, agent="demo", duration_s=10),  # the day before
    ]  # fmt: skip
    store(env["VOXSWITCH_POSTGRES_DSN"], calls)

    for _ in range(2):  # the same day twice: the same rows, not twice as many
        code, summary, err = jobs(env, "run", "daily_report", "--day", day.isoformat())
        assert code == 0, err
        assert summary == {"day": day.isoformat(), "groups": 2, "calls": 3}

    keys = Path(env["VOXSWITCH_RECORDINGS_DIR"]).parent / "keys.json"
    node_env = {**env, "VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_API_KEYS_FILE": str(keys)}
    reader = create_key(keys, "calls:read")
    node = voxswitch_nodes.start("reports", NodeOptions(env=node_env))
    status, body = api(node, "GET", f"/v1/reports/daily?day={day.isoformat()}")
    assert status == 200, body
    rows = {r["disposition"]: r for r in body["rows"] if r["trunk"] == trunk}
    completed, canceled = rows["completed"], rows["canceled"]
    assert (completed["calls"], completed["answered"]) == (2, 2)
    assert completed["handle_s_avg"] == pytest.approx(90.0)
    assert completed["handle_s_total"] == pytest.approx(180.0)
    assert completed["turns"] == 4 and completed["barge_ins"] == 1
    assert completed["barge_in_rate"] == pytest.approx(0.25)
    assert completed["turn_latency_p50"] == pytest.approx(0.7)
    assert completed["turn_latency_p95"] == pytest.approx(0.97)
    assert completed["transfers"] == 1 and completed["transfer_rate"] == pytest.approx(0.5)
    assert (canceled["calls"], canceled["answered"], canceled["turns"]) == (1, 0, 0)
    assert canceled["transfer_rate"] is None and canceled["handle_s_avg"] is None
    assert body["missing_days"] == []

    before = day - dt.timedelta(days=1)
    status, body = api(node, "GET", f"/v1/reports/daily?from={before}&to={day}")
    assert status == 200 and body["missing_days"] == [before.isoformat()]
    status, body = api(node, "GET", "/v1/reports/daily?from=2026-02-01")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "to"]
    status, body = api(node, "GET", "/v1/reports/daily?day=yesterday")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "day"]
    status, _ = api(node, "GET", f"/v1/reports/daily?day={day}", key="not-a-key")
    assert status == 401
    status, _ = api(node, "GET", f"/v1/reports/daily?day={day}", key=reader)
    assert status == 403


def create_key(keys: Path, *scopes: str) -> str:
    args = [sys.executable, "-m", "switch.cli", "apikey", "create", "--name", "t",
            "--api-keys-file", str(keys)]  # fmt: skip
    for scope in scopes:
        args += ["--scope", scope]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def test_reports_while_postgres_is_down_say_when_to_ask_again(
    env: dict[str, str], voxswitch_nodes: NodeFactory
) -> None:
    dsn = env["VOXSWITCH_POSTGRES_DSN"]
    port = int(dsn.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port).up()
    try:
        through = dsn.replace(f":{port}/", f":{proxy.port}/")
        node_env = {**env, "VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_POSTGRES_DSN": through}
        node = voxswitch_nodes.start("reports-outage", NodeOptions(env=node_env))
        assert api(node, "GET", "/v1/reports/daily?day=2001-01-01")[0] == 200
        proxy.down()
        headers: dict[str, str] = {}
        status, body = api(node, "GET", "/v1/reports/daily?day=2001-01-01", headers=headers)
        assert status == 503 and "did not answer" in body["detail"], body
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "10"
        proxy.up()
        status, _ = wait_for("the reports back", lambda: (
            r := api(node, "GET", "/v1/reports/daily?day=2001-01-01"))[0] == 200 and r)  # fmt: skip
    finally:
        proxy.down()
