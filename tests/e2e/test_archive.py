"""The recordings' archive against a real S3-compatible store (versitygw, started by
deploy/local/services.sh): uploaded with its checksum and confirmed before the local
copy goes; the store down → kept and retried until it is back; a recording whose
bytes do not match its manifest is refused by the store and kept."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.recording import CallRecorder, summarize
from switch.recording.archive import RecordingArchive, S3Target, write_manifest
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e


def recording(root: Path, name: str, seconds: float = 2.0) -> Path:
    path = root / "2026-12-03" / f"{name}.wav"
    recorder = CallRecorder(path)
    rng = np.random.default_rng(len(name))
    for _ in range(int(seconds * 50)):
        recorder.add(rng.integers(-3000, 3000, 160).astype(np.int16), None)
    recorder.close()
    write_manifest(path, name, summarize(path).as_dict())
    return path


def target(services: dict[str, str], port: int | None = None) -> S3Target:
    url = services["VOXSWITCH_S3_URL"]
    if port is not None:
        parts = urllib.parse.urlsplit(url)
        url = url.replace(f":{parts.port}/", f":{port}/")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    return S3Target.from_url(f"{url}/{prefix}")


async def until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the wait"
        await asyncio.sleep(0.1)


def stored(s3: S3Target, key: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())


async def test_an_upload_is_confirmed_before_the_local_copy_goes(
    services: dict[str, str], tmp_path: Path
) -> None:
    path = recording(tmp_path, "call-a")
    data = path.read_bytes()
    published: list[dict[str, Any]] = []
    s3 = target(services)
    moved: list[tuple[str, str]] = []
    archive = RecordingArchive(
        s3, tmp_path, published.append, "node-1", on_archived=lambda *a: moved.append(a)
    )
    archive.start()
    try:
        await until(lambda: archive.uploaded == 1)
    finally:
        await archive.stop()
    key = s3.key_for("2026-12-03/call-a.wav")
    assert hashlib.sha256(stored(s3, key)).digest() == hashlib.sha256(data).digest()
    assert not path.exists() and not list(tmp_path.rglob("*.json"))
    [event] = published
    assert event["type"] == "call.archived" and event["call_id"] == "call-a"
    assert event["location"] == f"s3://{s3.bucket}/{key}"
    assert event["sha256"] == hashlib.sha256(data).hexdigest()
    assert moved == [("call-a", event["location"])]
    # What the API streams for an archived call: the same bytes, from the store.
    chunks = await asyncio.to_thread(lambda: b"".join(archive.open(event["location"])))
    assert chunks == data


async def test_while_the_store_is_down_recordings_wait_and_go_when_it_is_back(
    services: dict[str, str], tmp_path: Path
) -> None:
    s3_port = urllib.parse.urlsplit(services["VOXSWITCH_S3_URL"]).port
    assert s3_port is not None
    proxy = TcpProxy(s3_port)  # not up: the store is unreachable
    s3 = target(services, proxy.port)
    first, second = recording(tmp_path, "call-b"), recording(tmp_path, "call-c")
    archive = RecordingArchive(s3, tmp_path)
    archive.start()
    try:
        await until(lambda: archive.failures >= 2, 15)
        status = archive.status()
        assert status["pending"] == 2 and status["uploaded"] == 0 and status["last_error"]
        assert first.exists() and second.exists()  # nothing deleted while it is down
        proxy.up()
        await until(lambda: archive.uploaded == 2, 30)  # the next retry (≤ a few s)
    finally:
        await archive.stop()
        proxy.down()
    assert not first.exists() and not second.exists()
    assert archive.status()["pending"] == 0 and archive.status()["last_error"] == ""


async def test_a_recording_that_does_not_match_its_checksum_is_refused_and_kept(
    services: dict[str, str], tmp_path: Path
) -> None:
    path = recording(tmp_path, "call-d")
    with path.open("r+b") as file:  # a bit flipped on the disk after the call
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0x01]))
    s3 = target(services)
    archive = RecordingArchive(s3, tmp_path)
    archive.start()
    try:
        await until(lambda: archive.failures >= 1)
    finally:
        await archive.stop()
    assert archive.uploaded == 0 and path.exists()
    assert "call-d" in archive.last_error
    listing = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=s3.prefix)
    assert listing.get("KeyCount", 0) == 0  # the store kept nothing
