"""Issue 23 against a live node's HTTP API (findings 2, 3, 4 and 8): no 500 from
non-finite numbers, the key before the body, a streamed body capped, idle, slowloris
and stalled connections closed by their timeouts, connections capped per source and
in total, and only ``/health`` open unless ``api_public_paths`` says more."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from loadtest.api_flood import connect, head, push_chunked, read_answer, watch_closures
from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from tests.e2e.api_client import ADMIN, api
from tests.e2e.test_api_calls import create_key

TIMEOUT_S = 1.0  # header, body and idle timeouts of the node below
PER_SOURCE = 12
TOTAL = 20


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "api-keys.json"


@pytest.fixture(scope="module")
def node(voxswitch_nodes: NodeFactory, keys_file: Path) -> NodeProcess:
    env = {
        "VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_API_KEYS_FILE": str(keys_file),
        "VOXSWITCH_API_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "VOXSWITCH_API_BODY_TIMEOUT_S": str(TIMEOUT_S),
        "VOXSWITCH_API_IDLE_TIMEOUT_S": str(TIMEOUT_S),
        "VOXSWITCH_API_MAX_CONNECTIONS_PER_SOURCE": str(PER_SOURCE),
        "VOXSWITCH_API_MAX_CONNECTIONS": str(TOTAL),
    }  # fmt: skip
    return voxswitch_nodes.start("api-hardened", NodeOptions(media_timeout_s=0, env=env))


def post_raw(node: NodeProcess, path: str, raw: str) -> tuple[int, dict[str, object]]:
    status, body = api(node, "POST", path, raw=raw.encode())
    return status, body


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_numbers_are_a_422_naming_the_field(node: NodeProcess, number: str) -> None:
    status, body = post_raw(
        node, "/v1/calls", f'{{"to": "+15551234567", "ring_timeout_s": {number}}}'
    )
    assert status == 422, body
    assert ["body", "ring_timeout_s"] in [e["loc"] for e in body["detail"]]  # type: ignore[attr-defined]
    status, body = post_raw(node, "/v1/bans", f'{{"ip": "192.0.2.9", "duration_s": {number}}}')
    assert status == 422, body
    assert ["body", "duration_s"] in [e["loc"] for e in body["detail"]]  # type: ignore[attr-defined]


def test_only_health_is_open_and_metrics_need_reports_read(
    node: NodeProcess, keys_file: Path
) -> None:
    assert api(node, "GET", "/health", key=None)[0] == 200
    for path in ("/metrics", "/openapi.json", "/docs", "/v1/calls", "/nowhere"):
        status, body = api(node, "GET", path, key=None)
        assert status == 401 and "API key" in body["detail"], path
    assert api(node, "GET", "/openapi.json")[0] == 200  # any valid key
    reports = create_key(keys_file, "reports:read")
    request = connect(node)
    request.sendall(head("GET", "/metrics", reports))
    answer = read_answer(request)
    assert answer is not None and answer.status == 200
    assert b"voxswitch_up 1.0" in answer.body
    status, body = api(node, "GET", "/metrics", key=create_key(keys_file, "calls:read"))
    assert status == 403 and "reports:read" in body["detail"]


def test_public_paths_open_what_the_operator_lists(voxswitch_nodes: NodeFactory) -> None:
    env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_API_PUBLIC_PATHS": "/health,/metrics,/docs"}
    node = voxswitch_nodes.start("api-public", NodeOptions(media_timeout_s=0, env=env))
    for path in ("/metrics", "/docs", "/openapi.json"):
        sock = connect(node)
        sock.sendall(head("GET", path))
        answer = read_answer(sock)
        assert answer is not None and answer.status == 200, path
    assert api(node, "GET", "/v1/calls", key=None)[0] == 401


def test_a_chunked_body_is_refused_before_it_is_read(node: NodeProcess) -> None:
    sock = connect(node)
    sock.sendall(head("POST", "/v1/calls", None, Content_Type="application/json",
                      Transfer_Encoding="chunked"))  # fmt: skip
    answer = read_answer(sock, timeout_s=3)  # before a byte of the body was sent
    assert answer is not None and answer.status == 401
    assert answer.headers.get("connection") == "close"
    assert read_answer(sock, timeout_s=3) is None  # closed, not drained
    sock = connect(node)
    sock.sendall(head("POST", "/v1/calls", ADMIN, Content_Type="application/json",
                      Transfer_Encoding="chunked"))  # fmt: skip
    sent, answer = push_chunked(sock, 20 * 1024 * 1024)
    assert answer is not None and answer.status == 413, answer
    assert "bytes" in str(answer.json())
    assert sent < 8 * 1024 * 1024  # the node stopped reading: only socket buffers took more
    assert api(node, "GET", "/health", key=None)[0] == 200


def test_idle_slowloris_and_stalled_connections_are_closed(node: NodeProcess) -> None:
    idle = [connect(node) for _ in range(4)]
    lorises = [connect(node) for _ in range(3)]
    for sock in lorises:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    stalled = [connect(node) for _ in range(2)]
    for sock in stalled:
        sock.sendall(head("POST", "/v1/calls", ADMIN, Content_Type="application/json",
                          Content_Length="1000") + b'{"to": ')  # fmt: skip
    kept = connect(node)  # a keep-alive connection after one answer
    kept.sendall(head("GET", "/health"))
    answer = read_answer(kept)
    assert answer is not None and answer.status == 200
    socks = [*idle, *lorises, *stalled, kept]
    closed = watch_closures(socks, timeout_s=TIMEOUT_S + 4, trickle=lorises)
    assert all(c is not None for c in closed), closed
    assert all(TIMEOUT_S - 0.3 < c < TIMEOUT_S + 1.5 for c in closed if c is not None), closed  # type: ignore[operator]
    assert api(node, "GET", "/health", key=None)[0] == 200


def _streaming(sock: socket.socket) -> socket.socket:
    """The live calls' event stream: a request under way for as long as it is open
    (never closed to make room for a newcomer)."""
    sock.sendall(head("GET", "/v1/stream/calls?interval_s=30", ADMIN))
    answer = read_answer(sock, timeout_s=3)
    assert answer is not None and answer.status == 200, answer
    return sock


def test_connections_are_capped_per_source_then_in_total(node: NodeProcess) -> None:
    # Earlier tests' keep-alive connections closed by the idle timeout first: the
    # connection waiting longest must be this test's own.
    time.sleep(TIMEOUT_S + 0.5)
    mine = [_streaming(connect(node)) for _ in range(PER_SOURCE)]
    time.sleep(0.2)
    extra = connect(node)
    answer = read_answer(extra, timeout_s=3)
    assert answer is not None and answer.status == 429
    assert "per_source" in json.dumps(answer.json())
    others = [_streaming(connect(node, source="127.0.0.2"))
              for _ in range(TOTAL - PER_SOURCE - 1)]  # fmt: skip
    waiter = connect(node, source="127.0.0.3")  # open, no request yet
    time.sleep(0.2)
    # Full: the one connection waiting for a request makes room for a newcomer.
    third = _streaming(connect(node, source="127.0.0.4"))
    assert watch_closures([waiter], 2.0)[0] is not None
    # Full of requests under way: refused.
    fourth = connect(node, source="127.0.0.5")
    answer = read_answer(fourth, timeout_s=3)
    assert answer is not None and answer.status == 503
    for sock in (*mine, *others, extra, waiter, third, fourth):
        sock.close()
    time.sleep(0.3)  # the node sees them go: room again
    status, _ = api(node, "GET", "/health", key=None)
    assert status == 200


def test_nothing_above_leaked_a_connection(node: NodeProcess) -> None:
    """Every connection the tests above opened is gone from the node: none of its API
    sockets is still established, nor left half-closed (CLOSE_WAIT)."""
    deadline = time.monotonic() + TIMEOUT_S + 3
    while (held := api_sockets(node.api_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held == [], held


def api_sockets(port: int) -> list[str]:
    """The node's side of TCP connections on ``port`` that are open (ESTABLISHED,
    CLOSE_WAIT), from /proc/net/tcp."""
    held = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(local.split(":")[1], 16) == port and state in ("01", "08"):
            held.append(f"{remote} state {state}")
    return held
