"""The batch jobs, measured against the services of deploy/local/services.sh.

    python -m loadtest.jobs [--calls 100000] [--recordings 12] [--recording-s 60]
                            [--concurrency 1,2]

* **daily report**: ``--calls`` calls (three turns each) on one day of their own,
  written into PostgreSQL in bulk; the ``daily_report`` job timed (twice: the second
  run replaces the day); then the ``retention`` job deleting them, timed.
* **transcription**: ``--recordings`` stereo recordings of ``--recording-s`` seconds
  (espeak-ng speech on both channels), each a call in PostgreSQL; for each
  ``--concurrency``, a ``voxswitch worker`` is started and one ``transcribe`` task per
  call enqueued; the wall time until all are done gives the audio seconds transcribed
  per second.
* **a killed worker's task**: one long task, the worker SIGKILLed while it runs, a new
  worker started: the time from the kill to the task's rerun starting and finishing.

Prints a JSON summary (and ``--out FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import redis

from loadtest.call_records import PIZZA_CALL, call_record, conversation, store
from loadtest.node import ENV_PREFIX, voxswitch_command
from loadtest.services import services_env
from switch.config import load_settings
from switch.jobs.context import run_in_context
from switch.recording import recording_path

SCRIPT = PIZZA_CALL

_BULK = """
INSERT INTO calls (call_id, direction, trunk, agent, node_id, offered_at, answered_at,
                   ended_at, duration_s, disposition, transfer_target)
SELECT 'etl-' || $1::text || '-' || g, 'inbound', 'trunk-' || (g % 4), 'agent-' || (g % 3),
       'bench', t, CASE WHEN g % 10 = 0 THEN NULL ELSE t + interval '3 s' END,
       t + interval '60 s', CASE WHEN g % 10 = 0 THEN 0 ELSE 30 + g % 300 END,
       CASE WHEN g % 10 = 0 THEN 'canceled' ELSE 'completed' END,
       CASE WHEN g % 20 = 1 THEN 'sip:operator@example.com' END
FROM generate_series(1, $3::int) AS g,
     LATERAL (SELECT $2::timestamptz + (g % 86000) * interval '1 s' AS t) AS at
"""
_BULK_TURNS = """
INSERT INTO call_turns (call_id, turn_index, event_id, source, latency_s, interrupted)
SELECT c.call_id, t, gen_random_uuid(), 'speech', 0.3 + random(), random() < 0.1
FROM calls c, generate_series(1, 3) AS t
WHERE c.call_id LIKE 'etl-' || $1::text || '-%' AND c.answered_at IS NOT NULL
"""


def job_env(services: dict[str, str], recordings: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**base, **services, "VOXSWITCH_RECORDINGS_DIR": str(recordings),
            "VOXSWITCH_KAFKA_TOPIC": "voxswitch.bench.jobs", "VOXSWITCH_LOG_LEVEL": "warning",
            "VOXSWITCH_JOBS_VISIBILITY_S": "6",
            "VOXSWITCH_ASR": "pocketsphinx"}  # fmt: skip  (the light recogniser: 2 cores)


def settings_of(env: dict[str, str]) -> Any:
    return load_settings({k[len(ENV_PREFIX) :].lower(): v for k, v in env.items()
                          if k.startswith(ENV_PREFIX)})  # fmt: skip


async def bench_report(env: dict[str, str], calls: int) -> dict[str, Any]:
    settings = settings_of(env)
    tag = uuid.uuid4().hex[:8]
    day = dt.date(2000, 1, 1) + dt.timedelta(days=int(tag, 16) % 3000)
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    await run_in_context(settings, "daily_report", day=day.isoformat())  # migrates
    db = await asyncpg.connect(settings.postgres_dsn)
    try:
        began = time.perf_counter()
        await db.execute(_BULK, tag, start, calls)
        await db.execute(_BULK_TURNS, tag)
        loaded_s = time.perf_counter() - began
    finally:
        await db.close()
    runs = []
    for _ in range(2):
        began = time.perf_counter()
        summary = await run_in_context(settings, "daily_report", day=day.isoformat())
        runs.append(round(time.perf_counter() - began, 2))
    assert summary["calls"] == calls, summary
    days = (dt.datetime.now(dt.UTC).date() - day).days - 1
    began = time.perf_counter()
    deleted = await run_in_context(settings, "retention", days=days)
    retention_s = time.perf_counter() - began
    return {"calls": calls, "turns": calls * 27 // 10, "load_s": round(loaded_s, 1),
            "report_s": runs, "groups": summary["groups"], "retention_s": round(retention_s, 1),
            "retention_deleted": deleted["calls"]}  # fmt: skip


class Worker:
    def __init__(self, env: dict[str, str], concurrency: int, log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [*voxswitch_command(), "worker", "--concurrency", str(concurrency)], env={
                **env, "VOXSWITCH_LOG_LEVEL": "info"},
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)


def enqueue(env: dict[str, str], call_id: str) -> str:
    command = [*voxswitch_command(), "jobs", "enqueue", "transcribe", "--call-id", call_id]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def status(client: redis.Redis, task_id: str) -> dict[str, Any]:
    raw = client.get(f"celery-task-meta-{task_id}")
    return dict(json.loads(raw)) if raw else {}


def make_calls(env: dict[str, str], count: int, seconds: float) -> tuple[list[str], float]:
    """``count`` recorded calls of about ``seconds`` each; their ids and total audio."""
    root = Path(env["VOXSWITCH_RECORDINGS_DIR"])
    repeats = max(1, round(seconds / 20))  # the script lasts ~20 s
    ids = []
    audio_s = 0.0
    for _ in range(count):
        call_id = f"bench-{uuid.uuid4().hex}"
        path = Path(recording_path(str(root), call_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = conversation(path, SCRIPT * repeats)
        audio_s += float(summary["duration_s"])
        store(env["VOXSWITCH_POSTGRES_DSN"],
              [call_record(time.time() - 60, call_id=call_id, recording=summary)])  # fmt: skip
        ids.append(call_id)
    return ids, audio_s


def bench_transcribe(env: dict[str, str], ids: list[str], concurrency: int, logs: Path,
                     audio_s: float) -> dict[str, Any]:  # fmt: skip
    client = redis.Redis.from_url(env["VOXSWITCH_REDIS_URL"])
    worker = Worker(env, concurrency, logs / f"worker-c{concurrency}.log")
    try:
        began = time.perf_counter()
        tasks = [enqueue(env, call_id) for call_id in ids]
        while not all(status(client, t).get("status") == "SUCCESS" for t in tasks):
            failed = [t for t in tasks if status(client, t).get("status") == "FAILURE"]
            if failed:
                raise RuntimeError(f"tasks failed: {[status(client, t) for t in failed]}")
            time.sleep(0.2)
        wall = time.perf_counter() - began
    finally:
        worker.stop()
        client.close()
    return {"concurrency": concurrency, "recordings": len(ids), "audio_s": round(audio_s, 1),
            "wall_s": round(wall, 1), "audio_s_per_s": round(audio_s / wall, 1)}  # fmt: skip


def bench_kill(env: dict[str, str], call_id: str, logs: Path) -> dict[str, Any]:
    client = redis.Redis.from_url(env["VOXSWITCH_REDIS_URL"])
    first = Worker(env, 1, logs / "worker-killed.log")
    second = None
    try:
        task = enqueue(env, call_id)
        while status(client, task).get("status") != "STARTED":
            time.sleep(0.05)
        time.sleep(1.0)
        first.stop(signal.SIGKILL)
        killed = time.perf_counter()
        second = Worker(env, 1, logs / "worker-after.log")
        while f"[{task}] received" not in second.log.read_text():
            time.sleep(0.05)
        rerun = time.perf_counter() - killed
        while status(client, task).get("status") != "SUCCESS":
            time.sleep(0.05)
        done = time.perf_counter() - killed
    finally:
        first.stop()
        if second is not None:
            second.stop()
        client.close()
    return {"visibility_s": int(env["VOXSWITCH_JOBS_VISIBILITY_S"]),
            "kill_to_rerun_s": round(rerun, 1), "kill_to_done_s": round(done, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.jobs", description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--recordings", type=int, default=12)
    parser.add_argument("--recording-s", type=float, default=60.0)
    parser.add_argument("--concurrency", default="1,2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    services = services_env()
    with tempfile.TemporaryDirectory(prefix="voxswitch-jobs-bench-") as scratch:
        env = job_env(services, Path(scratch) / "recordings")
        result: dict[str, Any] = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "report": asyncio.run(bench_report(env, args.calls)),
        }
        print(json.dumps(result["report"]), file=sys.stderr)
        levels = [int(c) for c in args.concurrency.split(",")]
        runs = []
        for level in levels:
            ids, audio = make_calls(env, args.recordings, args.recording_s)
            runs.append(bench_transcribe(env, ids, level, Path(scratch), audio))
            print(json.dumps(runs[-1]), file=sys.stderr)
        result["transcribe"] = runs
        [long_call], _ = make_calls(env, 1, 60)
        result["killed_worker"] = bench_kill(env, long_call, Path(scratch))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
