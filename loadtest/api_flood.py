"""Floods of the control API on a live node (loopback only, bounded in time): idle and
slowloris connections, stalled bodies, and a 20 MB chunked body with and without a
key. It prints what the node did: how many connections it refused, how soon it
closed the rest, its file descriptors and CPU time, and how much of a body it took.

    python -m loadtest.api_flood [--idle 500] [--slowloris 50]

Phase 1 runs the node with its default caps (one source: most connections refused at
once); phase 2 raises the caps so every connection is admitted and must be closed by
its timeout. The raw-socket helpers are shared with tests/e2e/test_hardening_api.py.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import selectors
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.node import NodeOptions, NodeProcess

ADMIN = "flood-admin-key-0123456789"
CHUNK = b"x" * 16384


def connect(node: NodeProcess, source: str = "127.0.0.1", timeout_s: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.bind((source, 0))
    sock.connect((node.host, node.api_port))
    return sock


def head(method: str, path: str, key: str | None = None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: voxswitch"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def read_answer(sock: socket.socket, timeout_s: float = 5.0) -> Answer | None:
    """One HTTP response (Content-Length bodies), or None if the connection ended first."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return None
            data += more
        top, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = top.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            more = sock.recv(65536)
            if not more:
                break
            body += more
    except (ConnectionResetError, BrokenPipeError):
        return None
    return Answer(int(status_line.split()[1]), headers, body)


def watch_closures(
    socks: Sequence[socket.socket], timeout_s: float, trickle: Sequence[socket.socket] = ()
) -> list[float | None]:
    """Seconds until each socket was closed by the node (None: still open at the end);
    the ``trickle`` ones send a header byte every 0.25 s meanwhile (slowloris)."""
    start = time.monotonic()
    closed: dict[int, float] = {}
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    trickling = {id(s) for s in trickle}
    next_byte = start
    while len(closed) < len(socks) and (now := time.monotonic()) < start + timeout_s:
        if now >= next_byte:
            next_byte = now + 0.25
            for i, sock in enumerate(socks):
                if i not in closed and id(sock) in trickling:
                    with contextlib.suppress(OSError):
                        sock.send(b"X")
        for key, _ in selector.select(timeout=0.05):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                ended = not conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                ended = True
            if ended:
                closed[key.data] = time.monotonic() - start
                selector.unregister(conn)
    selector.close()
    return [closed.get(i) for i in range(len(socks))]


def push_chunked(
    sock: socket.socket, total: int, timeout_s: float = 10.0
) -> tuple[int, Answer | None]:
    """Send a chunked body of ``total`` bytes until the node answers or cuts us off:
    (bytes the kernel took from us, the answer)."""
    sent = 0
    sock.settimeout(timeout_s)
    try:
        while sent < total:
            sock.sendall(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
            sent += len(CHUNK)
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
        else:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    return sent, read_answer(sock, timeout_s=5.0)


def node_fds(node: NodeProcess) -> int:
    assert node.process is not None
    return len(os.listdir(f"/proc/{node.process.pid}/fd"))


def node_cpu_s(node: NodeProcess) -> float:
    assert node.process is not None
    fields = Path(f"/proc/{node.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_rss_mb(node: NodeProcess) -> float:
    assert node.process is not None
    for line in Path(f"/proc/{node.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def health_s(node: NodeProcess, source: str = "127.0.0.2") -> float:
    """GET /health from another loopback address than the flood's: its latency."""
    start = time.monotonic()
    conn = http.client.HTTPConnection(
        node.host, node.api_port, timeout=5, source_address=(source, 0)
    )
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    return time.monotonic() - start


def flood(node: NodeProcess, idle: int, slowloris: int, wait_s: float) -> dict[str, object]:
    fds_before = node_fds(node)
    socks = [connect(node) for _ in range(idle + slowloris)]
    time.sleep(0.5)
    fds_peak = node_fds(node)
    health_during = health_s(node)
    lorises = socks[idle:]
    closures = watch_closures(socks, wait_s, trickle=lorises)
    for sock in socks:
        sock.close()
    open_left = sum(1 for c in closures if c is None)
    closed = sorted(c for c in closures if c is not None)
    time.sleep(0.3)
    return {
        "connections": len(socks),
        "closed": len(closed),
        "still_open": open_left,
        "first_close_s": round(closed[0], 2) if closed else None,
        "last_close_s": round(closed[-1], 2) if closed else None,
        "closed_under_0.1_s (refused at once)": sum(1 for c in closed if c < 0.1),
        "node_fds_before": fds_before,
        "node_fds_peak": fds_peak,
        "node_fds_after": node_fds(node),
        "health_during_s": round(health_during, 3),
    }


def chunked(node: NodeProcess, key: str | None, total: int = 20 * 1024 * 1024) -> dict[str, object]:
    cpu, rss, start = node_cpu_s(node), node_rss_mb(node), time.monotonic()
    sock = connect(node)
    sock.sendall(head("POST", "/v1/calls", key, Content_Type="application/json",
                      Transfer_Encoding="chunked"))  # fmt: skip
    sent, answer = push_chunked(sock, total)
    sock.close()
    return {
        "key": bool(key),
        "status": answer.status if answer else None,
        "bytes_the_kernel_took": sent,
        "of": total,
        "seconds": round(time.monotonic() - start, 3),
        "node_cpu_s": round(node_cpu_s(node) - cpu, 3),
        "node_rss_growth_mb": round(node_rss_mb(node) - rss, 1),
    }


def start_node(workdir: Path, name: str, env: Mapping[str, str]) -> NodeProcess:
    options = NodeOptions(media_timeout_s=0, env={"VOXSWITCH_API_KEY": ADMIN, **env})
    return NodeProcess(workdir / name, options, name=name).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--slowloris", type=int, default=50)
    parser.add_argument("--header-timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    timeout = str(args.header_timeout_s)
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="api-flood-") as tmp:
        for phase, env in (
            ("default caps", {}),
            ("caps raised", {"VOXSWITCH_API_MAX_CONNECTIONS": "5000",
                             "VOXSWITCH_API_MAX_CONNECTIONS_PER_SOURCE": "5000"}),
        ):  # fmt: skip
            env = {**env, "VOXSWITCH_API_HEADER_TIMEOUT_S": timeout}
            node = start_node(Path(tmp), phase.replace(" ", "-"), env)
            try:
                report[phase] = flood(node, args.idle, args.slowloris, args.header_timeout_s + 5)
                if phase == "default caps":
                    report["20 MB chunked, no key"] = chunked(node, None)
                    report["20 MB chunked, admin key"] = chunked(node, ADMIN)
                report[phase + ": health after"] = node.health()["status"]
                report[phase + ": tracebacks"] = len(node.tracebacks())
            finally:
                node.stop()
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
