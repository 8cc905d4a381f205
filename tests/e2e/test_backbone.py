"""The backbone against the real services: Kafka events, PostgreSQL records, Redis
checkpoints, and nothing lost through an outage or a SIGKILL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pytest
import redis

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippResult, SippRunner
from switch.recording.archive import S3Target
from tests.e2e.api_client import ADMIN, api
from tests.e2e.event_stream import SCHEMA, kafka_events
from tests.e2e.polling import wait_for
from tests.e2e.tcp_proxy import TcpProxy

# ---- helpers -----------------------------------------------------------------------------


def call_row(dsn: str, call_id: str) -> dict[str, Any] | None:
    async def fetch() -> dict[str, Any] | None:
        connection = await asyncpg.connect(dsn)
        try:
            row = await connection.fetchrow("SELECT * FROM calls WHERE call_id = $1", call_id)
            return dict(row) if row else None
        finally:
            await connection.close()

    return asyncio.run(fetch())


def in_background(run: Callable[[], SippResult]) -> tuple[threading.Thread, list[SippResult]]:
    results: list[SippResult] = []
    thread = threading.Thread(target=lambda: results.append(run()), daemon=True)
    thread.start()
    return thread, results


@pytest.fixture
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    # A cluster of its own: the module's other nodes (on the same Redis) must not adopt
    # this test's calls.
    return {"VOXSWITCH_NODE_ID": f"bb-{tag}", "VOXSWITCH_KAFKA_TOPIC": f"voxswitch.test.{tag}",
            "VOXSWITCH_CLUSTER": f"bb-{tag}"}  # fmt: skip


@pytest.fixture
def redis_client(services: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services["VOXSWITCH_REDIS_URL"], decode_responses=True)
    yield client
    client.close()


def checkpointed(client: redis.Redis, node_id: str) -> list[dict[str, Any]]:
    ids = client.smembers(f"voxswitch:node:{node_id}:calls")
    values = [client.get(f"voxswitch:call:{i}") for i in ids]
    return [json.loads(v) for v in values if v]


# ---- tests -------------------------------------------------------------------------------


def test_a_call_in_kafka_postgres_and_redis(
    services: dict[str, str],
    names: dict[str, str],
    redis_client: redis.Redis,
    voxswitch_nodes: NodeFactory,
    sipp: SippRunner,
) -> None:
    node = voxswitch_nodes.start(
        "backbone", NodeOptions(media_timeout_s=0, env={**services, **names})
    )
    node_id = names["VOXSWITCH_NODE_ID"]
    thread, results = in_background(lambda: sipp(node, "uac", pause_ms=3000, timeout_s=30))
    # During the call: its checkpoint, with the dialog a restart would need.
    (snapshot,) = wait_for("a checkpoint", lambda: checkpointed(redis_client, node_id), 10)
    assert snapshot["node_id"] == node_id
    assert snapshot["dialog"]["call_id"] == snapshot["call_id"]
    assert snapshot["dialog"]["remote_tag"] and snapshot["dialog"]["local_tag"]
    assert snapshot["transport"] == "UDP" and snapshot["state"] == "CONFIRMED"
    media = snapshot["media"]
    assert media["codec"] == "PCMU" and media["payload_type"] == 0
    assert media["remote_rtp"][0] == "127.0.0.1" and media["remote_rtp"][1] > 0
    assert f"m=audio {media['local_port']} RTP/AVP 0" in media["local_sdp"]
    assert media["rtp"]["ssrc"] and media["rtp"]["sequence"] is not None
    assert redis_client.ttl(f"voxswitch:call:{snapshot['call_id']}") > 60
    thread.join(40)
    assert results and results[0].successful_calls == 1, node.log_tail()
    call_id = snapshot["call_id"]
    # After it: the checkpoint is gone.
    wait_for("the checkpoint deleted", lambda: not redis_client.exists(f"voxswitch:call:{call_id}"))
    assert not checkpointed(redis_client, node_id)

    # Kafka: offered, answered, ended, in order, keyed by the call id, valid.
    got = kafka_events(services["VOXSWITCH_KAFKA_BOOTSTRAP"], names["VOXSWITCH_KAFKA_TOPIC"], 3)
    assert [e["type"] for _, e in got] == ["call.offered", "call.answered", "call.ended"]
    for key, e in got:
        assert key == call_id == e["call_id"]
        jsonschema.validate(e, SCHEMA)
    ended = got[-1][1]
    assert ended["disposition"] == "completed" and ended["sip_code"] == 200
    assert 2.5 <= ended["duration_s"] <= 5.0
    assert len({e["event_id"] for _, e in got}) == 3

    # PostgreSQL: the call's row, with the right duration and disposition.
    row = wait_for("the call row", lambda: call_row(services["VOXSWITCH_POSTGRES_DSN"], call_id))
    row = wait_for(
        "the call row completed",
        lambda: (
            (r := call_row(services["VOXSWITCH_POSTGRES_DSN"], call_id)) and r["disposition"] and r
        ),
    )
    assert row["disposition"] == "completed" and row["sip_code"] == 200
    assert row["direction"] == "inbound" and row["node_id"] == node_id
    assert row["duration_s"] == pytest.approx(ended["duration_s"])
    assert row["offered_at"] <= row["answered_at"] < row["ended_at"]
    health = node.health()["backbone"]
    assert isinstance(health, dict)
    assert health["sinks"]["kafka"]["depth"] == 0 and health["sinks"]["postgres"]["depth"] == 0


def test_a_recorded_call_is_archived_and_says_so_in_kafka_and_postgres(
    services: dict[str, str],
    names: dict[str, str],
    voxswitch_nodes: NodeFactory,
    sipp: SippRunner,
    tmp_path: Path,
) -> None:
    """With ``s3_url`` (the services' versitygw): ``call.recorded`` follows
    ``call.ended``, then ``call.archived`` once the store holds the file (checked by
    SHA-256), the local copy is gone, and the PostgreSQL row's ``recording`` says
    where it is now."""
    prefix = f"bb-{uuid.uuid4().hex[:8]}"
    env = {**services, **names, "VOXSWITCH_RECORD": "all",
           "VOXSWITCH_RECORDINGS_DIR": str(tmp_path / "recordings"),
           "VOXSWITCH_S3_URL": f"{services['VOXSWITCH_S3_URL']}/{prefix}",
           "VOXSWITCH_API_KEY": ADMIN}  # fmt: skip
    node = voxswitch_nodes.start("recorded", NodeOptions(media_timeout_s=0, env=env))
    result = sipp(node, "uac", pause_ms=2000, timeout_s=30)
    assert result.successful_calls == 1, node.log_tail()
    got = kafka_events(services["VOXSWITCH_KAFKA_BOOTSTRAP"], names["VOXSWITCH_KAFKA_TOPIC"], 5)
    kinds = [e["type"] for _, e in got]
    assert kinds == [
        "call.offered", "call.answered", "call.ended", "call.recorded", "call.archived"
    ], kinds  # fmt: skip
    recorded, archived = got[-2][1], got[-1][1]
    for event in (recorded, archived):
        jsonschema.validate(event, SCHEMA)
    assert Path(recorded["location"]).is_relative_to(tmp_path / "recordings")
    assert not Path(recorded["location"]).exists()  # deleted once the store held it
    assert 1.5 <= recorded["duration_s"] <= 4.0
    s3 = S3Target.from_url(env["VOXSWITCH_S3_URL"])
    bucket, _, key = archived["location"].removeprefix("s3://").partition("/")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == recorded["sha256"] == archived["sha256"]
    call_id = got[0][0]
    row = wait_for(
        "the row's archived recording",
        lambda: (
            (r := call_row(services["VOXSWITCH_POSTGRES_DSN"], call_id))
            and r["recording"]
            and "archived_at" in json.loads(r["recording"])
            and r
        ),
    )
    stored = json.loads(row["recording"])
    assert stored["sha256"] == recorded["sha256"] and stored["location"] == archived["location"]
    assert node.health()["archive"]["uploaded"] == 1
    # The API now serves it from the store, the same bytes.
    status, view = api(node, "GET", f"/v1/calls/{call_id}")
    assert status == 200 and view["recording"]["location"] == archived["location"]
    url = node.health_url.replace("/health", f"/v1/calls/{call_id}/recording")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == body
        assert response.headers["X-Recording-SHA256"] == recorded["sha256"]


def test_sigkill_mid_call_then_restart_sends_bye_and_records_node_restart(
    services: dict[str, str],
    names: dict[str, str],
    redis_client: redis.Redis,
    voxswitch_nodes: NodeFactory,
    sipp: SippRunner,
    tmp_path: Path,
) -> None:
    # takeover off: the restarted node ends what it finds (with it on, it would adopt
    # the call: tests/e2e/test_cluster.py).
    env = {**services, **names, "VOXSWITCH_SPOOL_DIR": str(tmp_path / "spool"),
           "VOXSWITCH_TAKEOVER": "off"}  # fmt: skip
    options = NodeOptions(media_timeout_s=0, max_call_duration_s=120, env=env)
    first = voxswitch_nodes.start("doomed", options)
    node_id = names["VOXSWITCH_NODE_ID"]
    thread, results = in_background(lambda: sipp(first, "wait_for_bye.xml", timeout_s=60))
    (snapshot,) = wait_for("a checkpoint", lambda: checkpointed(redis_client, node_id), 10)
    assert first.process is not None
    first.process.kill()  # SIGKILL: no drain, no BYE, no record
    first.process.wait(10)
    assert thread.is_alive()  # the caller still waits
    second = voxswitch_nodes.start("restarted", options)
    thread.join(30)
    assert results and results[0].successful_calls == 1, second.log_tail()  # got its BYE
    call_id = snapshot["call_id"]
    (record,) = wait_for(
        "the call's record", lambda: [r for r in second.records() if r["call_id"] == call_id], 10
    )
    assert record["disposition"] == "node_restart"
    assert record["answered_at"] == pytest.approx(snapshot["record"]["answered_at"])
    assert not checkpointed(redis_client, node_id)
    row = wait_for(
        "the row to say node_restart",
        lambda: (
            (r := call_row(services["VOXSWITCH_POSTGRES_DSN"], call_id))
            and r["disposition"] == "node_restart"
            and r
        ),
    )
    assert row["answered_at"] is not None
    got = kafka_events(services["VOXSWITCH_KAFKA_BOOTSTRAP"], names["VOXSWITCH_KAFKA_TOPIC"], 3)
    # Killed within the spool cursor's persist interval (0.25 s) of a delivery, the
    # restarted node sends those events again: the same events, same ids (at least
    # once; consumers dedupe on event_id). Nothing may be lost or made up.
    unique = list({e["event_id"]: e for _, e in got}.values())
    assert [e["type"] for e in unique] == ["call.offered", "call.answered", "call.ended"]
    assert all(e == next(u for u in unique if u["event_id"] == e["event_id"]) for _, e in got)
    assert unique[-1]["disposition"] == "node_restart"


def test_postgres_outage_spools_events_and_a_restart_delivers_them(
    services: dict[str, str],
    names: dict[str, str],
    voxswitch_nodes: NodeFactory,
    sipp: SippRunner,
    tmp_path: Path,
) -> None:
    """PostgreSQL unreachable: calls go on, their events wait in the spool; the node is
    SIGKILLed; PostgreSQL returns and the restarted node delivers what the spool held."""
    dsn = services["VOXSWITCH_POSTGRES_DSN"]
    port = _port(dsn)
    proxy = TcpProxy(port).up()
    try:
        env = {
            **names,
            "VOXSWITCH_POSTGRES_DSN": dsn.replace(f":{port}/", f":{proxy.port}/"),
            "VOXSWITCH_SPOOL_DIR": str(tmp_path / "spool"),
        }
        options = NodeOptions(media_timeout_s=0, env=env)
        proxy.down()
        first = voxswitch_nodes.start("outage", options)
        result = sipp(first, "uac", calls=3, rate=10, pause_ms=300, timeout_s=30)
        assert result.successful_calls == 3  # calls go on without their database
        call_ids = {r["call_id"] for r in wait_for("3 records", lambda: len(first.records()) == 3
                                                   and first.records())}  # fmt: skip
        sink = wait_for(
            "the sink marked down",
            lambda: (s := _sink(first, "postgres")) and not s["up"] and s["depth"] >= 9 and s,
        )
        assert sink["failures"] >= 1 and sink["last_error"]
        assert first.process is not None
        first.process.kill()
        first.process.wait(10)
        proxy.up()
        second = voxswitch_nodes.start("after-outage", options)
        for call_id in call_ids:
            row = wait_for(
                f"the row of {call_id}",
                lambda call_id=call_id: (r := call_row(dsn, call_id)) and r["disposition"] and r,
            )
            assert row["disposition"] == "completed"
        wait_for("the spool drained", lambda: _sink(second, "postgres")["depth"] == 0)
    finally:
        proxy.down()


def test_redis_outage_calls_go_on_and_checkpoints_resume(
    services: dict[str, str],
    names: dict[str, str],
    redis_client: redis.Redis,
    voxswitch_nodes: NodeFactory,
    sipp: SippRunner,
) -> None:
    url = services["VOXSWITCH_REDIS_URL"]
    port = _port(url)
    proxy = TcpProxy(port).up()
    node_id = names["VOXSWITCH_NODE_ID"]
    try:
        env = {**names, "VOXSWITCH_REDIS_URL": url.replace(f":{port}/", f":{proxy.port}/")}
        node = voxswitch_nodes.start("redis-outage", NodeOptions(media_timeout_s=0, env=env))
        proxy.down()
        thread, results = in_background(lambda: sipp(node, "uac", pause_ms=4000, timeout_s=30))
        status = wait_for(
            "checkpoints reported down",
            lambda: (c := node.health()["checkpoints"]) and not c["up"] and c,  # type: ignore[index]
        )
        assert status["failures"] >= 1 and status["last_error"]
        assert not checkpointed(redis_client, node_id)
        proxy.up()  # Redis is back while the call still talks
        (snapshot,) = wait_for("a checkpoint", lambda: checkpointed(redis_client, node_id), 10)
        assert node.health()["checkpoints"]["up"] is True  # type: ignore[index]
        thread.join(30)
        assert results and results[0].successful_calls == 1
        call_id = snapshot["call_id"]
        wait_for("deleted", lambda: not redis_client.exists(f"voxswitch:call:{call_id}"))
    finally:
        proxy.down()


def _sink(node: NodeProcess, name: str) -> dict[str, Any]:
    backbone = node.health()["backbone"]
    assert isinstance(backbone, dict)
    return dict(backbone["sinks"][name])


def _port(url: str) -> int:
    """The port of a ``scheme://…host:port/db`` URL."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_db_migrate_command(services: dict[str, str], tmp_path: Path) -> None:
    """``voxswitch db migrate`` against the real database: up to date (the node's start
    applied everything), and a clear exit 1 when PostgreSQL is not there."""
    voxswitch = [sys.executable, "-m", "switch.cli"]
    dsn = services["VOXSWITCH_POSTGRES_DSN"]
    ok = subprocess.run(
        [*voxswitch, "db", "migrate", "--postgres-dsn", dsn],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "applied: nothing (up to date)"
    closed = TcpProxy(_port(dsn))  # bound once, never listening: nothing answers there
    nowhere = dsn.replace(f":{_port(dsn)}/", f":{closed.port}/")
    down = subprocess.run(
        [*voxswitch, "db", "migrate", "--postgres-dsn", nowhere],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert down.returncode == 1
    assert "cannot reach PostgreSQL" in down.stderr
    missing = subprocess.run(
        [*voxswitch, "db", "migrate"], capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert missing.returncode == 2 and "VOXSWITCH_POSTGRES_DSN" in missing.stderr
