"""The control API's hardening, on the ASGI app itself (no sockets): non-finite numbers
are a 422 naming the field, a recording's file name is encoded per RFC 6266, an
unhandled error is a JSON 500, the key is checked before the body is read, a streamed
body is capped, and only the public paths answer without a key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from control_api.app import create_app
from control_api.keys import ApiKeys
from control_api.metrics import NodeMetrics

ADMIN = "unit-admin-key-0123456789"
CALL_ID = "通話-ü-42@host"  # outside Latin-1: not encodable in a plain header


class FakeNode:
    draining = False

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "active_calls": 0}


class FakeCalls:
    def __init__(self, recording: Path | None = None, broken: bool = False) -> None:
        self.recording = recording
        self.broken = broken

    def live_calls(self) -> list[Any]:
        if self.broken:
            raise RuntimeError("a bug in the node")
        return []

    def live_call(self, call_id: str) -> Any:
        return None

    def ended_call(self, call_id: str) -> dict[str, Any] | None:
        if self.recording is None or call_id != CALL_ID:
            return None
        return {"state": "ended", "recording": {
            "sha256": "ab" * 32, "location": str(self.recording), "bytes": 4}}  # fmt: skip

    def archived_recording(self, location: str) -> Iterator[bytes] | None:
        return None


class FakeGuard:
    def ban(self, ip: str, reason: str, duration_s: float) -> Any:
        return SimpleNamespace(view=lambda: {"ip": ip, "until": duration_s})

    def active_bans(self) -> list[Any]:
        return []

    def lift(self, ip: str) -> bool:
        return False


def make_app(tmp_path: Path, calls: FakeCalls | None = None, **extra: Any) -> FastAPI:
    node = FakeNode()
    dialer = SimpleNamespace(book=SimpleNamespace(), manager=SimpleNamespace(voices={}))
    return create_app(
        node, NodeMetrics(node), keys=ApiKeys(tmp_path / "keys.json", ADMIN),
        calls=calls or FakeCalls(), commands=SimpleNamespace(), dialer=dialer,  # type: ignore[arg-type]
        guard=FakeGuard(), **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def client(app: FastAPI, key: str | None = ADMIN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers)


def field_of(body: dict[str, Any]) -> list[Any]:
    return [error["loc"] for error in body["detail"]]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e309", "-1e400"])
async def test_non_finite_ring_timeout_is_a_422_naming_the_field(
    tmp_path: Path, number: str
) -> None:
    raw = f'{{"to": "+15551234567", "ring_timeout_s": {number}}}'
    async with client(make_app(tmp_path)) as api:
        answer = await api.post(
            "/v1/calls", content=raw, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 422, answer.text
    assert ["body", "ring_timeout_s"] in field_of(answer.json())


async def test_non_finite_ban_duration_and_nested_fields_are_named(tmp_path: Path) -> None:
    async with client(make_app(tmp_path)) as api:
        answer = await api.post(
            "/v1/bans", content='{"ip": "192.0.2.1", "duration_s": NaN}',
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert answer.status_code == 422, answer.text
        assert ["body", "duration_s"] in field_of(answer.json())
        raw = '{"to": "+15551234567", "metadata": {"score": Infinity}}'
        answer = await api.post(
            "/v1/calls", content=raw, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 422, answer.text
        assert ["body", "metadata", "score"] in field_of(answer.json())
        # A finite ban still works.
        answer = await api.post("/v1/bans", json={"ip": "192.0.2.1", "duration_s": 60})
        assert answer.status_code == 201


async def test_recording_of_a_non_latin1_call_id_downloads_with_rfc6266_name(
    tmp_path: Path,
) -> None:
    wav = tmp_path / "call.wav"
    wav.write_bytes(b"RIFF")
    async with client(make_app(tmp_path, FakeCalls(recording=wav))) as api:
        answer = await api.get(f"/v1/calls/{CALL_ID}/recording")
    assert answer.status_code == 200, answer.text
    assert answer.content == b"RIFF"
    disposition = answer.headers["content-disposition"]
    assert disposition.isascii()
    assert "filename*=UTF-8''%E9%80%9A%E8%A9%B1-%C3%BC-42%40host.wav" in disposition
    assert 'filename="' in disposition  # the ASCII fallback for old clients


async def test_an_unhandled_error_is_a_json_500(tmp_path: Path) -> None:
    async with client(make_app(tmp_path, FakeCalls(broken=True))) as api:
        answer = await api.get("/v1/calls")
    assert answer.status_code == 500
    assert answer.headers["content-type"].startswith("application/json")
    assert "detail" in answer.json() and "a bug" not in answer.text  # no internals leak


async def test_only_health_is_open_by_default(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with client(app, key=None) as anonymous:
        assert (await anonymous.get("/health")).status_code == 200
        for path in ("/metrics", "/openapi.json", "/docs", "/v1/calls", "/nowhere"):
            answer = await anonymous.get(path)
            assert answer.status_code == 401, path
            assert "API key" in answer.json()["detail"]
    reports = ApiKeys(tmp_path / "keys.json").create("prometheus", ("reports:read",))
    reader = ApiKeys(tmp_path / "keys.json").create("reader", ("calls:read",))
    async with client(app, key=reports) as prometheus:
        answer = await prometheus.get("/metrics")
        assert answer.status_code == 200 and "voxswitch_" in answer.text
        assert (await prometheus.get("/openapi.json")).status_code == 200  # any key
    async with client(app, key=reader) as other:
        answer = await other.get("/metrics")
        assert answer.status_code == 403 and "reports:read" in answer.json()["detail"]


async def test_public_paths_open_metrics_and_docs(tmp_path: Path) -> None:
    app = make_app(tmp_path, public_paths="/health, /metrics,/docs")
    async with client(app, key=None) as anonymous:
        for path in ("/health", "/metrics", "/docs", "/openapi.json"):
            assert (await anonymous.get(path)).status_code == 200, path
        assert (await anonymous.get("/v1/calls")).status_code == 401


class Sender:
    """An ASGI client sending a long chunked body: counts what the app read of it."""

    def __init__(self, chunks: int, chunk: bytes = b"x" * 16384) -> None:
        self.chunks = chunks
        self.chunk = chunk
        self.read = 0
        self.messages: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.read >= self.chunks:
            return {"type": "http.disconnect"}
        self.read += 1
        return {"type": "http.request", "body": self.chunk, "more_body": self.read < self.chunks}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))

    @property
    def closes(self) -> bool:
        return (b"connection", b"close") in self.messages[0]["headers"]


def chunked_post(path: str, key: str | None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "state": {}}  # fmt: skip


async def test_a_chunked_body_without_a_key_is_refused_unread(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    sender = Sender(chunks=1280)  # 20 MB
    await app(chunked_post("/v1/calls", None), sender.receive, sender.send)
    assert sender.status == 401
    assert sender.read == 0  # not one byte of the body was read
    assert sender.closes  # and the connection is not kept to drain it


async def test_a_chunked_body_over_the_limit_is_413_reading_no_more(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    sender = Sender(chunks=1280)  # 20 MB, the limit is 64 KB
    await app(chunked_post("/v1/calls", ADMIN), sender.receive, sender.send)
    assert sender.status == 413, sender.body
    assert "bytes" in sender.body["detail"]
    assert sender.read <= 5  # 64 KB in 16 KB chunks, and the one that crossed it
    assert sender.closes


async def test_an_answer_before_the_body_is_read_closes_rather_than_drains(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path)
    sender = Sender(chunks=1280)  # 20 MB to an open path that takes no body
    await app(chunked_post("/health", None), sender.receive, sender.send)
    assert sender.status == 405
    assert sender.closes  # uvicorn would otherwise read and drop all 20 MB


class _Secretive(BaseModel):
    name: str = Field(max_length=8)
    password: str = Field(max_length=8)


async def test_a_422_never_quotes_a_secret_back() -> None:
    from control_api import strict

    app = FastAPI()
    strict.install(app)

    @app.put("/trunk")
    async def put(trunk: _Secretive) -> dict[str, str]:
        return {}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
        answer = await api.put("/trunk", json={"name": "n" * 9, "password": "hunter2-secret"})
    assert answer.status_code == 422
    assert "hunter2-secret" not in answer.text
    assert ["body", "password"] in field_of(answer.json())
    assert "n" * 9 in answer.text  # other fields still say what was refused
